"""The key service facing its network, against real ``pycryptotensors serve`` processes on 127.0.0.1: the body is
read only after the token is checked, and only so much of it (413) and so deep (400); half-sent requests and
idle connections are dropped within the header timeout; connections are limited; failures are rate limited
per source address and per token; every admin action and refusal is audited (failures before authentication
on counted rows); client ids cannot be enumerated; state files are private; attestation needs an audience;
admin tokens can be created, rotated and revoked, and deleting the admin token file replaces it.
"""

from __future__ import annotations

import json
import os
import select
import socket
import sqlite3
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

import pycryptotensors as pc
from _command import CLI, ERROR_PREFIX
from _keyservice import Server, cli, free_port, header_bytes, load, publish
from pycryptotensors.errors import KeyServiceDeniedError, KeyServiceUnauthorizedError
from pycryptotensors.keyservice.admin import AdminClient
from pycryptotensors.keyservice.protocol import Ephemeral, publisher_request
from pycryptotensors.keyservice.store import RootKey, SqliteStore

MiB = 1024 * 1024


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(autouse=True)
def _no_ambient_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PYCRYPTOTENSORS_KEY_SERVICE_TOKEN", "PYCRYPTOTENSORS_ADMIN_TOKEN", "PYCRYPTOTENSORS_KEYSERVICE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def ks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Default limits, except a short header timeout so that slow requests are dropped quickly."""
    server = Server(tmp_path_factory.mktemp("hard") / "state", "--header-timeout", "2", "--body-timeout", "2").start()
    yield server
    server.stop()


def peak_rss(server: Server) -> int:
    assert server.process is not None
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def log_text(server: Server) -> str:
    return "\n".join(p.read_text(errors="replace") for p in server.state.parent.glob(f"{server.state.name}-*.log"))


def raw_request(server: Server, head: str, body_bytes: int, chunk: int = MiB) -> bytes:
    """Send a request head, then up to ``body_bytes`` of body in chunks, stopping as soon as the server answers;
    the answer (status line and headers, at least), or b'' when the server just closed."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head.encode())
        sent, block = 0, b"x" * chunk
        while sent < body_bytes:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sock.sendall(block[: min(chunk, body_bytes - sent)])
            except OSError:  # the server answered and closed while we were still sending
                break
            sent += chunk
        answer = b""
        try:
            while b"\r\n\r\n" not in answer:
                part = sock.recv(65536)
                if not part:
                    break
                answer += part
        except OSError:
            pass
        return answer


def deny_rows(server: Server, reason: str, action: str | None = None) -> list[dict[str, Any]]:
    records = json.loads(server.admin_cli("audit", "--json", "--limit", "10000").stdout)["records"]
    return [
        r
        for r in records
        if r["decision"] == "deny" and r["reason"].startswith(reason + ":") and action in (None, r["action"])
    ]


def counted(rows: list[dict[str, Any]]) -> int:
    return sum(r["count"] for r in rows)


# ----------------------------------------------------------------------------------------- bodies and JSON


def test_a_body_without_a_token_is_never_read(ks: Server) -> None:
    before_rss, before = peak_rss(ks), counted(deny_rows(ks, "unauthorized", "release"))
    head = "POST /v1/release HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n"
    answer = raw_request(ks, head.format(96 * MiB), 96 * MiB)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert peak_rss(ks) - before_rss < 16 * MiB  # the 96 MiB never reached the server's memory
    assert counted(deny_rows(ks, "unauthorized", "release")) == before + 1


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_an_oversized_body_is_refused_413(ks: Server, declared: bool) -> None:
    token = ks.token(unique("big"))
    before_rss, before = peak_rss(ks), counted(deny_rows(ks, "too_large"))
    if declared:
        head = (
            f"POST /v1/release HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Length: {96 * MiB}\r\n\r\n"
        )
        answer = raw_request(ks, head, 96 * MiB)
    else:

        def chunks() -> Iterator[bytes]:
            for _ in range(96):
                yield b"[" * MiB

        try:
            response = httpx.post(
                f"{ks.url}/v1/release", content=chunks(), headers={"Authorization": f"Bearer {token}"}, timeout=30
            )
            answer = f"HTTP/1.1 {response.status_code}".encode()
        except httpx.HTTPError:  # the server answered 413 and closed before the client finished sending
            answer = b"HTTP/1.1 413 (connection closed while sending)"
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert peak_rss(ks) - before_rss < 48 * MiB  # at most the 8 MiB limit, and its JSON, in memory
    rows = deny_rows(ks, "too_large")
    assert counted(rows) == before + 1 and all(r["principal"] is None for r in rows)
    assert token not in json.dumps(rows)


