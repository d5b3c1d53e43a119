"""gs:// and az:// through obstore's Google Cloud Storage and Azure Blob clients (issue 19 item 3).

No GCS or Azure emulator that speaks enough of either API installs from PyPI (gcp-storage-emulator's object
download sends no ETag or Last-Modified, which object_store requires; Azurite is an npm package). The reads
are therefore run against the Range/If-Match HTTP server of tests/_remote_servers.py standing in for the
GET path of each API (``/BUCKET/OBJECT`` for GCS, ``/ACCOUNT/CONTAINER/BLOB`` for Azure; listing is not
served): real obstore clients, their credential chains configured from the environment, the version pin
(If-Match) and our error messages. The README says which back-ends are tested against what.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import numpy as np
import pytest

pytest.importorskip("obstore", reason="needs the remote extra")

import pycryptotensors as pc
import pycryptotensors.numpy as ct_np
from _remote_servers import ObjectServer
from pycryptotensors.errors import IntegrityError, RemoteSourceError
from pycryptotensors.reading.remote import RemoteSource

pytestmark = pytest.mark.filterwarnings("ignore:.*plain HTTP")
ACCOUNT_KEY = "U0VDUkVULWF6dXJlLWtleS0xMjM0NTY3OA=="  # base64: what a shared key looks like; never in a message
TENSORS = {"w": np.arange(300_000, dtype=np.float32).reshape(300, 1000), "b": np.ones(5, np.float32)}


@pytest.fixture(scope="module")
def keys() -> tuple[pc.MasterKey, pc.SigningKey]:
    return pc.generate_master_key(kid="m-backends"), pc.generate_signing_key(kid="s-backends")


@pytest.fixture
def cfgs(keys: tuple[pc.MasterKey, pc.SigningKey]) -> tuple[dict, dict]:
    save = {"enc_key": keys[0].to_jwk("reference"), "sign_key": keys[1].to_jwk("reference")}
    return save, {"enc_key": keys[0].to_jwk("reference"), "sign_key": keys[1].verify_key.to_jwk("reference")}


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ObjectServer]:
    for name in ("GOOGLE_SERVICE_ACCOUNT", "GOOGLE_SERVICE_ACCOUNT_KEY", "GOOGLE_APPLICATION_CREDENTIALS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PYCRYPTOTENSORS_REMOTE_RETRIES", "1")
    made = ObjectServer()
    made.start()
    yield made
    made.stop()


def closed_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


def header(server: ObjectServer, name: str) -> str:
    """A header of the last request, whatever its case (obstore sends them lower-case)."""
    return next((v for k, v in server.last_headers.items() if k.lower() == name.lower()), "")


def gcs_env(monkeypatch: pytest.MonkeyPatch, port: int) -> None:
    monkeypatch.setenv("GOOGLE_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("GOOGLE_SKIP_SIGNATURE", "true")


def azure_env(monkeypatch: pytest.MonkeyPatch, port: int, key: str = ACCOUNT_KEY) -> None:
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", "devacct")
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", key)
    monkeypatch.setenv("AZURE_STORAGE_ENDPOINT", f"http://127.0.0.1:{port}/devacct")


def test_gs_urls_read_by_range_through_the_gcs_client(server: ObjectServer, cfgs, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    save, load = cfgs
    gcs_env(monkeypatch, server.port)
    server.put("bucket/models/m.safetensors", ct_np.save(TENSORS, config=save))
    loaded = ct_np.load_file("gs://bucket/models/m.safetensors", config=load)
    np.testing.assert_array_equal(loaded["w"], TENSORS["w"])
    np.testing.assert_array_equal(loaded["b"], TENSORS["b"])
    assert server.counters.log[-1][1].startswith("bytes=")  # range requests
    assert header(server, "If-Match")  # pinned to the version seen at open


def test_az_urls_read_with_a_shared_key_from_the_environment(server: ObjectServer, cfgs, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    save, load = cfgs
    azure_env(monkeypatch, server.port)
    server.put("devacct/container/models/m.safetensors", ct_np.save(TENSORS, config=save))
    loaded = ct_np.load_file("az://container/models/m.safetensors", config=load)
    np.testing.assert_array_equal(loaded["w"], TENSORS["w"])
    auth = header(server, "Authorization")
    assert auth.startswith("SharedKey devacct:") and ACCOUNT_KEY not in auth  # signed with it, never sent
    assert header(server, "If-Match")


@pytest.mark.parametrize("scheme", ["gs", "az"])
def test_an_object_replaced_mid_read_is_an_integrity_error(
    scheme: str, server: ObjectServer, cfgs, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    save, load = cfgs
    key = "bucket/models/r.safetensors" if scheme == "gs" else "devacct/container/models/r.safetensors"
    gcs_env(monkeypatch, server.port) if scheme == "gs" else azure_env(monkeypatch, server.port)
    server.put(key, ct_np.save(TENSORS, config=save))
    url = "gs://bucket/models/r.safetensors" if scheme == "gs" else "az://container/models/r.safetensors"
    server.counters.faults[:] = [("delay", 0.0), lambda: server.put(key, ct_np.save(TENSORS, config=save))]
    with pytest.raises(IntegrityError, match="changed while it was being read"):
        ct_np.load_file(url, config=load)


@pytest.mark.parametrize("scheme", ["gs", "az"])
def test_unreachable_endpoints_name_the_url_and_no_secret(scheme: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYCRYPTOTENSORS_REMOTE_RETRIES", "0")
    port = closed_port()
    gcs_env(monkeypatch, port) if scheme == "gs" else azure_env(monkeypatch, port)
    url = f"{scheme}://bucket/models/m.safetensors"
    with pytest.raises(RemoteSourceError) as caught:
        RemoteSource(url)
    text = str(caught.value)
    assert text.startswith(url) and "check the network" in text and ACCOUNT_KEY not in text


def test_bad_credentials_are_refused_without_echoing_them(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "-----BEGIN PRIVATE KEY-----SECRET-MATERIAL-----END PRIVATE KEY-----"
    monkeypatch.setenv("GOOGLE_SERVICE_ACCOUNT_KEY", json.dumps({"private_key": secret, "client_email": "x@y"}))
    with pytest.raises(RemoteSourceError, match="cannot set up the client") as caught:
        RemoteSource("gs://bucket/models/m.safetensors")
    assert "SECRET-MATERIAL" not in str(caught.value)
    monkeypatch.delenv("GOOGLE_SERVICE_ACCOUNT_KEY")
    azure_env(monkeypatch, closed_port(), key="not base64 SECRET-MATERIAL")
    with pytest.raises(RemoteSourceError, match="cannot set up the client") as caught:
        RemoteSource("az://container/models/m.safetensors")
    assert "SECRET-MATERIAL" not in str(caught.value)


@pytest.mark.parametrize("url", ["gs://bucket", "gs://bucket/", "az://container", "az:///x.safetensors"])
def test_gs_and_az_urls_need_a_bucket_and_an_object(url: str) -> None:
    with pytest.raises(RemoteSourceError, match=f"give a bucket and an object, e.g. {url[:2]}://"):
        RemoteSource(url)


def test_a_missing_object_says_not_found(server: ObjectServer, monkeypatch: pytest.MonkeyPatch) -> None:
    gcs_env(monkeypatch, server.port)
    with pytest.raises(RemoteSourceError, match=r"gs://bucket/none\.safetensors: not found"):
        RemoteSource("gs://bucket/none.safetensors")
