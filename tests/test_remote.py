"""Remote reads against real servers on 127.0.0.1: an HTTP server honouring Range/If-Match, and moto's S3 API.

Every case counts what it costs on the wire (requests, bytes) and injects faults: delays, 503s, resets,
truncated bodies, an object replaced between two requests, a server that ignores If-Match or Range.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import redirect_stdout

import numpy as np
import pytest

pytest.importorskip("obstore", reason="needs the remote extra")
pytest.importorskip("moto", reason="needs moto[server] (test extra)")

import pycryptotensors as pc
import pycryptotensors.numpy as ct_np
from _remote_servers import ObjectServer, S3Proxy
from pycryptotensors.reading.remote import RemoteSource
from pycryptotensors.reading.transports import redact, scrub

CHUNK = 1024 * 1024  # the writer's default chunk size
RNG = np.random.default_rng(19)

pytestmark = pytest.mark.filterwarnings("ignore:.*plain HTTP")


@pytest.fixture(scope="module")
def keys() -> tuple[pc.MasterKey, pc.SigningKey]:
    return pc.generate_master_key(kid="enc-remote"), pc.generate_signing_key(kid="sign-remote")


@pytest.fixture
def save_cfg(keys: tuple[pc.MasterKey, pc.SigningKey]) -> dict:
    return {"enc_key": keys[0].to_jwk("reference"), "sign_key": keys[1].to_jwk("reference")}


@pytest.fixture
def load_cfg(keys: tuple[pc.MasterKey, pc.SigningKey]) -> dict:
    return {"enc_key": keys[0].to_jwk("reference"), "sign_key": keys[1].verify_key.to_jwk("reference")}


@pytest.fixture(scope="module")
def http_server() -> Iterator[ObjectServer]:
    server = ObjectServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def web(http_server: ObjectServer) -> ObjectServer:
    http_server.counters.faults.clear()
    http_server.counters.latency = 0.0
    http_server.counters.reset()
    return http_server


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Proxy]:
    proxy = S3Proxy()
    proxy.start()
    yield proxy
    proxy.stop()


class S3:
    """A bucket on moto, written directly, read (by the code under test) through the counting proxy."""

    def __init__(self, proxy: S3Proxy) -> None:
        import boto3

        self.proxy, self.counters = proxy, proxy.counters
        self.client = boto3.client(
            "s3", endpoint_url=f"http://127.0.0.1:{proxy.moto_port}", region_name="us-east-1",
            aws_access_key_id="test", aws_secret_access_key="test",
        )  # fmt: skip
        self.client.create_bucket(Bucket="models")

    def put(self, key: str, data: bytes) -> str:
        self.client.put_object(Bucket="models", Key=key, Body=data)
        return f"s3://models/{key}"


@pytest.fixture
def s3(s3_server: S3Proxy, monkeypatch: pytest.MonkeyPatch) -> S3:
    for name, value in {
        "AWS_ENDPOINT_URL": s3_server.endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PYCRYPTOTENSORS_REMOTE_RETRIES", "3")
    store = S3(s3_server)
    store.counters.faults.clear()
    store.counters.latency = 0.0
    store.counters.reset()
    return store


@pytest.fixture(params=["http", "s3"])
def remote(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Store:
    """Each case against both servers: ``remote.put(name, data)`` gives the URL to read."""
    if request.param == "http":
        server = request.getfixturevalue("web")
        return Store(lambda name, data: (server.put(name, data), server.url(name))[1], server.counters)
    bucket = request.getfixturevalue("s3")
    return Store(bucket.put, bucket.counters)


class Store:
    def __init__(self, put, counters) -> None:  # type: ignore[no-untyped-def]
        self.put, self.counters = put, counters


def _tensors() -> dict[str, np.ndarray]:
    return {
        "embed": RNG.standard_normal((700, 1000), dtype=np.float32),  # 2.8 MB: three chunks
        "bias": RNG.standard_normal(17, dtype=np.float32),
        "ids": np.arange(5000, dtype=np.int64).reshape(50, 100),
    }


def _equal(loaded: dict, expected: dict) -> None:
    assert sorted(loaded) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(np.asarray(loaded[name]), value)


# -- reads: exact data, read only what is needed -----------------------------------------------------------


def test_load_file_from_url_numpy_and_torch(remote: Store, save_cfg: dict, load_cfg: dict) -> None:
    import torch

    import pycryptotensors.torch as ct_pt

    tensors = _tensors()
    url = remote.put("model.safetensors", ct_np.save(tensors, config=save_cfg))
    _equal(ct_np.load_file(url, config=load_cfg), tensors)
    loaded = ct_pt.load_file(url, config=load_cfg)
    assert all(isinstance(t, torch.Tensor) for t in loaded.values())
    _equal({k: v.numpy() for k, v in loaded.items()}, tensors)


def test_open_costs_one_request_when_the_header_fits_the_first_block(
    remote: Store, load_cfg: dict, save_cfg: dict
) -> None:
    url = remote.put("small.safetensors", ct_np.save(_tensors(), config=save_cfg))
    remote.counters.reset()
    with pc.safe_open(url, "np", config=load_cfg) as handle:
        assert handle.keys() == ["bias", "embed", "ids"]
        assert remote.counters.requests == 1
        assert remote.counters.bytes <= 64 * 1024


def test_open_of_a_1000_tensor_file_costs_at_most_two_requests(remote: Store, save_cfg: dict, load_cfg: dict) -> None:
    tensors = {f"layer.{i}.weight": np.full(4, i, dtype=np.float32) for i in range(1000)}
    data = ct_np.save(tensors, config=save_cfg)
    header_length = int.from_bytes(data[:8], "little")
    assert header_length > 64 * 1024  # the header does not fit the speculative first block
    url = remote.put("many.safetensors", data)
    remote.counters.reset()
    with pc.safe_open(url, "np", config=load_cfg) as handle:
        assert len(handle.keys()) == 1000
        assert remote.counters.requests <= 2
        assert remote.counters.bytes <= 8 + header_length + 64 * 1024  # the header, and not the tensors' data
        np.testing.assert_array_equal(handle.get_tensor("layer.999.weight"), tensors["layer.999.weight"])


def test_get_tensor_fetches_only_that_tensors_bytes(remote: Store, save_cfg: dict, load_cfg: dict) -> None:
    tensors = _tensors()
    url = remote.put("model.safetensors", ct_np.save(tensors, config=save_cfg))
    with pc.safe_open(url, "np", config=load_cfg) as handle:
        remote.counters.reset()
        np.testing.assert_array_equal(handle.get_tensor("embed"), tensors["embed"])
        assert remote.counters.bytes == tensors["embed"].nbytes  # exactly its bytes: tags are in the header
        assert remote.counters.requests == 1  # one streamed span (below the span size)


def test_slice_of_a_64_mib_tensor_fetches_one_chunk(web: ObjectServer, save_cfg: dict, load_cfg: dict) -> None:
    big = RNG.integers(0, 2**31, size=(4096, 4096), dtype=np.int32)  # 64 MiB
    web.put("big.safetensors", ct_np.save({"big": big}, config=save_cfg))
    with pc.safe_open(web.url("big.safetensors"), "np", config=load_cfg) as handle:
        web.counters.reset()
        part = handle.get_slice("big")[2000, 100:356]  # 1 KiB in the middle of the tensor
        np.testing.assert_array_equal(part, big[2000, 100:356])
        assert web.counters.requests == 1
        assert web.counters.bytes <= CHUNK


def test_slice_on_s3_fetches_only_its_chunk(s3: S3, save_cfg: dict, load_cfg: dict) -> None:
    big = RNG.integers(0, 2**31, size=(1024, 4096), dtype=np.int32)  # 16 MiB
    url = s3.put("big.safetensors", ct_np.save({"big": big}, config=save_cfg))
    with pc.safe_open(url, "np", config=load_cfg) as handle:
        s3.counters.reset()
        np.testing.assert_array_equal(handle.get_slice("big")[700, :256], big[700, :256])
        assert s3.counters.requests == 1
        assert s3.counters.bytes <= CHUNK


def test_whole_load_runs_parallel_requests_bounded_by_concurrency(
    web: ObjectServer, save_cfg: dict, load_cfg: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = RNG.standard_normal((8, 1024, 1024), dtype=np.float32)  # 32 MiB: four 8 MiB spans
    web.put("par.safetensors", ct_np.save({"big": big}, config=save_cfg))
    inflight, peak, lock = 0, 0, threading.Lock()

    def track() -> None:
        nonlocal inflight, peak
        with lock:
            inflight += 1
            peak = max(peak, inflight)
        threading.Event().wait(0.5)  # long enough for every allowed request to overlap
        with lock:
            inflight -= 1

    for concurrency in (1, 3):
        monkeypatch.setenv("PYCRYPTOTENSORS_REMOTE_CONCURRENCY", str(concurrency))
        with pc.safe_open(web.url("par.safetensors"), "np", config=load_cfg) as handle:
            web.counters.faults[:] = [track] * 4
            web.counters.reset()
            np.testing.assert_array_equal(handle.get_tensor("big"), big)
        assert web.counters.requests == 4
        assert web.counters.bytes == big.nbytes  # no byte twice, no temporary copy of the file
        assert peak == concurrency
        peak = 0


@pytest.mark.parametrize("options", [{"version": "1"}, {"tensors": ["embed"], "integrity": True}])
def test_version_1_files_and_signed_plain_tensors_read_remotely(
    remote: Store, options: dict, save_cfg: dict, load_cfg: dict
) -> None:
    tensors = _tensors()
    url = remote.put("other.safetensors", ct_np.save(tensors, config={**save_cfg, **options}))
    _equal(ct_np.load_file(url, config=load_cfg), tensors)
    data = bytearray(ct_np.save(tensors, config={**save_cfg, **options}))
    data[-3] ^= 1  # the last tensor: encrypted (version 1) or plain with signed digests
    url = remote.put("other-bad.safetensors", bytes(data))
    with pytest.raises(pc.IntegrityError):
        ct_np.load_file(url, config=load_cfg)


def test_whole_load_of_many_tensors_fetches_them_in_parallel(
    web: ObjectServer, save_cfg: dict, load_cfg: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    tensors = {f"layer{i}": RNG.standard_normal(300_000, dtype=np.float32) for i in range(6)}  # 1.2 MB each
    web.put("layers.safetensors", ct_np.save(tensors, config=save_cfg))
    inflight, peak, lock = 0, 0, threading.Lock()

    def track() -> None:
        nonlocal inflight, peak
        with lock:
            inflight += 1
            peak = max(peak, inflight)
        threading.Event().wait(0.5)  # long enough for every allowed request to overlap
        with lock:
            inflight -= 1

    monkeypatch.setenv("PYCRYPTOTENSORS_REMOTE_CONCURRENCY", "3")
    web.counters.faults[:] = [("delay", 0.0)] + [track] * 6  # the open, then one request per tensor
    web.counters.reset()
    _equal(ct_np.load_file(web.url("layers.safetensors"), config=load_cfg), tensors)
    assert web.counters.requests == 7
    assert peak == 3


def test_whole_load_pipelines_the_spans_of_several_large_tensors(
    web: ObjectServer, save_cfg: dict, load_cfg: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    tensors = {name: RNG.standard_normal(4 * 1024 * 1024, dtype=np.float32) for name in ("a", "b")}  # 2 spans each
    web.put("two.safetensors", ct_np.save(tensors, config=save_cfg))
    inflight, peak, lock = 0, 0, threading.Lock()

    def track() -> None:
        nonlocal inflight, peak
        with lock:
            inflight += 1
            peak = max(peak, inflight)
        threading.Event().wait(0.5)
        with lock:
            inflight -= 1

    monkeypatch.setenv("PYCRYPTOTENSORS_REMOTE_CONCURRENCY", "4")
    web.counters.faults[:] = [("delay", 0.0)] + [track] * 4
    web.counters.reset()
    _equal(ct_np.load_file(web.url("two.safetensors"), config=load_cfg), tensors)
    assert web.counters.requests == 5
    assert peak == 4  # both tensors' spans at once: no pause between tensors
    assert web.counters.bytes <= 64 * 1024 + sum(t.nbytes for t in tensors.values())


def test_hf_urls_read_the_hub_resolve_path_with_the_token(
    web: ObjectServer, save_cfg: dict, load_cfg: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{web.port}")  # the Hub, played by our server
    monkeypatch.setenv("HF_TOKEN", "hf_secrettoken")
    seen: list[str | None] = []
    web.counters.faults[:] = [lambda: seen.append("request")]
    tensors = _tensors()
    web.put("acme/llama-enc/resolve/v1.0/weights/model.safetensors", ct_np.save(tensors, config=save_cfg))
    _equal(ct_np.load_file("hf://acme/llama-enc@v1.0/weights/model.safetensors", config=load_cfg), tensors)
    assert seen == ["request"]
    assert web.last_headers.get("authorization") == "Bearer hf_secrettoken"
    web.counters.faults[:] = ["503"] * 10
    monkeypatch.setenv("PYCRYPTOTENSORS_REMOTE_RETRIES", "0")
    with pytest.raises(pc.RemoteSourceError) as caught:
        pc.safe_open("hf://acme/llama-enc@v1.0/weights/model.safetensors", "np")
    assert "hf_secrettoken" not in str(caught.value)


# -- never mixed or unchecked bytes -------------------------------------------------------------------------


def test_object_replaced_between_two_requests_is_an_integrity_error(
    remote: Store, save_cfg: dict, load_cfg: dict
) -> None:
    first, second = _tensors(), _tensors()
    url = remote.put("swap.safetensors", ct_np.save(first, config=save_cfg))
    replacement = ct_np.save(second, config=save_cfg)  # the same layout, other values, another ETag
    with pc.safe_open(url, "np", config=load_cfg) as handle:
        remote.counters.faults.append(lambda: remote.put("swap.safetensors", replacement))
        with pytest.raises(pc.IntegrityError, match="changed while it was being read"):
            handle.get_tensor("embed")


def test_object_replaced_during_a_whole_load_never_blends(web: ObjectServer, save_cfg: dict, load_cfg: dict) -> None:
    big = RNG.standard_normal((6, 1024, 1024), dtype=np.float32)  # 24 MiB: three spans
    web.put("blend.safetensors", ct_np.save({"big": big}, config=save_cfg))
    other = ct_np.save({"big": big + 1}, config=save_cfg)
    with pc.safe_open(web.url("blend.safetensors"), "np", config=load_cfg) as handle:
        web.counters.faults[:] = [("delay", 0.0), lambda: web.put("blend.safetensors", other)]
        with pytest.raises(pc.IntegrityError):
            handle.get_tensor("big")


def test_s3_credentials_from_a_profile_file(s3: S3, save_cfg: dict, load_cfg: dict, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    tensors = _tensors()
    url = s3.put("profile.safetensors", ct_np.save(tensors, config=save_cfg))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    credentials = tmp_path / "credentials"
    credentials.write_text("[ci]\naws_access_key_id = AKIAPROFILEKEY\naws_secret_access_key = profilesecret\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_PROFILE", "ci")
    _equal(ct_np.load_file(url, config=load_cfg), tensors)
    signed = {k.lower(): v for k, v in s3.proxy.last_headers.items()}["authorization"]
    assert "Credential=AKIAPROFILEKEY/" in signed  # the requests were signed with the profile's key


def test_a_versioned_bucket_keeps_serving_the_version_seen_at_open(s3: S3, save_cfg: dict, load_cfg: dict) -> None:
    s3.client.create_bucket(Bucket="versioned")
    s3.client.put_bucket_versioning(Bucket="versioned", VersioningConfiguration={"Status": "Enabled"})
    first = _tensors()
    s3.client.put_object(Bucket="versioned", Key="m.safetensors", Body=ct_np.save(first, config=save_cfg))
    with pc.safe_open("s3://versioned/m.safetensors", "np", config=load_cfg) as handle:
        s3.client.put_object(Bucket="versioned", Key="m.safetensors", Body=ct_np.save(_tensors(), config=save_cfg))
        np.testing.assert_array_equal(handle.get_tensor("embed"), first["embed"])  # pinned by version id


def test_a_server_ignoring_if_match_is_caught_by_the_etag(save_cfg: dict, load_cfg: dict) -> None:
    server = ObjectServer(honour_if_match=False)
    server.start()
    try:
        server.put("m.safetensors", ct_np.save(_tensors(), config=save_cfg))
        with pc.safe_open(server.url("m.safetensors"), "np", config=load_cfg) as handle:
            server.put("m.safetensors", ct_np.save(_tensors(), config=save_cfg))
            with pytest.raises(pc.IntegrityError, match="changed"):
                handle.get_tensor("embed")
    finally:
        server.stop()


def test_a_server_ignoring_range_is_refused(save_cfg: dict) -> None:
    server = ObjectServer(honour_range=False)
    server.start()
    try:
        server.put("m.safetensors", ct_np.save(_tensors(), config=save_cfg))
        with pytest.raises(pc.RemoteSourceError, match="ignored the Range header"):
            pc.safe_open(server.url("m.safetensors"), "np")
    finally:
        server.stop()


def test_tampered_remote_chunk_is_an_integrity_error(remote: Store, save_cfg: dict, load_cfg: dict) -> None:
    data = bytearray(ct_np.save(_tensors(), config=save_cfg))
    data[-5] ^= 1  # inside the last tensor's ciphertext
    url = remote.put("tampered.safetensors", bytes(data))
    with pc.safe_open(url, "np", config=load_cfg) as handle, pytest.raises(pc.IntegrityError):
        for name in handle.offset_keys():
            handle.get_tensor(name)


def test_truncated_object_is_a_format_error(remote: Store, save_cfg: dict, load_cfg: dict) -> None:
    data = ct_np.save(_tensors(), config=save_cfg)
    url = remote.put("short.safetensors", data[: len(data) - 1000])
    with pytest.raises(pc.FormatError):
        pc.safe_open(url, "np", config=load_cfg)


# -- transient faults: retried, data exact; then a clear error ----------------------------------------------


@pytest.mark.parametrize("fault", ["503", "reset", "truncate", ("delay", 0.05)])
def test_transient_faults_are_retried_and_the_data_stays_exact(
    remote: Store, fault: object, save_cfg: dict, load_cfg: dict
) -> None:
    tensors = _tensors()
    url = remote.put("flaky.safetensors", ct_np.save(tensors, config=save_cfg))
    remote.counters.reset()
    _equal(ct_np.load_file(url, config=load_cfg), tensors)
    clean = remote.counters.requests
    remote.counters.faults[:] = [fault, fault]  # the open's request and the first tensor's
    remote.counters.reset()
    _equal(ct_np.load_file(url, config=load_cfg), tensors)
    assert remote.counters.requests == clean + (0 if isinstance(fault, tuple) else 2)  # each failure tried again


def test_a_slow_answer_times_out_and_is_retried(save_cfg: dict, load_cfg: dict, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PYCRYPTOTENSORS_REMOTE_TIMEOUT", "1")
    tensors = _tensors()
    web = ObjectServer()  # its own: the abandoned slow answer ends after this test, and counts nowhere else
    web.start()
    try:
        web.put("slow.safetensors", ct_np.save(tensors, config=save_cfg))
        with pc.safe_open(web.url("slow.safetensors"), "np", config=load_cfg) as handle:
            web.counters.faults[:] = [("delay", 2.5)]
            web.counters.reset()
            np.testing.assert_array_equal(handle.get_tensor("embed"), tensors["embed"])
            assert web.counters.requests == 2
    finally:
        web.stop()


def test_a_stream_cut_mid_span_resumes_at_the_first_missing_byte(
    web: ObjectServer, save_cfg: dict, load_cfg: dict
) -> None:
    big = RNG.standard_normal((4, 1024, 1024), dtype=np.float32)  # 16 MiB: two spans
    web.put("cut.safetensors", ct_np.save({"big": big}, config=save_cfg))
    with pc.safe_open(web.url("cut.safetensors"), "np", config=load_cfg) as handle:
        web.counters.faults[:] = ["truncate", "truncate"]
        web.counters.reset()
        np.testing.assert_array_equal(handle.get_tensor("big"), big)
        assert web.counters.requests == 4
        assert web.counters.bytes == big.nbytes  # the resumed requests asked only for what was still due


def test_after_the_retries_the_error_names_the_url_without_secrets(
    web: ObjectServer, save_cfg: dict, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PYCRYPTOTENSORS_REMOTE_RETRIES", "2")
    web.put("down.safetensors", ct_np.save(_tensors(), config=save_cfg))
    url = f"http://user:hunter2@127.0.0.1:{web.port}/down.safetensors?X-Amz-Signature=SECRETSIG&X-Amz-Credential=AKIA"
    web.counters.faults[:] = ["503"] * 3
    with pytest.raises(pc.RemoteSourceError) as caught:
        pc.safe_open(url, "np")
    message = str(caught.value)
    assert f"http://127.0.0.1:{web.port}/down.safetensors" in message
    assert "after 3 tries" in message and "try again" in message
    for secret in ("hunter2", "SECRETSIG", "AKIA", "X-Amz", "user"):
        assert secret not in message
    assert web.counters.requests == 3


def test_a_missing_object_is_a_remote_source_error(remote: Store) -> None:
    url = remote.put("exists.safetensors", b"x")
    with pytest.raises(pc.RemoteSourceError):
        pc.safe_open(url.replace("exists", "missing"), "np")


def test_plain_safetensors_url_is_refused_clearly(web: ObjectServer) -> None:
    from safetensors.numpy import save

    web.put("plain.safetensors", save({"a": np.zeros(3, dtype=np.float32)}))
    with pytest.raises(pc.UnsupportedError, match="plain safetensors"):
        pc.safe_open(web.url("plain.safetensors"), "np")


def test_plain_http_warns(web: ObjectServer, save_cfg: dict, load_cfg: dict) -> None:
    web.put("w.safetensors", ct_np.save(_tensors(), config=save_cfg))
    with pytest.warns(UserWarning, match="plain HTTP"):
        RemoteSource(web.url("w.safetensors")).close()


def test_redaction_of_urls_and_library_errors() -> None:
    assert redact("https://u:p@host:8443/a/b.safetensors?sig=1#x") == "https://host:8443/a/b.safetensors"
    text = "GET https://k:s@bucket.s3.amazonaws.com/m.safetensors?X-Amz-Signature=abc failed\nsecond line"
    assert scrub(text) == "GET https://bucket.s3.amazonaws.com/m.safetensors failed"


# -- the command line and the core ------------------------------------------------------------------------


def test_cli_inspect_and_verify_accept_urls(remote: Store, save_cfg: dict, keys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pycryptotensors.cli.app import main
    from pycryptotensors.keys.files import write_key_file

    url = remote.put("cli.safetensors", ct_np.save(_tensors(), config=save_cfg))
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["inspect", url, "--json"]) == 0
    info = json.loads(out.getvalue())
    assert info["encrypted_tensors"] == 3 and info["size"] > 0
    write_key_file(tmp_path / "master.jwk", keys[0])
    write_key_file(tmp_path / "pub.jwk", keys[1].verify_key)
    key_args = ["--key", str(tmp_path / "master.jwk"), "--trust", str(tmp_path / "pub.jwk")]
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(["verify", url, "--deep", *key_args, "--json"])
    assert code == 0
    assert json.loads(out.getvalue())["files"][0]["bytes_authenticated"] == sum(t.nbytes for t in _tensors().values())
    remote.counters.faults.append(lambda: remote.put("cli.safetensors", ct_np.save(_tensors(), config=save_cfg)))
    remote.counters.faults.insert(0, ("delay", 0.0))
    with redirect_stdout(io.StringIO()):
        code = main(["verify", url, "--deep", *key_args])
    assert code == 4  # replaced while verified: an integrity failure


def test_cli_decrypt_accepts_a_url(remote: Store, save_cfg: dict, keys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from safetensors.numpy import load_file

    from pycryptotensors.cli.app import main
    from pycryptotensors.keys.files import write_key_file

    tensors = _tensors()
    url = remote.put("dec.safetensors", ct_np.save(tensors, config=save_cfg))
    write_key_file(tmp_path / "master.jwk", keys[0])
    write_key_file(tmp_path / "pub.jwk", keys[1].verify_key)
    key_args = ["--key", str(tmp_path / "master.jwk"), "--trust", str(tmp_path / "pub.jwk"), "--quiet"]
    (tmp_path / "out").mkdir()
    assert main(["decrypt", url, str(tmp_path / "out"), *key_args]) == 0
    _equal(load_file(tmp_path / "out" / "dec.safetensors"), tensors)
    assert (tmp_path / "out" / "dec.safetensors").stat().st_mode & 0o777 == 0o600
    assert main(["decrypt", url, str(tmp_path / "out"), *key_args]) == 1  # exists: refused without --force
    remote.counters.faults[:] = [
        ("delay", 0.0),
        lambda: remote.put("dec.safetensors", ct_np.save(_tensors(), config=save_cfg)),
    ]
    assert main(["decrypt", url, str(tmp_path / "swapped.safetensors"), *key_args]) == 4
    assert not (tmp_path / "swapped.safetensors").exists()  # nothing written from a changed object


def test_local_reads_import_no_remote_code(tmp_path, save_cfg: dict, load_cfg: dict) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "local.safetensors"
    ct_np.save_file(_tensors(), path, config=save_cfg)
    script = (
        "import sys, json, pycryptotensors.numpy as n\n"
        f"n.load_file({str(path)!r}, config=json.loads({json.dumps(json.dumps(load_cfg))}))\n"
        "bad = [m for m in ('obstore', 'pycryptotensors.reading.remote', 'moto', 'boto3') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYCRYPTOTENSORS_TRANSPARENT"}
    subprocess.run([sys.executable, "-c", script], check=True, env=env)