def test_deeply_nested_json_is_refused_400(ks: Server) -> None:
    principal = unique("deep")
    token = ks.token(principal)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    before = counted(deny_rows(ks, "bad_request", "release"))
    for depth in (33, 2000, 200_000):
        body = b"[" * depth + b"]" * depth
        response = httpx.post(f"{ks.url}/v1/release", content=body, headers=headers, timeout=30)
        assert (response.status_code, response.json()["error"]) == (400, "bad_request"), depth
    claims = {"a": 1}
    for _ in range(40):
        claims = {"a": claims}
    body = {**Ephemeral().request(b"{}", {}, None).to_json(), "claims": claims}
    response = httpx.post(f"{ks.url}/v1/release", json=body, headers=headers, timeout=30)
    assert response.status_code == 400 and "nested deeper" in response.json()["message"]
    rows = deny_rows(ks, "bad_request", "release")
    assert counted(rows) == before + 4
    assert {r["actor"] for r in rows if r["count"]} >= {principal}
    assert "Traceback" not in log_text(ks)


def test_wide_json_bodies_keep_the_server_small(tmp_path: Path) -> None:
    """Bodies under the size limit whose JSON is millions of small values (any client token suffices): refused
    400 before they are parsed, so a dozen at once no longer take the server past a gigabyte (1.5 GiB measured)."""
    from concurrent.futures import ThreadPoolExecutor

    server = Server(tmp_path / "state").start()
    try:
        token = server.token(unique("wide"))
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        body = b"[" + b'"ab",' * (8 * MiB // 5 - 2) + b"1]"
        assert len(body) <= 8 * MiB
        before = peak_rss(server)

        def send(_: int) -> httpx.Response:
            return httpx.post(f"{server.url}/v1/release", content=body, headers=headers, timeout=120)

        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(send, range(12)))
        assert {(a.status_code, a.json()["error"]) for a in answers} == {(400, "bad_request")}
        assert "values" in answers[0].json()["message"]
        assert peak_rss(server) - before < 512 * MiB
        small = {**Ephemeral().request(b"{}", {"tags": list(range(100))}, None).to_json()}
        response = httpx.post(f"{server.url}/v1/release", json=small, headers=headers, timeout=30)
        assert (response.status_code, response.json()["error"]) == (400, "bad_request")  # parsed: a bad header
        assert "header" in response.json()["message"]
    finally:
        server.stop()


# ----------------------------------------------------------------------------------------- slow clients


def test_half_sent_requests_are_dropped_within_the_header_timeout(ks: Server) -> None:
    sockets = [socket.create_connection(("127.0.0.1", ks.port), timeout=10) for _ in range(20)]
    idle = socket.create_connection(("127.0.0.1", ks.port), timeout=10)  # connects and sends nothing
    try:
        for sock in sockets:
            sock.sendall(b"POST /v1/release HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        started = time.monotonic()
        for sock in [*sockets, idle]:
            sock.settimeout(max(0.1, started + 6 - time.monotonic()))
            assert sock.recv(1024) == b""  # closed by the server (a timeout here raises and fails)
        assert time.monotonic() - started < 2 + 3  # the documented timeout (2 s here) plus slack
        assert httpx.get(f"{ks.url}/healthz").status_code == 200  # the service itself is fine
    finally:
        for sock in [*sockets, idle]:
            sock.close()


def test_a_slow_body_gets_408(ks: Server) -> None:
    token = ks.token(unique("slow"))
    with socket.create_connection(("127.0.0.1", ks.port), timeout=10) as sock:
        sock.sendall(
            f"POST /v1/release HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n".encode()
            + b'Content-Length: 100\r\n\r\n{"version": '
        )
        started = time.monotonic()
        answer = sock.recv(1024)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert time.monotonic() - started < 2 + 3


def test_connection_limit(tmp_path: Path) -> None:
    server = Server(tmp_path / "state", "--max-connections", "4", "--header-timeout", "3").start()
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(6)]
    try:
        time.sleep(0.3)
        assert httpx.get(f"{server.url}/healthz").status_code == 503  # too many connections open
        for sock in held:
            sock.settimeout(6)
            assert sock.recv(1024) == b""  # the header timeout frees them
        assert httpx.get(f"{server.url}/healthz").status_code == 200
    finally:
        for sock in held:
            sock.close()
        server.stop()


