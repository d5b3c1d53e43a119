"""Whole remote model folders (issue 19 item 4) against moto's S3 API and a Range-honouring HTTP server.

A signed folder (two encrypted shards, their index, a config and a tokenizer file) is uploaded; the signed
manifest, the small files' SHA-256 and each shard's size and signed header are checked before any shard's
tensor bytes are fetched or any key is asked for. Every attack is refused with the key provider never
called and no shard range beyond its first block requested.
"""

from __future__ import annotations

import io
import json
import os
import stat
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("obstore", reason="needs the remote extra")
pytest.importorskip("moto", reason="needs moto[server] (test extra)")

import pycryptotensors as pc
import pycryptotensors.numpy as ct_np
from _remote_servers import ObjectServer, S3Proxy
from pycryptotensors.errors import ManifestError, RemoteSourceError
from pycryptotensors.keys.keyring import KeyRing
from pycryptotensors.keys.sources import KeyRequest, ProvidedKeys
from pycryptotensors.model.folder import MANIFEST_NAME
from pycryptotensors.model.manifest import write_manifest
from pycryptotensors.model.remote import POINTER_DIR, POINTER_NAME, open_remote_model

pytestmark = pytest.mark.filterwarnings("ignore:.*plain HTTP")
RNG = np.random.default_rng(1919)
INDEX = "model.safetensors.index.json"
PREFIX = "models/llama-enc/"


class Keys:
    def __init__(self) -> None:
        self.master, self.signer = pc.generate_master_key(kid="m-remote"), pc.generate_signing_key(kid="pub-remote")
        self.save = {"enc_key": self.master.to_jwk("reference"), "sign_key": self.signer.to_jwk("reference")}


class Counting:
    """A key provider that counts the key releases it is asked for."""

    def __init__(self, master: pc.MasterKey) -> None:
        self.master, self.calls = master, 0

    def provide(self, request: KeyRequest) -> ProvidedKeys:
        self.calls += 1
        return ProvidedKeys(master_key=self.master)


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


def options(keys: Keys, provider: Counting | None = None) -> pc.LoadOptions:
    """The publisher pinned; the master key only through the counting provider."""
    return pc.LoadOptions(
        keyring=KeyRing([keys.signer.verify_key]),
        trusted_signers=[keys.signer.verify_key],
        providers=[provider or Counting(keys.master)],
        use_settings=False,
        use_environment=False,
    )


def tensors(seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        {"embed": rng.standard_normal((300, 1000), dtype=np.float32), "bias": rng.standard_normal(7, dtype=np.float32)},
        {"head": rng.standard_normal((200, 500), dtype=np.float32)},
    ]


def build(folder: Path, keys: Keys, seed: int = 1, sign: bool = True) -> dict[str, bytes]:
    """A two-shard model folder; returns every file's bytes by relative name."""
    folder.mkdir(parents=True)
    shards = tensors(seed)
    weight_map = {}
    for number, part in enumerate(shards, 1):
        name = f"model-0000{number}-of-00002.safetensors"
        ct_np.save_file(part, folder / name, config=keys.save)
        weight_map.update({tensor: name for tensor in part})
    (folder / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "vocab": list(range(50))}))
    if sign:
        write_manifest(folder, keys.signer)
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


class Remote:
    """One server (HTTP or S3) holding folders under ``models/``: put, delete, the folder URL, the request log."""

    def __init__(self, kind: str, server: Any, client: Any = None) -> None:
        self.kind, self.server, self.client = kind, server, client
        self.counters = server.counters

    def put(self, key: str, data: bytes) -> None:
        if self.kind == "http":
            self.server.put(key, data)
        else:
            self.client.put_object(Bucket="bucket", Key=key, Body=data)

    def delete(self, key: str) -> None:
        if self.kind == "http":
            del self.server.objects[key]
        else:
            self.client.delete_object(Bucket="bucket", Key=key)

    def upload(self, files: dict[str, bytes], prefix: str = PREFIX) -> str:
        for name, data in files.items():
            self.put(prefix + name, data)
        return self.url(prefix)

    def url(self, prefix: str) -> str:
        return self.server.url(prefix) if self.kind == "http" else f"s3://bucket/{prefix}"

    def shard_ranges(self) -> list[str]:
        """The Range header of every GET of a shard since the last reset."""
        return [r for path, r in self.counters.log if path.endswith(".safetensors")]


