"""The key service as its operators and consumers meet it: the start-up banner and its warnings, the exit codes
of ``serve`` and ``keyservice`` for every usage error, listings, grant warnings, the URL variable, defaults in
``--help``, the hint for a missing [server] extra, and key errors that say what to do (no key material)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import pycryptotensors as pc
import pycryptotensors.numpy as ct_np
from _command import CLI, ERROR_PREFIX
from _keyservice import Server, cli, free_port, publish
from pycryptotensors.keyservice.server import ServeConfig, banner


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(autouse=True)
def _no_ambient_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PYCRYPTOTENSORS_KEY_SERVICE_TOKEN", "PYCRYPTOTENSORS_ADMIN_TOKEN", "PYCRYPTOTENSORS_KEYSERVICE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def ks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("ops") / "state").start()
    yield server
    server.stop()


def one_line_error(result: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERROR_PREFIX), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)


# ----------------------------------------------------------------------------------------- serve


def test_banner_and_access_log(ks: Server) -> None:
    log = (ks.state.parent / f"{ks.state.name}-{ks.port}.log").read_text()
    assert f"on http://127.0.0.1:{ks.port} (plain HTTP)" in log
    assert str(ks.state / "admin.token") in log and "keyservice.sqlite3" in log
    assert "warning" not in log  # loopback: no warning about plain HTTP
    assert ks.admin_token not in log


def test_access_log_lines_cannot_be_forged_through_the_path(ks: Server) -> None:
    """The path is percent-decoded before it is logged: an unauthenticated '%0A' used to start a forged line."""
    import socket

    forged = '2026-01-01T00:00:00Z 127.0.0.1 "POST /v1/release" 200 1.0ms'
    target = "/x%0A" + forged.replace(" ", "%20").replace('"', "%22")
    with socket.create_connection(("127.0.0.1", ks.port), timeout=10) as conn:
        conn.sendall(f"GET {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode())
        assert conn.recv(100).startswith(b"HTTP/1.1 404")
    log = ks.state.parent / f"{ks.state.name}-{ks.port}.log"
    deadline = time.monotonic() + 10
    while "/x" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = log.read_text().splitlines()
    assert any(line.endswith("ms") and '"GET /x\\n2026-01-01' in line for line in lines), lines[-3:]
    assert not any(line.startswith("2026-01-01T00:00:00Z") for line in lines)


def test_plain_http_beyond_loopback_is_warned_about(tmp_path: Path) -> None:
    for host, warned in (("0.0.0.0", True), ("192.0.2.7", True), ("127.0.0.1", False), ("::1", False)):
        lines = banner(ServeConfig(tmp_path, host=host), 8443)
        assert any(line.startswith("warning: serving plain HTTP") for line in lines) is warned, host
    tls = banner(ServeConfig(tmp_path, host="0.0.0.0", tls_cert="c.pem", tls_key="k.pem"), 8443)
    assert tls[0].startswith("pycryptotensors key service on https://0.0.0.0:8443 (TLS)")
    assert not any("warning" in line for line in tls)


def test_health_and_readiness(ks: Server) -> None:
    import httpx

    assert httpx.get(f"{ks.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{ks.url}/readyz").json() == {"status": "ready"}


def test_a_port_in_use_exits_1(ks: Server, tmp_path: Path) -> None:
    result = cli("serve", "--state", tmp_path / "other", "--port", ks.port, check=False)
    one_line_error(result, 1, f"127.0.0.1:{ks.port} is already in use", "--port")


def test_serve_usage_errors_exit_2(tmp_path: Path) -> None:
    result = cli("serve", "--state", tmp_path / "s", "--port", free_port(), "--tls-cert", "c.pem", check=False)
    one_line_error(result, 2, "--tls-key")


def test_help_shows_defaults() -> None:
    text = cli("serve", "--help").stdout
    for default in (
        "(default: 127.0.0.1)",
        "(default: 8443)",
        "(default: sqlite)",
        "(default: 10.0)",
        "(default: 60.0)",
    ):
        assert default in text, default
    assert "(default: 100)" in cli("keyservice", "audit", "--help").stdout


def test_without_the_server_extra_a_one_line_hint(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('jwt', 'uvicorn'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}')\n"
        "sys.meta_path.insert(0, Block())\n"
    )
    command = [sys.executable, "-c", "import sys; from pycryptotensors.cli.app import main; sys.exit(main())"]
    result = subprocess.run(
        [*command, "serve", "--state", str(tmp_path / "state"), "--port", str(free_port())],
        env={**os.environ, "PYTHONPATH": str(blocker)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    one_line_error(result, 1, "pip install 'pycryptotensors[server]'", "uvicorn", "jwt")
    assert "ModuleNotFoundError" not in result.stderr


# ----------------------------------------------------------------------------------------- keyservice


def test_listings_and_grant_show(ks: Server, tmp_path: Path) -> None:
    published = publish(ks, tmp_path, unique("listed"))
    principal = unique("lister")
    token = ks.token(principal)
    models = json.loads(ks.admin_cli("models", "list", "--json").stdout)["models"]
    assert published.kid in [m["kid"] for m in models]
    assert published.master.to_jwk()["k"] not in json.dumps(models)
    assert published.kid in ks.admin_cli("models", "list").stdout
    tokens = json.loads(ks.admin_cli("tokens", "list", "--json").stdout)["tokens"]
    assert principal in [t["principal"] for t in tokens] and token not in json.dumps(tokens)
    grant = json.loads(ks.admin_cli("grant", principal, published.kid, "--max-uses", "2", "--json").stdout)
    shown = json.loads(ks.admin_cli("grant", "show", grant["id"], "--json").stdout)
    assert (shown["id"], shown["principal"], shown["kid"], shown["max_uses"], shown["uses"]) == (
        grant["id"], principal, published.kid, 2, 0,
    )  # fmt: skip
    assert grant["id"] in ks.admin_cli("grant", "show", grant["id"]).stdout
    listed = json.loads(ks.admin_cli("grants", "list", "--principal", principal, "--json").stdout)["grants"]
    assert [g["id"] for g in listed] == [grant["id"]]
    by_kid = json.loads(ks.admin_cli("grants", "list", "--kid", published.kid, "--json").stdout)["grants"]
    assert [g["id"] for g in by_kid] == [grant["id"]]
    missing = ks.admin_cli("grant", "show", "0123456789abcdef", check=False)
    one_line_error(missing, 5, "no grant with id")


def test_grant_warnings(ks: Server, tmp_path: Path) -> None:
    published = publish(ks, tmp_path, unique("warned"))
    unknown = ks.admin_cli("grant", unique("w"), unique("never-registered"))
    assert unknown.returncode == 0 and "warning: key id" in unknown.stderr and "not registered" in unknown.stderr
    expired = ks.admin_cli("grant", unique("w"), published.kid, "--until", "2020-01-01")
    assert "warning: the grant's expiry is in the past" in expired.stderr
    fine = ks.admin_cli("grant", unique("w"), published.kid, "--until", "2099-01-01", "--max-uses", "1")
    assert "warning" not in fine.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["grant", "alice", "kid", "--until", "tomorrow"], ["--until", "tomorrow"]),
        (["grant", "alice", "kid", "--max-uses", "-5"], ["--max-uses", "positive"]),
        (["grant", "alice", "kid", "--max-uses", "0"], ["--max-uses", "0 uses"]),
        (["grant", "alice", "kid", "--max-uses", "many"], ["--max-uses"]),
        (["grant", "team/alice", "kid"], ["principal"]),
        (["token", "create", "a b"], ["principal"]),
        (["token", "revoke"], ["PRINCIPAL or --id"]),
        (["audit", "--since", "last week"], ["--since"]),
        (["admin", "create", "carol"], ["--out"]),
    ],
)
def test_usage_errors_exit_2(ks: Server, args: list[str], words: list[str]) -> None:
    before = len(ks.audit())
    one_line_error(ks.admin_cli(*args, check=False), 2, *words)
    assert len(ks.audit()) == before  # refused before the service was asked


def test_max_uses_0_is_refused_by_the_service_too(ks: Server) -> None:
    with pytest.raises(pc.KeyServiceDeniedError) as caught, ks.admin() as admin:
        admin.grant(unique("zero"), "kid", max_uses=0)
    assert caught.value.reason == "bad_request" and "positive" in str(caught.value)


def test_url_from_the_environment(ks: Server) -> None:
    env = {**os.environ, "PYCRYPTOTENSORS_KEYSERVICE_URL": ks.url}
    result = subprocess.run(
        [*CLI, "keyservice", "--admin-token-file", str(ks.admin_token_file), "models", "list", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "models" in json.loads(result.stdout)
    env.pop("PYCRYPTOTENSORS_KEYSERVICE_URL")
    no_url = subprocess.run(
        [*CLI, "keyservice", "--admin-token-file", str(ks.admin_token_file), "models", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    one_line_error(no_url, 2, "PYCRYPTOTENSORS_KEYSERVICE_URL")


# ----------------------------------------------------------------------------------------- key errors


def test_missing_key_names_the_file_the_kid_and_the_key_service(
    ks: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    published = publish(ks, tmp_path, unique("needs"))
    settings = tmp_path / "empty.toml"
    settings.write_text("key_dirs = []\n")
    monkeypatch.setenv("PYCRYPTOTENSORS_CONFIG", str(settings))
    other = pc.generate_master_key(kid="someone-else")
    with pytest.raises(pc.MissingKeyError) as caught:
        ct_np.load_file(published.path, config=pc.LoadOptions(keyring=pc.KeyRing([other, other])))
    message = str(caught.value)
    for part in (str(published.path), repr(published.signer.kid), ks.url, "[key_service].allowed", "token_file",
                 "PYCRYPTOTENSORS_KEY_SERVICE_TOKEN", "key ids tried"):  # fmt: skip
        assert part in message, (part, message)
    assert published.master.to_jwk()["k"] not in message and other.to_jwk()["k"] not in message

    # with the publisher key at hand, the master key is what is missing: the same guidance, the master's kid
    with pytest.raises(pc.MissingKeyError) as caught:
        ct_np.load_file(published.path, config={"sign_key": published.signer.verify_key})
    message = str(caught.value)
    assert f"master key with kid {published.kid!r}" in message and ks.url in message, message


def test_wrong_master_key_names_the_file_the_needed_and_the_given_kid(tmp_path: Path) -> None:
    master, signer = pc.generate_master_key(kid="needed-2026"), pc.generate_signing_key(kid="pub")
    path = tmp_path / "m.safetensors"
    ct_np.save_file({"w": __import__("numpy").ones(3, dtype="float32")}, path,
                    config={"enc_key": master, "sign_key": signer})  # fmt: skip
    wrong = pc.generate_master_key(kid="given-2025")
    with pytest.raises(pc.WrongKeyError) as caught:
        ct_np.load_file(path, config={"enc_key": wrong, "sign_key": signer.verify_key})
    message = str(caught.value)
    for part in (str(path), "'needed-2026'", "'given-2025'", "key ids tried: given-2025"):
        assert part in message, (part, message)
    for secret in (master.to_jwk()["k"], wrong.to_jwk()["k"], wrong.secret.hex()):
        assert secret not in message
    time.sleep(0)  # nothing to wait for: the message is built before any read


def test_json_access_log_without_secrets(tmp_path: Path) -> None:
    import httpx

    server = Server(tmp_path / "state", "--access-log", "json").start()
    try:
        token = server.token(unique("json-log"))
        httpx.post(f"{server.url}/v1/release", json={}, headers={"Authorization": f"Bearer {token}"})
        httpx.get(f"{server.url}/v1/audit?principal=x", headers={"Authorization": "Bearer adm_wrong"})
    finally:
        server.stop()
    log = (tmp_path / f"state-{server.port}.log").read_text()
    entries = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert {"time", "client", "method", "path", "status", "ms"} <= set(entries[0])
    seen = {(e["method"], e["path"], e["status"]) for e in entries}
    assert {("POST", "/v1/tokens", 201), ("POST", "/v1/release", 400), ("GET", "/v1/audit", 401)} <= seen
    for secret in (token, server.admin_token, "adm_wrong", "principal=x", "Bearer"):
        assert secret not in log