def test_one_address_cannot_take_every_connection(tmp_path: Path) -> None:
    """Half-sent requests from one address fill only its own share; another address is still served."""
    server = Server(
        tmp_path / "state", "--max-connections", "20", "--max-connections-per-source", "5", "--header-timeout", "30"
    ).start()
    held: list[socket.socket] = []
    try:
        for _ in range(25):
            sock = socket.socket()
            sock.bind(("127.0.0.4", 0))
            sock.settimeout(10)
            sock.connect(("127.0.0.1", server.port))
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finished
            held.append(sock)
        time.sleep(0.5)
        closed = 0
        for sock in held:
            sock.settimeout(0.2)
            try:
                closed += sock.recv(1024) == b""
            except ConnectionResetError:  # closed with our unread head in its buffer
                closed += 1
            except TimeoutError:
                continue
        assert closed == 20  # beyond its 5, each connection of the address was closed on arrival
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.5"), timeout=10) as other:
            assert other.get(f"{server.url}/healthz").status_code == 200
    finally:
        for sock in held:
            sock.close()
        server.stop()


def test_connection_caps_must_be_positive(tmp_path: Path) -> None:
    for option in ("--max-connections", "--max-connections-per-source"):
        result = subprocess.run(
            [*CLI, "serve", "--state", str(tmp_path / "state"), option, "0"], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 2, result.stderr
        assert option in result.stderr


# ----------------------------------------------------------------------------------------- rate limits


def test_failures_are_rate_limited_per_source_and_per_token(tmp_path: Path) -> None:
    server = Server(tmp_path / "state", "--failures-per-minute", "5").start()
    try:
        published = publish(server, tmp_path, unique("rate"))

        def client(address: str) -> httpx.Client:
            return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=10)

        with client("127.0.0.3") as first:
            codes = [first.get(f"{server.url}/v1/audit", headers={"Authorization": "Bearer adm_wrong"}).status_code
                     for _ in range(7)]  # fmt: skip
            assert codes == [401] * 5 + [429] * 2
            limited = first.get(f"{server.url}/v1/audit", headers={"Authorization": "Bearer adm_wrong"})
            assert limited.headers["retry-after"] and limited.json()["error"] == "rate_limited"
            anonymous = first.get(f"{server.url}/v1/audit")
            assert anonymous.status_code == 429  # the source is limited for requests without a valid credential
            admin = {"Authorization": f"Bearer {server.admin_token}"}
            assert first.get(f"{server.url}/v1/models", headers=admin).status_code == 200  # ... but not its users
        with client("127.0.0.2") as other:  # another source is not limited by the first one's failures
            admin = {"Authorization": f"Bearer {server.admin_token}"}
            assert other.get(f"{server.url}/v1/models", headers=admin).status_code == 200

        principal = unique("noisy")
        token = server.token(principal)  # a client with no grant, failing from ever new addresses
        body = publisher_request(header_bytes(published.path))
        codes = []
        for i in range(7):
            with client(f"127.0.1.{i + 1}") as each:
                response = each.post(f"{server.url}/v1/publisher-key", json=body,
                                     headers={"Authorization": f"Bearer {token}"})  # fmt: skip
                codes.append(response.status_code)
        assert codes == [403] * 5 + [429] * 2
        assert counted(deny_rows(server, "rate_limited")) == 2 + 1 + 1 + 2
    finally:
        server.stop()