@pytest.fixture(scope="module")
def http_server() -> Iterator[ObjectServer]:
    server = ObjectServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Proxy]:
    proxy = S3Proxy()
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.fixture(params=["http", "s3"])
def remote(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Remote:
    monkeypatch.setenv("PYCRYPTOTENSORS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PYCRYPTOTENSORS_REMOTE_RETRIES", "1")
    if request.param == "http":
        server = request.getfixturevalue("http_server")
        server.objects.clear()
        made = Remote("http", server)
    else:
        import boto3

        proxy = request.getfixturevalue("s3_server")
        for name, value in {
            "AWS_ENDPOINT_URL": proxy.endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
        }.items():  # fmt: skip
            monkeypatch.setenv(name, value)
        client = boto3.client(
            "s3", endpoint_url=f"http://127.0.0.1:{proxy.moto_port}", region_name="us-east-1",
            aws_access_key_id="test", aws_secret_access_key="test",
        )  # fmt: skip
        client.create_bucket(Bucket="bucket")
        for item in client.list_objects_v2(Bucket="bucket").get("Contents", []):
            client.delete_object(Bucket="bucket", Key=item["Key"])
        made = Remote("s3", proxy, client)
    made.counters.faults.clear()
    made.counters.latency = 0.0
    made.counters.reset()
    return made


# -- a good folder ------------------------------------------------------------------------------------------


def test_a_signed_remote_folder_verifies_and_its_shards_stream(remote: Remote, keys: Keys, tmp_path: Path) -> None:
    files = build(tmp_path / "src", keys)
    url = remote.upload(files)
    remote.counters.reset()
    provider = Counting(keys.master)
    folder = open_remote_model(url, options(keys, provider))
    assert provider.calls == 0  # checking the folder needs no key
    assert all(r.startswith("bytes=0-") for r in remote.shard_ranges())  # only the shards' first blocks
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert str(folder).startswith(str(tmp_path / "cache"))
    for name, data in files.items():
        cached = folder / name
        assert cached.stat().st_size == len(data)
        if not name.endswith(".safetensors"):
            assert cached.read_bytes() == data and stat.S_IMODE(cached.stat().st_mode) == 0o600
        else:  # a sparse placeholder: the header only; its data are zeros, which never authenticate
            assert cached.read_bytes()[-64:] == bytes(64)
    assert (folder / POINTER_DIR / POINTER_NAME).is_file()

    remote.counters.reset()
    for number, expected in enumerate(tensors(1), 1):
        loaded = ct_np.load_file(folder / f"model-0000{number}-of-00002.safetensors", config=options(keys, provider))
        assert sorted(loaded) == sorted(expected)
        for name, value in expected.items():
            np.testing.assert_array_equal(loaded[name], value)
    assert provider.calls == 2
    assert len(remote.shard_ranges()) >= 4  # the data came by range requests
    assert open_remote_model(url, options(keys)) == folder  # again: the same cache folder, checked again


def test_a_remote_folder_url_without_trailing_slash_and_sub_folder_shards(
    remote: Remote, keys: Keys, tmp_path: Path
) -> None:
    files = build(tmp_path / "src", keys, sign=False)
    (tmp_path / "src" / "2_Dense").mkdir()
    ct_np.save_file(
        {"w": np.ones((4, 4), np.float32)}, tmp_path / "src" / "2_Dense" / "model.safetensors", config=keys.save
    )
    (tmp_path / "src" / "modules.json").write_text("[]")
    write_manifest(tmp_path / "src", keys.signer)
    files = {
        p.relative_to(tmp_path / "src").as_posix(): p.read_bytes() for p in (tmp_path / "src").rglob("*") if p.is_file()
    }
    url = remote.upload(files, "models/st/")
    if remote.kind == "s3":  # the listing finds the sub-folder; HTTP has none: the manifest lists it
        folder = open_remote_model(url.rstrip("/"), options(keys))
    else:
        folder = open_remote_model(url, options(keys))
    loaded = ct_np.load_file(folder / "2_Dense" / "model.safetensors", config=options(keys))
    np.testing.assert_array_equal(loaded["w"], np.ones((4, 4), np.float32))


def test_an_unsigned_folder_loads_when_nothing_is_pinned(remote: Remote, keys: Keys, tmp_path: Path) -> None:
    url = remote.upload(build(tmp_path / "src", keys, sign=False))
    loose = pc.LoadOptions(
        keyring=KeyRing([keys.master, keys.signer.verify_key]), use_settings=False, use_environment=False
    )
    folder = open_remote_model(url, loose)
    assert not (folder / MANIFEST_NAME).exists()
    loaded = ct_np.load_file(folder / "model-00002-of-00002.safetensors", config=loose)
    np.testing.assert_array_equal(loaded["head"], tensors(1)[1]["head"])


# -- refused before any key is released ---------------------------------------------------------------------


def _refused(remote: Remote, keys: Keys, url: str, match: str) -> None:
    remote.counters.reset()
    provider = Counting(keys.master)
    with pytest.raises(ManifestError, match=match):
        open_remote_model(url, options(keys, provider))
    assert provider.calls == 0
    assert all(r.startswith("bytes=0-") for r in remote.shard_ranges())  # no tensor range of any shard


def test_a_changed_small_file_is_refused_before_any_shard_is_asked_for(
    remote: Remote, keys: Keys, tmp_path: Path
) -> None:
    url = remote.upload(build(tmp_path / "src", keys))
    remote.put(PREFIX + "config.json", json.dumps({"model_type": "llama", "hidden_size": 65}).encode())
    _refused(remote, keys, url, "config.json: (size|contents) differ")
    assert remote.shard_ranges() == []


def test_an_added_shard_is_refused(remote: Remote, keys: Keys, tmp_path: Path) -> None:
    files = build(tmp_path / "src", keys)
    url = remote.upload(files)
    extra = ct_np.save({"evil": np.zeros(3, np.float32)}, config=keys.save)
    remote.put(PREFIX + "model-00003-of-00002.safetensors", extra)
    if remote.kind == "http":  # no listing on HTTP: an added shard is used only if the index names it
        index = json.loads(files[INDEX])
        index["weight_map"]["evil"] = "model-00003-of-00002.safetensors"
        remote.put(PREFIX + INDEX, json.dumps(index).encode())
        _refused(remote, keys, url, "index.json: (size|contents) differ")
    else:
        _refused(remote, keys, url, "model-00003-of-00002.safetensors: weight file not listed")
    assert remote.shard_ranges() == []


def test_a_removed_shard_is_refused(remote: Remote, keys: Keys, tmp_path: Path) -> None:
    url = remote.upload(build(tmp_path / "src", keys))
    remote.delete(PREFIX + "model-00002-of-00002.safetensors")
    if remote.kind == "http":
        remote.counters.reset()
        with pytest.raises(RemoteSourceError, match=r"model-00002-of-00002\.safetensors: not found"):
            open_remote_model(url, options(keys))
    else:
        _refused(remote, keys, url, "signed shard missing")


def test_a_shard_from_another_release_is_refused(remote: Remote, keys: Keys, tmp_path: Path) -> None:
    url = remote.upload(build(tmp_path / "src", keys, seed=1))
    other = build(tmp_path / "other", keys, seed=2)  # same names and sizes, another release, same publisher
    remote.put(PREFIX + "model-00001-of-00002.safetensors", other["model-00001-of-00002.safetensors"])
    _refused(remote, keys, url, "not the shard the publisher signed")


def test_a_shard_replaced_after_caching_is_refused_at_open(remote: Remote, keys: Keys, tmp_path: Path) -> None:
    url = remote.upload(build(tmp_path / "src", keys, seed=1))
    folder = open_remote_model(url, options(keys))
    other = build(tmp_path / "other", keys, seed=2)
    remote.put(PREFIX + "model-00001-of-00002.safetensors", other["model-00001-of-00002.safetensors"])
    provider = Counting(keys.master)
    with pytest.raises(ManifestError, match="not the shard the publisher signed"):
        ct_np.load_file(folder / "model-00001-of-00002.safetensors", config=options(keys, provider))
    assert provider.calls == 0


def test_an_unsigned_folder_is_refused_under_pins(remote: Remote, keys: Keys, tmp_path: Path) -> None:
    url = remote.upload(build(tmp_path / "src", keys, sign=False))
    _refused(remote, keys, url, "no signed manifest")
    assert remote.shard_ranges() == []


def test_a_manifest_by_another_publisher_is_refused(remote: Remote, keys: Keys, tmp_path: Path) -> None:
    files = build(tmp_path / "src", keys)
    url = remote.upload(files)
    evil = Keys()
    write_manifest(tmp_path / "src", evil.signer)  # re-signed by someone else
    remote.put(PREFIX + MANIFEST_NAME, (tmp_path / "src" / MANIFEST_NAME).read_bytes())
    provider = Counting(keys.master)
    with pytest.raises(pc.CryptoTensorsError):
        open_remote_model(url, options(keys, provider))
    assert provider.calls == 0 and remote.shard_ranges() == []


def test_folder_urls_with_a_query_or_credentials_are_refused(tmp_path: Path) -> None:
    for url in ("https://user:secret@example.com/m/", "https://example.com/m/?X-Amz-Signature=abc"):
        with pytest.raises(RemoteSourceError) as caught:
            open_remote_model(url)
        assert "secret" not in str(caught.value) and "abc" not in str(caught.value)


# -- the command line ---------------------------------------------------------------------------------------


def test_cli_inspect_and_verify_remote_folders(remote: Remote, keys: Keys, tmp_path: Path) -> None:
    from pycryptotensors.cli.app import main
    from pycryptotensors.keys.files import write_key_file

    url = remote.upload(build(tmp_path / "src", keys))
    write_key_file(tmp_path / "master.jwk", keys.master)
    write_key_file(tmp_path / "pub.jwk", keys.signer.verify_key)
    key_args = ["--key", str(tmp_path / "master.jwk"), "--trust", str(tmp_path / "pub.jwk")]
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["inspect", url, "--json"]) == 0
    info = json.loads(out.getvalue())
    assert [f["path"].rsplit("/", 1)[-1] for f in info["files"]] == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    assert all(f["encrypted_tensors"] for f in info["files"])
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["verify", url, "--deep", *key_args, "--json"]) == 0
    result = json.loads(out.getvalue())
    assert result["manifest"]["files"] == 5 and len(result["files"]) == 2
    assert sum(f["bytes_authenticated"] for f in result["files"]) == sum(
        t.nbytes for part in tensors(1) for t in part.values()
    )
    remote.put(PREFIX + "tokenizer.json", b'{"changed": true}')
    with redirect_stdout(io.StringIO()):
        assert main(["verify", url, *key_args]) == 4