def test_forwarded_headers_do_not_choose_the_source_address(tmp_path: Path) -> None:
    """X-Forwarded-For from 127.0.0.1 (uvicorn trusts it there by default) neither escapes the per-source limit
    nor writes a forged client address into the audit log."""
    server = Server(tmp_path / "state", "--failures-per-minute", "5").start()
    try:
        codes = []
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.1"), timeout=10) as client:
            for i in range(7):
                forwarded = {"X-Forwarded-For": f"198.51.100.{i + 1}", "Forwarded": f"for=198.51.100.{i + 1}"}
                codes.append(client.post(f"{server.url}/v1/release", json={}, headers=forwarded).status_code)
        assert codes == [401] * 5 + [429] * 2
        clients = {record["client"] for record in server.audit()}
        assert clients == {"127.0.0.1"}, clients
    finally:
        server.stop()


# ----------------------------------------------------------------------------------------- enumeration, modes


def test_key_ids_cannot_be_enumerated(ks: Server, tmp_path: Path) -> None:
    registered = publish(ks, tmp_path, unique("known"))
    unknown = publish(ks, tmp_path, unique("unknown"), register=False)
    principal = unique("prober")
    token = ks.token(principal)
    answers = []
    for published in (registered, unknown):
        header = header_bytes(published.path)
        for path, body in (
            ("/v1/release", Ephemeral().request(header, {}, None).to_json()),
            ("/v1/publisher-key", publisher_request(header)),
        ):
            response = httpx.post(f"{ks.url}{path}", json=body, headers={"Authorization": f"Bearer {token}"})
            answers.append((path, response.status_code, response.text.replace(published.kid, "KID")))
        with pytest.raises(KeyServiceDeniedError) as caught:
            load(published, ks.provider(token))
        assert caught.value.reason == "no_grant"
    assert answers[:2] == answers[2:]  # the same answers, byte for byte, for a registered and an unknown key id
    assert all(status == 403 and '"no_grant"' in text for _, status, text in answers)


def test_state_files_are_private_even_in_an_existing_folder(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    database = state / "keyservice.sqlite3"
    sqlite3.connect(database).close()
    os.chmod(database, 0o644)  # as an older version made it
    server = Server(state).start()
    try:
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        for name in ("keyservice.sqlite3", "root.key", "admin.token"):
            assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name
        server.token(unique("someone"))  # a write: the WAL files appear
        for extra in state.glob("keyservice.sqlite3-*"):
            assert stat.S_IMODE(extra.stat().st_mode) == 0o600, extra
    finally:
        server.stop()


def test_attestation_needs_an_audience(tmp_path: Path) -> None:
    (tmp_path / "jwks.json").write_text('{"keys": []}')
    result = cli("serve", "--state", tmp_path / "state", "--port", free_port(), "--attestation-jwks",
                 tmp_path / "jwks.json", "--attestation-issuer", "https://attest.example", check=False)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(ERROR_PREFIX) and "--attestation-audience" in result.stderr
    assert not (tmp_path / "state").exists()  # refused before anything was made


# ----------------------------------------------------------------------------------------- names, tokens, admins


def test_odd_principal_names_are_refused_and_old_ones_revocable(ks: Server) -> None:
    for odd in ("team/alice", "..", "", "_x", "a b", "é", "x" * 129):
        result = ks.admin_cli("token", "create", odd, check=False)
        assert result.returncode == 2 and result.stderr.startswith(ERROR_PREFIX), (odd, result.stderr)
        with closing(ks.admin()) as admin, pytest.raises(KeyServiceDeniedError) as caught:
            admin.create_token(odd)  # the service refuses them too
        assert caught.value.reason == "bad_request"
    # names an older version accepted, written straight into the store
    store = SqliteStore(ks.state / "keyservice.sqlite3", RootKey.load_or_create(ks.state / "root.key"))
    olds = {name: store.add_token(name) for name in ("team/alice", "..", "a b")}
    extra = store.add_token("team/alice")
    for name, token in olds.items():
        assert store.principal_for(token) == name
        revoked = json.loads(ks.admin_cli("token", "revoke", name, "--json").stdout)
        assert revoked == {"principal": name, "revoked": 2 if name == "team/alice" else 1}
        assert store.principal_for(token) is None
    assert store.principal_for(extra) is None
    # one token by its id, from the listing (which never shows a token)
    principal = unique("one-of-two")
    keep, drop = ks.token(principal), ks.token(principal)
    listing = json.loads(ks.admin_cli("tokens", "list", "--json").stdout)["tokens"]
    assert keep not in json.dumps(listing) and drop not in json.dumps(listing)
    mine = [t for t in listing if t["principal"] == principal]
    assert len(mine) == 2 and all(t["revoked"] is None for t in mine)
    from pycryptotensors.keyservice.store import token_id

    ks.admin_cli("token", "revoke", "--id", token_id(drop))
    assert store.principal_for(drop) is None and store.principal_for(keep) == principal


def test_names_and_key_ids_cannot_forge_lines_in_the_text_views(ks: Server, tmp_path: Path) -> None:
    """A client's header key id, or a principal name an older version accepted, with a newline in it: the key id
    is refused (never stored), and the text views of the audit log and the token list escape what they show."""
    import numpy as np

    import pycryptotensors.numpy as ct_np

    forged = "2001-01-01 00:00:00  allow  release       alice        acme           10.0.0.1        released"
    path = tmp_path / "forged-kid.ct"
    ct_np.save_file({"w": np.ones(3, np.float32)}, path,
                    config={"enc_key": pc.generate_master_key(kid="x\n" + forged),
                            "sign_key": pc.generate_signing_key(kid="s")})  # fmt: skip
    body = Ephemeral().request(header_bytes(path), {}, None).to_json()
    token = ks.token(unique("forger"))
    response = httpx.post(f"{ks.url}/v1/release", json=body, headers={"Authorization": f"Bearer {token}"})
    assert (response.status_code, response.json()["error"]) == (400, "bad_request")
    assert not [r for r in deny_rows(ks, "bad_request") if "\n" in (r["kid"] or "")]

    store = SqliteStore(ks.state / "keyservice.sqlite3", RootKey.load_or_create(ks.state / "root.key"))
    legacy = store.add_token("old\n" + forged)  # a name from before the grammar, still usable
    published = publish(ks, tmp_path, unique("legacy"))
    response = httpx.post(f"{ks.url}/v1/release", json=Ephemeral().request(header_bytes(published.path), {}, None)
                          .to_json(), headers={"Authorization": f"Bearer {legacy}"})  # fmt: skip
    assert (response.status_code, response.json()["error"]) == (403, "no_grant")
    for view in (("audit", "--limit", "10000"), ("tokens", "list")):
        lines = ks.admin_cli(*view).stdout.splitlines()
        assert any("old\\n2001-01-01" in line for line in lines), view
        assert not any(line.startswith("2001-01-01") for line in lines), view


def test_admin_tokens_rotate_and_revoke(tmp_path: Path) -> None:
    state = tmp_path / "state"
    server = Server(state).start()
    try:
        first = server.admin_token
        carol_file = tmp_path / "carol.token"
        server.admin_cli("admin", "create", "carol", "--out", carol_file)
        assert stat.S_IMODE(carol_file.stat().st_mode) == 0o600
        carol = carol_file.read_text().strip()
        assert AdminClient(server.url, carol).models() == []
        # carol rotates her own token: the old one stops working, the new one (written in place) works
        cli("keyservice", "--url", server.url, "--admin-token-file", carol_file, "admin", "rotate")
        rotated = carol_file.read_text().strip()
        assert rotated != carol
        with pytest.raises(KeyServiceUnauthorizedError):
            AdminClient(server.url, carol).models()
        assert AdminClient(server.url, rotated).models() == []
        names = {a["name"] for a in json.loads(server.admin_cli("admins", "list", "--json").stdout)["admins"]}
        assert names == {"admin", "carol"}
        server.admin_cli("admin", "revoke", "carol")
        with pytest.raises(KeyServiceUnauthorizedError):
            AdminClient(server.url, rotated).models()

        # deleting the admin token file and restarting replaces the bootstrap token; the old one is dead
        server.stop()
        (state / "admin.token").unlink()
        server.start(port=server.port)
        assert server.admin_token != first
        with pytest.raises(KeyServiceUnauthorizedError):
            AdminClient(server.url, first).models()
        assert AdminClient(server.url, server.admin_token).models() == []
        records = json.loads(server.admin_cli("audit", "--json").stdout)["records"]
        actions = [(r["actor"], r["action"], r["target"]) for r in records if r["decision"] == "allow"]
        assert actions == [
            ("admin", "admin.create", "carol"),
            ("carol", "admin.rotate", "carol"),
            ("admin", "admin.revoke", "carol"),
        ]
        for secret in (first, carol, rotated, server.admin_token):
            assert secret not in json.dumps(records)
    finally:
        server.stop()


def test_every_admin_action_is_audited_without_secrets(ks: Server, tmp_path: Path) -> None:
    kid = unique("audited")
    published = publish(ks, tmp_path, kid)  # register
    with closing(ks.admin()) as admin:
        admin.register_model(kid, published.signer.verify_key, published.master, replace=True)  # replace
        principal = unique("aud")
        token = admin.create_token(principal)
        grant = admin.grant(principal, kid, max_uses=3)
        admin.revoke_grant(grant["id"])
        admin.revoke_tokens(principal)
        with pytest.raises(KeyServiceDeniedError):
            admin.revoke_grant(grant["id"])  # a refused admin request is audited too
    records = json.loads(ks.admin_cli("audit", "--json", "--limit", "10000").stdout)["records"]
    mine = [(r["decision"], r["action"], r["actor"], r["target"]) for r in records if kid in (r["kid"], r["target"])
            or r["target"] == principal]  # fmt: skip
    assert mine == [
        ("allow", "register", "admin", kid),
        ("allow", "replace", "admin", kid),
        ("allow", "token.create", "admin", principal),
        ("allow", "grant.create", "admin", principal),
        ("allow", "grant.revoke", "admin", principal),
        ("allow", "token.revoke", "admin", principal),
    ]
    refused = [r for r in records if r["action"] == "grant.revoke" and r["decision"] == "deny"]
    assert refused and refused[-1]["actor"] == "admin" and refused[-1]["reason"].startswith("not_found:")
    text = json.dumps(records)
    for secret in (token, ks.admin_token, json.loads(json.dumps(published.master.to_jwk()))["k"]):
        assert secret not in text
    # no route changes the audit log
    admin_headers = {"Authorization": f"Bearer {ks.admin_token}"}
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        assert httpx.request(method, f"{ks.url}/v1/audit", headers=admin_headers).status_code == 405
    assert len(json.loads(ks.admin_cli("audit", "--json", "--limit", "10000").stdout)["records"]) == len(records)


def test_audit_filters(ks: Server, tmp_path: Path) -> None:
    published = publish(ks, tmp_path, unique("filtered"))
    principal = unique("filter-user")
    ks.grant(principal, published.kid)
    load(published, ks.provider(ks.token(principal)))
    by_principal = json.loads(ks.admin_cli("audit", "--json", "--principal", principal).stdout)["records"]
    assert [r["action"] for r in by_principal] == ["grant.create", "token.create", "release"]
    by_kid = json.loads(ks.admin_cli("audit", "--json", "--kid", published.kid).stdout)["records"]
    assert [r["action"] for r in by_kid] == ["register", "grant.create", "release"]
    since = by_principal[-1]["time"]
    later = json.loads(ks.admin_cli("audit", "--json", "--kid", published.kid, "--since", str(since)).stdout)
    assert [r["action"] for r in later["records"]] == ["release"]
    iso = json.loads(ks.admin_cli("audit", "--json", "--kid", published.kid, "--since", "2099-01-01").stdout)
    assert iso["records"] == []
    assert ks.admin_cli("audit", "--since", "yesterday", check=False).returncode == 2


def test_release_still_works_and_no_secret_reaches_the_log(ks: Server, tmp_path: Path) -> None:
    published = publish(ks, tmp_path, unique("logged"))
    principal = unique("logged-user")
    ks.grant(principal, published.kid)
    token = ks.token(principal)
    load(published, ks.provider(token))
    assert httpx.get(f"{ks.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{ks.url}/readyz").json() == {"status": "ready"}
    text = log_text(ks)
    assert '"POST /v1/release" 200' in text and '"GET /readyz" 200' in text
    for secret in (token, ks.admin_token, "ctk_", "adm_", "Bearer"):
        assert secret not in text
    assert pc.MasterKey  # the package is importable alongside