def test_remote_folder_helpers_need_no_network_for_local_paths(tmp_path: Path) -> None:
    """A local file outside any remote cache folder is opened as a local file (two stats, no import)."""
    from pycryptotensors.reading.source import FileSource, open_source, remote_pointer

    path = tmp_path / "x.safetensors"
    path.write_bytes(b"\0" * 8)
    assert remote_pointer(path) is None
    source = open_source(path)
    assert isinstance(source, FileSource)
    source.close()


# -- transformers, unmodified -------------------------------------------------------------------------------

TRANSFORMERS_SCRIPT = """
import json, sys, torch
from transformers import AutoModelForCausalLM
from pycryptotensors.model import open_remote_model
folder = open_remote_model(sys.argv[1])  # keys and pins from the settings file
model = AutoModelForCausalLM.from_pretrained(folder)
with torch.no_grad():
    logits = model(torch.tensor([[1, 5, 17, 42]])).logits
print("RESULT " + json.dumps(logits.flatten().tolist()))
"""


def test_transformers_loads_a_remote_folder_through_its_cache(keys: Keys, tmp_path: Path, http_server: Any) -> None:
    """``from_pretrained(open_remote_model(url))`` in a fresh process: transparent mode (the start-up hook)
    streams the shards; the logits equal the plain model's."""
    import subprocess
    import sys

    import torch

    from _command import CLI
    from _models import tiny_llama
    from pycryptotensors.keys.files import write_key_file

    llama = tiny_llama()
    llama.save_pretrained(tmp_path / "plain", max_shard_size="100KB")
    key_dir = tmp_path / "keys"
    key_dir.mkdir()
    write_key_file(key_dir / "master.jwk", keys.master)
    write_key_file(tmp_path / "publisher.jwk", keys.signer)
    write_key_file(key_dir / "publisher.pub.jwk", keys.signer.verify_key)
    encrypt = [*CLI, "encrypt", str(tmp_path / "plain"), str(tmp_path / "enc"), "--quiet"]
    encrypt += ["--master-key", str(key_dir / "master.jwk"), "--signing-key", str(tmp_path / "publisher.jwk")]
    subprocess.run(encrypt, check=True, capture_output=True, timeout=300)
    enc = tmp_path / "enc"
    assert len(list(enc.glob("*.safetensors"))) > 2
    http_server.objects.clear()
    for path in enc.rglob("*"):
        if path.is_file():
            http_server.put("tf/" + path.relative_to(enc).as_posix(), path.read_bytes())
    settings = tmp_path / "settings.toml"
    settings.write_text(f'key_dirs = ["{key_dir}"]\nrequire_encryption = true\n')
    env = {k: v for k, v in os.environ.items() if k not in ("CRYPTOTENSOR_KEYS", "PYCRYPTOTENSORS_TRANSPARENT")}
    env.update(
        PYCRYPTOTENSORS_CONFIG=str(settings),
        PYCRYPTOTENSORS_CACHE_DIR=str(tmp_path / "cache"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONWARNINGS="ignore",
    )
    run = subprocess.run(
        [sys.executable, "-c", TRANSFORMERS_SCRIPT, http_server.url("tf/")],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    line = next(x for x in run.stdout.splitlines() if x.startswith("RESULT "))
    with torch.no_grad():
        expected = llama(torch.tensor([[1, 5, 17, 42]])).logits.flatten()
    torch.testing.assert_close(torch.tensor(json.loads(line[len("RESULT ") :])), expected)
    shard_gets = [r for p, r in http_server.counters.log if p.endswith(".safetensors")]
    assert any(not r.startswith("bytes=0-") for r in shard_gets)  # tensors came by range requests
