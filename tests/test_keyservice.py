"""The key service, end to end, against real ``pycryptotensors serve`` processes on 127.0.0.1.

Each server is started by a fixture (``serve --state DIR --port PORT``), polled on ``GET /v1/health`` and
terminated afterwards; the publisher's side runs the real CLI (keygen, encrypt --key-service, keyservice
register / token / grant / revoke-grant / audit) or the AdminClient, the consumer's side the library with
nothing but a client token. Every refusal is checked twice: the exception class the consumer sees, and the
"deny" record (with its reason code) that ``keyservice audit --json`` shows. Tests share one server per module
and stay independent by using their own principals and key ids.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import safetensors.numpy as st_np
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import pycryptotensors as pc
import pycryptotensors.numpy as ct_np
from _command import ERROR_PREFIX
from _keyservice import (
    Published,
    Server,
    assert_same,
    cli,
    closed_url,
    header_bytes,
    load,
    publish,
    self_signed_cert,
    tensors,
)
from pycryptotensors.errors import (
    IntegrityError,
    KeyServiceDeniedError,
    KeyServiceNotAllowedError,
    KeyServiceUnauthorizedError,
    KeyServiceUnreachableError,
    PolicyDeniedError,
    RemotePolicyDeniedError,
)
from pycryptotensors.keys.files import read_key_file, write_key_file
from pycryptotensors.keys.sources import ProvidedKeys
from pycryptotensors.keyservice.client import TOKEN_ENV, KeyServiceProvider
from pycryptotensors.keyservice.protocol import Ephemeral, b64d, publisher_request

DENY_POLICY = "package model\nallow := false\n"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(autouse=True)
def _no_ambient_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.delenv("PYCRYPTOTENSORS_ADMIN_TOKEN", raising=False)


@pytest.fixture(scope="module")
def ks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("ks") / "state").start()
    yield server
    server.stop()


def consumer_settings(directory: Path, allowed: list[str], token_file: Path | None = None, **extra: Any) -> Path:
    """A consumer's settings file: no keys at all, only a key service allow-list and (maybe) a token."""
    lines = ["key_dirs = []", "", "[key_service]", f"allowed = {json.dumps(allowed)}"]
    if token_file is not None:
        lines.append(f"token_file = {json.dumps(str(token_file))}")
    lines += [f"{name} = {json.dumps(value)}" for name, value in extra.items()]
    path = directory / f"consumer-{uuid.uuid4().hex[:6]}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def token_file(directory: Path, token: str) -> Path:
    path = directory / f"token-{uuid.uuid4().hex[:6]}"
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path


def records_for(records: list[dict[str, Any]], principal: str | None, kid: str | None) -> list[dict[str, Any]]:
    return [r for r in records if r["principal"] == principal and r["kid"] == kid]


def assert_denied_in_audit(server: Server, principal: str | None, kid: str | None, reason: str) -> dict[str, Any]:
    """The latest audit record for (principal, kid) is a denial with this reason code."""
    mine = records_for(server.audit(), principal, kid)
    assert mine, f"no audit record for {principal}/{kid}"
    last = mine[-1]
    assert last["decision"] == "deny", last
    assert last["reason"].split(":")[0] == reason, last
    return last


def unauthenticated(records: list[dict[str, Any]]) -> tuple[int, int]:
    """(rows, failures) of the refusals before authentication: they are counted on aggregated rows, one per
    source, action, reason and minute, so that they cannot flood the log."""
    mine = [
        r
        for r in records
        if r["decision"] == "deny" and r["reason"].startswith("unauthorized:") and r["principal"] is None
    ]
    assert all(r["kid"] is None for r in mine)
    return len(mine), sum(r["count"] for r in mine)


def raw_release(
    server: Server,
    header: bytes,
    token: str | None,
    ephemeral: Ephemeral | None = None,
    attestation: str | None = None,
) -> tuple[httpx.Response, Ephemeral]:
    """A release request sent by hand (protocol.Ephemeral + httpx), bypassing every client-side check."""
    ephemeral = ephemeral or Ephemeral()
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    body = ephemeral.request(header, {}, attestation).to_json()
    response = httpx.post(f"{server.url}/v1/release", json=body, headers=headers, timeout=10)
    return response, ephemeral


def granted(server: Server, published: Published, principal: str, **grant: Any) -> str:
    server.grant(principal, published.kid, **grant)
    return server.token(principal)


# ------------------------------------------------------------------------------------------------ 1. the flow


def test_end_to_end_with_only_a_token(ks: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kid = unique("e2e")
    # the publisher: keys, a plain model, encrypt naming the service, register, a token for alice, a grant
    cli("keygen", "master", tmp_path / "master.jwk", "--kid", kid)
    cli("keygen", "signing", tmp_path / "publisher.jwk", "--kid", f"{kid}-pub")
    values = tensors(1)
    st_np.save_file(values, tmp_path / "model.safetensors")
    encrypted = tmp_path / "model.ct.safetensors"
    cli(
        "encrypt", tmp_path / "model.safetensors", encrypted, "--master-key", tmp_path / "master.jwk",
        "--signing-key", tmp_path / "publisher.jwk", "--key-service", ks.url, "--quiet",
    )  # fmt: skip
    registered = json.loads(
        ks.admin_cli(
            "register", "--kid", kid, "--publisher-key", tmp_path / "publisher.pub.jwk",
            "--master-key", tmp_path / "master.jwk", "--json",
        ).stdout
    )  # fmt: skip
    assert registered["kid"] == kid and "master_key" not in registered
    alice_token = tmp_path / "alice.token"
    created = ks.admin_cli("token", "create", "alice", "--out", alice_token)
    assert stat.S_IMODE(alice_token.stat().st_mode) == 0o600
    token = alice_token.read_text().strip()
    assert token.startswith("ctk_") and token not in created.stdout + created.stderr
    grant = json.loads(ks.admin_cli("grant", "alice", kid, "--json").stdout)
    assert grant["principal"] == "alice" and grant["kid"] == kid and grant["uses"] == 0

    # the consumer: nothing but the settings file; without the key service section there is no key at all
    with pytest.raises(pc.MissingKeyError):
        ct_np.load_file(encrypted)
    settings = consumer_settings(tmp_path, [ks.url], alice_token)
    monkeypatch.setenv("PYCRYPTOTENSORS_CONFIG", str(settings))
    assert_same(ct_np.load_file(encrypted), values)

    allowed = records_for(ks.audit(), "alice", kid)
    assert [r["decision"] for r in allowed] == ["allow"]
    assert allowed[0]["reason"] == "released" and allowed[0]["model_id"] == kid
    assert allowed[0]["header_sha256"] == hashlib.sha256(header_bytes(encrypted)).hexdigest()
    assert allowed[0]["client"] == "127.0.0.1"

    # the same from a fresh interpreter: nothing in this process is needed (token from a file, then from env)
    program = (
        "import json, sys, pycryptotensors.numpy as n\n"
        "t = n.load_file(sys.argv[1])\n"
        "print(json.dumps({k: [str(v.dtype), list(v.shape), v.tolist()] for k, v in t.items()}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("CRYPTOTENSOR_KEYS", TOKEN_ENV)}
    for extra_env, config in (
        ({}, settings),
        ({TOKEN_ENV: token}, consumer_settings(tmp_path, [ks.url + "/"])),  # trailing slash: the same service
    ):
        run = subprocess.run(
            [sys.executable, "-c", program, str(encrypted)],
            env={**env, **extra_env, "PYCRYPTOTENSORS_CONFIG": str(config)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert run.returncode == 0, run.stderr
        got = json.loads(run.stdout)
        for name, value in values.items():
            assert got[name] == [str(value.dtype), list(value.shape), value.tolist()]
    assert [r["decision"] for r in records_for(ks.audit(), "alice", kid)] == ["allow"] * 3


def test_metadata_only_open_costs_no_release(ks: Server, tmp_path: Path) -> None:
    """transformers opens a file for its metadata before it loads it: that open must not spend a grant use."""
    published = publish(ks, tmp_path, unique("meta"))
    principal = unique("meta-reader")
    ks.admin_cli("grant", principal, published.kid, "--max-uses", "1")
    provider = ks.provider(ks.token(principal))
    with pc.safe_open(published.path, "np", config=pc.LoadOptions(providers=[provider])) as f:
        assert sorted(f.keys()) == sorted(published.tensors)  # the header was verified: the service vouched
        shapes = {name: f.get_slice(name).get_shape() for name in published.tensors}
        assert shapes == {name: list(value.shape) for name, value in published.tensors.items()}
    assert records_for(ks.audit(), principal, published.kid) == []
    assert grant_uses(ks, principal, published.kid) == [0]

    assert_same(load(published, provider), published.tensors)  # the real load: the one use the grant allows
    assert [r["reason"] for r in records_for(ks.audit(), principal, published.kid)] == ["released"]
    assert grant_uses(ks, principal, published.kid) == [1]


def test_publisher_key_endpoint(ks: Server, tmp_path: Path) -> None:
    published = publish(ks, tmp_path, unique("pubkey"))
    principal, stranger = unique("pk"), unique("pk-no-grant")
    token = granted(ks, published, principal)
    header = header_bytes(published.path)

    def ask(body: Any, token: str | None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return httpx.post(f"{ks.url}/v1/publisher-key", json=body, headers=headers, timeout=10)

    answer = ask(publisher_request(header), token)
    assert answer.status_code == 200, answer.text
    assert set(answer.json()) == {"kid", "publisher_key"}  # the public key only, no data key
    assert pc.parse_jwk(answer.json()["publisher_key"]).raw == published.signer.verify_key.raw

    assert ask(publisher_request(header), None).status_code == 401
    assert ask(publisher_request(header), "ctk_unknown").json()["error"] == "unauthorized"
    refused = ask(publisher_request(header), ks.token(stranger))
    assert (refused.status_code, refused.json()["error"]) == (403, "no_grant")
    assert_denied_in_audit(ks, stranger, published.kid, "no_grant")
    tampered = header.replace(b'"shape":[4,3]', b'"shape":[3,4]')
    assert ask(publisher_request(tampered), token).json()["error"] == "bad_signature"
    assert_denied_in_audit(ks, principal, published.kid, "bad_signature")
    assert ask({"version": "pycryptotensors/key-release/v1"}, token).json()["error"] == "bad_request"
    assert_denied_in_audit(ks, principal, None, "bad_request")  # no header was read, so no key id
    assert [r["decision"] for r in records_for(ks.audit(), principal, published.kid)] == ["deny"]  # answers unaudited
    assert grant_uses(ks, principal, published.kid) == [0]


def test_register_generate(ks: Server, tmp_path: Path) -> None:
    kid = unique("gen")
    cli("keygen", "signing", tmp_path / "publisher.jwk", "--kid", f"{kid}-pub")
    generated = tmp_path / "generated.jwk"
    result = ks.admin_cli(
        "register", "--kid", kid, "--publisher-key", tmp_path / "publisher.pub.jwk", "--generate", generated, "--json"
    )
    answer = json.loads(result.stdout)
    assert answer == {"kid": kid, "model_id": kid, "master_key_file": str(generated)}
    assert stat.S_IMODE(generated.stat().st_mode) == 0o600
    (master,) = read_key_file(generated)
    assert isinstance(master, pc.MasterKey) and master.kid == kid
    secret = json.loads(generated.read_text())["k"]
    assert secret not in result.stdout + result.stderr

    st_np.save_file(tensors(2), tmp_path / "model.safetensors")
    encrypted = tmp_path / "model.ct.safetensors"
    cli(
        "encrypt", tmp_path / "model.safetensors", encrypted, "--master-key", generated,
        "--signing-key", tmp_path / "publisher.jwk", "--key-service", ks.url, "--quiet",
    )  # fmt: skip
    principal = unique("gen-user")
    ks.grant(principal, kid)
    assert_same(load(encrypted, ks.provider(ks.token(principal))), tensors(2))


# ------------------------------------------------------------------------------------------------ 2. attacks


def test_no_token(ks: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    published = publish(ks, tmp_path, unique("notoken"))
    ks.grant(unique("someone"), published.kid)
    before = ks.audit()
    with pytest.raises(KeyServiceUnauthorizedError) as caught:
        load(published, ks.provider(None))
    assert caught.value.reason == "unauthorized"
    monkeypatch.setenv("PYCRYPTOTENSORS_CONFIG", str(consumer_settings(tmp_path, [ks.url])))
    with pytest.raises(KeyServiceUnauthorizedError):
        ct_np.load_file(published.path)
    assert ks.audit() == before  # refused locally: nothing was sent

    response, _ = raw_release(ks, header_bytes(published.path), None)  # sent anyway, without a token
    assert response.status_code == 401 and response.json()["error"] == "unauthorized"
    assert "sealed" not in response.json()
    rows, failures = unauthenticated(before)
    after = ks.audit()
    assert unauthenticated(after)[1] == failures + 1 and unauthenticated(after)[0] <= rows + 1


def test_wrong_token(ks: Server, tmp_path: Path) -> None:
    published = publish(ks, tmp_path, unique("wrongtoken"))
    ks.grant(unique("someone"), published.kid)
    before = ks.audit()
    for token in ("ctk_" + uuid.uuid4().hex, ks.admin_token):  # a made-up token; the admin token is no client token
        with pytest.raises(KeyServiceUnauthorizedError) as caught:
            load(published, ks.provider(token))
        assert caught.value.reason == "unauthorized"
    after = ks.audit()
    assert unauthenticated(after)[1] == unauthenticated(before)[1] + 2
    assert len(after) <= len(before) + 1  # one counted row at most, however many failures


def test_revoked_token(ks: Server, tmp_path: Path) -> None:
    published = publish(ks, tmp_path, unique("revtoken"))
    principal = unique("revoked-user")
    token = granted(ks, published, principal)
    assert_same(load(published, ks.provider(token)), published.tensors)
    revoked = json.loads(ks.admin_cli("token", "revoke", principal, "--json").stdout)
    assert revoked == {"principal": principal, "revoked": 1}
    before = unauthenticated(ks.audit())[1]
    with pytest.raises(KeyServiceUnauthorizedError):
        load(published, ks.provider(token))
    assert unauthenticated(ks.audit())[1] == before + 1
    # a new token for the same principal works again (the grant was not touched)
    assert_same(load(published, ks.provider(ks.token(principal))), published.tensors)


def test_expired_grant(ks: Server, tmp_path: Path) -> None:
    published = publish(ks, tmp_path, unique("expired"))
    principal, other = unique("late"), unique("early")
    ks.admin_cli("grant", principal, published.kid, "--until", "2020-01-01T00:00:00+00:00")
    ks.admin_cli("grant", other, published.kid, "--until", "2099-01-01T00:00:00+00:00")
    with pytest.raises(KeyServiceDeniedError) as caught:
        load(published, ks.provider(ks.token(principal)))
    assert caught.value.reason == "grant_expired" and not isinstance(caught.value, PolicyDeniedError)
    assert_denied_in_audit(ks, principal, published.kid, "grant_expired")
    assert_same(load(published, ks.provider(ks.token(other))), published.tensors)


def test_used_up_grant(ks: Server, tmp_path: Path) -> None:
    published = publish(ks, tmp_path, unique("usedup"))
    principal = unique("once")
    ks.admin_cli("grant", principal, published.kid, "--max-uses", "1")
    provider = ks.provider(ks.token(principal))
    assert_same(load(published, provider), published.tensors)
    with pytest.raises(KeyServiceDeniedError) as caught:
        load(published, provider)
    assert caught.value.reason == "grant_exhausted"
    assert_denied_in_audit(ks, principal, published.kid, "grant_exhausted")
    assert [r["decision"] for r in records_for(ks.audit(), principal, published.kid)] == ["allow", "deny"]


def test_revoked_grant(ks: Server, tmp_path: Path) -> None:
    published = publish(ks, tmp_path, unique("revgrant"))
    principal = unique("revoked-grant")
    grant = json.loads(ks.admin_cli("grant", principal, published.kid, "--json").stdout)
    provider = ks.provider(ks.token(principal))
    assert_same(load(published, provider), published.tensors)
    ks.admin_cli("revoke-grant", grant["id"])
    with pytest.raises(KeyServiceDeniedError) as caught:
        load(published, provider)
    assert caught.value.reason == "grant_revoked"
    assert_denied_in_audit(ks, principal, published.kid, "grant_revoked")


def test_key_id_of_another_model(ks: Server, tmp_path: Path) -> None:
    model_a = publish(ks, tmp_path, unique("model-a"), seed=3)
    model_b = publish(ks, tmp_path, unique("model-b"), seed=4)
    principal = unique("a-only")
    token = granted(ks, model_a, principal)
    assert_same(load(model_a, ks.provider(token)), model_a.tensors)
    with pytest.raises(KeyServiceDeniedError) as caught:
        load(model_b, ks.provider(token))
    assert caught.value.reason == "no_grant"
    assert_denied_in_audit(ks, principal, model_b.kid, "no_grant")


def test_unregistered_key_id(ks: Server, tmp_path: Path) -> None:
    published = publish(ks, tmp_path, unique("unregistered"), register=False)
    principal = unique("hopeful")
    token = granted(ks, published, principal)
    with pytest.raises(KeyServiceDeniedError) as caught:
        load(published, ks.provider(token))
    assert caught.value.reason == "unknown_key"
    assert_denied_in_audit(ks, principal, published.kid, "unknown_key")


def test_signature_of_another_publisher(ks: Server, tmp_path: Path) -> None:
    original = pc.generate_signing_key(kid="original-publisher")
    impostor = pc.generate_signing_key(kid="original-publisher")  # even the same kid: the key decides
    published = publish(ks, tmp_path, unique("impostor"), signer=impostor, registered_publisher=original.verify_key)
    principal = unique("victim")
    token = granted(ks, published, principal)
    with pytest.raises(KeyServiceDeniedError) as caught:
        load(published, ks.provider(token))
    assert caught.value.reason == "bad_signature"
    assert_denied_in_audit(ks, principal, published.kid, "bad_signature")


def test_tampered_header(ks: Server, tmp_path: Path) -> None:
    published = publish(ks, tmp_path, unique("tampered"))
    principal = unique("tamperer")
    token = granted(ks, published, principal)
    original = header_bytes(published.path)
    assert original.count(b'"shape":[4,3]') == 1
    tampered = original.replace(b'"shape":[4,3]', b'"shape":[3,4]')  # still a valid header, same length
    data = published.path.read_bytes()
    copy = tmp_path / "tampered.safetensors"
    copy.write_bytes(data[:8] + tampered + data[8 + len(original) :])

    with pytest.raises(KeyServiceDeniedError) as caught:  # no local publisher key: the service verifies
        load(copy, ks.provider(token))
    assert caught.value.reason == "bad_signature"

    response, _ = raw_release(ks, tampered, token)  # the service itself refuses it
    assert response.status_code == 403, response.text
    assert response.json()["error"] == "bad_signature" and "sealed" not in response.json()
    record = assert_denied_in_audit(ks, principal, published.kid, "bad_signature")
    assert record["header_sha256"] == hashlib.sha256(tampered).hexdigest()
    assert_same(load(published, ks.provider(token)), published.tensors)  # the untouched file still loads


def test_remote_policy_denies(ks: Server, tmp_path: Path) -> None:
    published = publish(ks, tmp_path, unique("policy-no"), remote_policy=DENY_POLICY)
    principal = unique("refused")
    token = granted(ks, published, principal, max_uses=5)
    with pytest.raises(RemotePolicyDeniedError) as caught:
        load(published, ks.provider(token))
    assert caught.value.reason == "policy_denied"
    assert isinstance(caught.value, PolicyDeniedError) and isinstance(caught.value, KeyServiceDeniedError)
    assert_denied_in_audit(ks, principal, published.kid, "policy_denied")


def test_remote_policy_principal_and_claims(ks: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = (
        "package model\n"
        "default allow := false\n"
        'allow if {\n  input.principal == "alice"\n  input.claims.team == "research"\n}\n'
    )
    published = publish(ks, tmp_path, unique("policy-who"), remote_policy=policy)
    bob = unique("bob")
    alice_token = granted(ks, published, "alice")
    bob_token = granted(ks, published, bob)

    def load_as(token: str, claims: dict[str, Any] | None) -> dict[str, Any]:
        monkeypatch.setenv(
            "PYCRYPTOTENSORS_CONFIG", str(consumer_settings(tmp_path, [ks.url], token_file(tmp_path, token)))
        )
        return ct_np.load_file(published.path, config=None if claims is None else {"policy_input": claims})

    assert_same(load_as(alice_token, {"team": "research"}), published.tensors)
    for token, principal, claims in (
        (alice_token, "alice", {"team": "sales"}),
        (alice_token, "alice", None),
        (bob_token, bob, {"team": "research"}),
    ):
        with pytest.raises(RemotePolicyDeniedError):
            load_as(token, claims)
        assert_denied_in_audit(ks, principal, published.kid, "policy_denied")
    decisions = [r["decision"] for r in records_for(ks.audit(), "alice", published.kid)]
    assert decisions == ["allow", "deny", "deny"]


def test_sealed_response_replayed_to_another_client(ks: Server, tmp_path: Path) -> None:
    published = publish(ks, tmp_path, unique("replay"))
    token = granted(ks, published, unique("replayer"))
    header = header_bytes(published.path)
    response, mine = raw_release(ks, header, token)
    assert response.status_code == 200, response.text
    sealed = b64d(response.json()["sealed"], "sealed")
    opened = mine.open(sealed, header)  # the client that asked can open it
    assert set(opened["data_keys"]) == set(published.tensors)
    with pytest.raises(IntegrityError):
        Ephemeral().open(sealed, header)  # another client's ephemeral key cannot
    other = publish(ks, tmp_path, unique("replay-other"))
    with pytest.raises(IntegrityError):
        mine.open(sealed, header_bytes(other.path))  # nor can it be passed off as the answer for another header
    flipped = bytearray(sealed)
    flipped[-1] ^= 1
    with pytest.raises(IntegrityError):
        mine.open(bytes(flipped), header)


def test_service_outside_the_allow_list_is_never_contacted(
    ks: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    published = publish(ks, tmp_path, unique("notallowed"))
    token = granted(ks, published, unique("careful"))
    before = ks.audit()
    with pytest.raises(KeyServiceNotAllowedError) as caught:
        load(published, KeyServiceProvider([closed_url()], token, retries=0))
    assert caught.value.reason == "not_allowed"
    settings = consumer_settings(tmp_path, [closed_url(), ks.url + ".evil.example"], token_file(tmp_path, token))
    monkeypatch.setenv("PYCRYPTOTENSORS_CONFIG", str(settings))
    with pytest.raises(KeyServiceNotAllowedError):
        ct_np.load_file(published.path)
    assert ks.audit() == before  # the service received nothing


def test_providers_are_asked_in_order(ks: Server, tmp_path: Path) -> None:
    """A provider listed first answers first, even when a later one could vouch: the key service client here,
    which would refuse the file (its service is not in this client's allow-list), is never asked."""
    published = publish(ks, tmp_path, unique("order"))

    class Local:
        def provide(self, request: Any) -> ProvidedKeys:
            return ProvidedKeys(verify_key=published.signer.verify_key, master_key=published.master)

    refusing = KeyServiceProvider([], "ctk_unused")
    in_order = pc.LoadOptions(providers=[Local(), refusing])
    assert_same(ct_np.load_file(published.path, config=in_order), published.tensors)
    with pytest.raises(KeyServiceNotAllowedError):
        ct_np.load_file(published.path, config=pc.LoadOptions(providers=[refusing, Local()]))


def test_a_release_that_failed_is_asked_again(ks: Server, tmp_path: Path) -> None:
    """The release waits for the first encrypted read; if the service cannot be reached then, the caller
    sees that error (not a missing key), and the next read asks again."""
    published = publish(ks, tmp_path, unique("retry"))
    real = ks.provider(granted(ks, published, unique("retrier")))

    class OnceUnreachable:
        failures = 1

        def vouch(self, request: Any) -> Any:
            return real.vouch(request)

        def provide(self, request: Any) -> Any:
            if self.failures:
                self.failures -= 1
                raise KeyServiceUnreachableError("key service unreachable (simulated)")
            return real.provide(request)

    name = next(iter(published.tensors))
    with pc.safe_open(published.path, "np", config=pc.LoadOptions(providers=[OnceUnreachable()])) as f:
        with pytest.raises(KeyServiceUnreachableError):
            f.get_tensor(name)
        assert_same({name: f.get_tensor(name)}, {name: published.tensors[name]})


class _FlakyHandler(http.server.BaseHTTPRequestHandler):
    hits = 0
    status = 503

    def do_POST(self) -> None:
        type(self).hits += 1
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_unreachable_service(tmp_path: Path) -> None:
    url = closed_url()
    published = publish(None, tmp_path, unique("unreachable"), key_service=url)
    provider = KeyServiceProvider([url], "ctk_whatever", timeout=0.5, retries=2, backoff=0.01)
    started = time.monotonic()
    with pytest.raises(KeyServiceUnreachableError) as caught:
        load(published, provider)
    assert time.monotonic() - started < 10
    assert caught.value.reason == "unreachable" and "3 tries" in str(caught.value)

    # a service that answers 503 / 429 is asked exactly retries + 1 times
    for status in (503, 429):
        handler = type("Handler", (_FlakyHandler,), {"hits": 0, "status": status})
        stub = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=stub.serve_forever, daemon=True)
        thread.start()
        try:
            url = f"http://127.0.0.1:{stub.server_address[1]}"
            flaky = publish(None, tmp_path, unique(f"flaky{status}"), key_service=url)
            provider = KeyServiceProvider([url], "ctk_whatever", timeout=2, retries=2, backoff=0.01)
            with pytest.raises(KeyServiceUnreachableError):
                load(flaky, provider)
            assert handler.hits == 3
        finally:
            stub.shutdown()
            stub.server_close()


# ------------------------------------------------------------------------------------- 3. restart, concurrency


def test_state_survives_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "state"
    server = Server(state).start()
    try:
        admin_token = server.admin_token
        published = publish(server, tmp_path, unique("restart"))
        principal = unique("survivor")
        token = granted(server, published, principal, max_uses=3)
        assert_same(load(published, server.provider(token)), published.tensors)
        server.stop()

        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        for secret in ("admin.token", "root.key"):
            assert stat.S_IMODE((state / secret).stat().st_mode) == 0o600
        server.start(port=server.port)  # the file names this URL
        assert server.admin_token == admin_token  # not replaced on restart
        provider = server.provider(token)
        assert_same(load(published, provider), published.tensors)
        assert_same(load(published, provider), published.tensors)
        with pytest.raises(KeyServiceDeniedError) as caught:  # the use count survived too
            load(published, provider)
        assert caught.value.reason == "grant_exhausted"
        decisions = [r["decision"] for r in records_for(server.audit(), principal, published.kid)]
        assert decisions == ["allow", "allow", "allow", "deny"]
    finally:
        server.stop()


def grant_uses(server: Server, principal: str, kid: str) -> list[int]:
    db = sqlite3.connect(f"file:{server.state / 'keyservice.sqlite3'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT uses FROM grants WHERE principal = ? AND kid = ?", (principal, kid)).fetchall()
    finally:
        db.close()
    return [row[0] for row in rows]


def burst(published: Published, server: Server, token: str, n: int) -> list[Any]:
    """n threads, each loading the file through its own provider, released at once."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def one(i: int) -> None:
        provider = server.provider(token, retries=3, timeout=30)
        barrier.wait()
        try:
            results[i] = load(published, provider)
        except Exception as error:  # collected and checked by the test
            results[i] = error

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


def test_concurrent_burst(ks: Server, tmp_path: Path) -> None:
    published = publish(ks, tmp_path, unique("burst"))
    principal = unique("crowd")
    token = granted(ks, published, principal)
    results = burst(published, ks, token, 30)
    errors = [r for r in results if not isinstance(r, dict)]
    assert not errors, errors
    for result in results:
        assert_same(result, published.tensors)
    mine = records_for(ks.audit(), principal, published.kid)
    assert len(mine) == 30 and all(r["decision"] == "allow" and r["reason"] == "released" for r in mine)
    assert grant_uses(ks, principal, published.kid) == [30]


def test_concurrent_burst_against_max_uses(ks: Server, tmp_path: Path) -> None:
    published = publish(ks, tmp_path, unique("burst-max"))
    principal = unique("crowd-max")
    token = granted(ks, published, principal, max_uses=20)
    results = burst(published, ks, token, 30)
    loaded = [r for r in results if isinstance(r, dict)]
    refused = [r for r in results if not isinstance(r, dict)]
    assert len(loaded) == 20 and len(refused) == 10, refused
    for result in loaded:
        assert_same(result, published.tensors)
    for error in refused:
        assert isinstance(error, KeyServiceDeniedError) and error.reason == "grant_exhausted", repr(error)
    mine = records_for(ks.audit(), principal, published.kid)
    assert len(mine) == 30
    assert sum(r["decision"] == "allow" for r in mine) == 20
    denied = [r for r in mine if r["decision"] == "deny"]
    assert len(denied) == 10 and all(r["reason"].startswith("grant_exhausted:") for r in denied)
    assert grant_uses(ks, principal, published.kid) == [20]


# ------------------------------------------------------------------------------------------------ 4. attestation

ISSUER = "https://attest.test.example"
AUDIENCE = "https://keys.test.example"
ATTESTATION_POLICY = (
    "package model\n"
    "default allow := false\n"
    'allow if {\n  input.attestation.tee == "sev-snp"\n  input.attestation.debug == false\n'
    "  input.attestation.nonce == input.request.binding\n}\n"  # the example of KEYSERVICE.md
)


@pytest.fixture(scope="module")
def attested(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    directory = tmp_path_factory.mktemp("attested")
    keys = {"att-ed": Ed25519PrivateKey.generate(), "att-ec": ec.generate_private_key(ec.SECP256R1())}
    jwks = {
        "keys": [
            {**jwt.algorithms.OKPAlgorithm.to_jwk(keys["att-ed"].public_key(), as_dict=True), "kid": "att-ed"},
            {**jwt.algorithms.ECAlgorithm.to_jwk(keys["att-ec"].public_key(), as_dict=True), "kid": "att-ec"},
        ]
    }
    (directory / "jwks.json").write_text(json.dumps(jwks))
    server = Server(
        directory / "state", "--attestation-jwks", directory / "jwks.json", "--attestation-issuer", ISSUER,
        "--attestation-audience", AUDIENCE,
    ).start()  # fmt: skip
    try:
        published = publish(server, directory, unique("tee"), remote_policy=ATTESTATION_POLICY)
        yield {"server": server, "keys": keys, "published": published}
    finally:
        server.stop()


def attestation_token(key: Any, kid: str | None = "att-ed", **claims: Any) -> str:
    now = int(time.time())
    document = {"iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300, "tee": "sev-snp", "debug": False}
    document.update(claims)
    document = {k: v for k, v in document.items() if v is not None}
    algorithm = "EdDSA" if isinstance(key, Ed25519PrivateKey) else "ES256"
    return jwt.encode(document, key, algorithm=algorithm, headers={"kid": kid} if kid else None)


def _evidence(case: str, keys: dict[str, Any], binding: str) -> str | None:
    """The evidence a client sends for ``case``; a good token names the request's binding in its nonce."""
    ed, p256, now = keys["att-ed"], keys["att-ec"], int(time.time())
    unsigned = {"iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300, "tee": "sev-snp", "debug": False}
    bound = {"nonce": binding}
    return {
        "EdDSA": lambda: attestation_token(ed, **bound),
        "ES256": lambda: attestation_token(p256, "att-ec", **bound),
        "EdDSA without kid": lambda: attestation_token(ed, kid=None, **bound),
        "ES256 without kid": lambda: attestation_token(p256, kid=None, **bound),  # tried against each trusted key
        "no evidence": lambda: None,
        "debug enclave": lambda: attestation_token(ed, debug=True, **bound),
        "another TEE": lambda: attestation_token(ed, tee="tdx", **bound),
        "no debug claim": lambda: attestation_token(ed, debug=None, **bound),
        "expired": lambda: attestation_token(ed, iat=now - 7200, exp=now - 3600, **bound),
        "wrong issuer": lambda: attestation_token(ed, iss="https://evil.example", **bound),
        "wrong audience": lambda: attestation_token(ed, aud="https://another-service.example", **bound),
        "no audience": lambda: attestation_token(ed, aud=None, **bound),
        "not bound": lambda: attestation_token(ed),
        "bound to another request": lambda: attestation_token(ed, nonce=binding[::-1]),
        "wrong key": lambda: attestation_token(Ed25519PrivateKey.generate(), **bound),
        "unknown kid": lambda: attestation_token(ed, kid="att-other", **bound),
        "ES256 under the EdDSA kid": lambda: attestation_token(p256, kid="att-ed", **bound),
        "EdDSA under the ES256 kid": lambda: attestation_token(ed, kid="att-ec", **bound),
        "no expiry": lambda: attestation_token(ed, exp=None, **bound),
        "unsigned": lambda: jwt.encode({**unsigned, **bound}, None, algorithm="none"),
        "garbage": lambda: "not-a-jwt",
    }[case]()


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("EdDSA", None),
        ("ES256", None),
        ("EdDSA without kid", None),
        ("ES256 without kid", None),
        ("no evidence", "policy_denied"),
        ("debug enclave", "policy_denied"),
        ("another TEE", "policy_denied"),
        ("no debug claim", "policy_denied"),
        ("expired", "attestation_invalid"),
        ("wrong issuer", "attestation_invalid"),
        ("wrong audience", "attestation_invalid"),
        ("no audience", "attestation_invalid"),
        ("not bound", "attestation_invalid"),
        ("bound to another request", "attestation_invalid"),
        ("wrong key", "attestation_invalid"),
        ("unknown kid", "attestation_invalid"),
        ("ES256 under the EdDSA kid", "attestation_invalid"),
        ("EdDSA under the ES256 kid", "attestation_invalid"),
        ("no expiry", "attestation_invalid"),
        ("unsigned", "attestation_invalid"),
        ("garbage", "attestation_invalid"),
    ],
)
def test_attestation(attested: dict[str, Any], tmp_path: Path, case: str, reason: str | None) -> None:
    server: Server = attested["server"]
    published: Published = attested["published"]
    principal = unique("enclave")
    token = granted(server, published, principal)
    provider = server.provider(token, attestation=lambda binding: _evidence(case, attested["keys"], binding))
    if reason is None:
        assert_same(load(published, provider), published.tensors)
        assert [r["decision"] for r in records_for(server.audit(), principal, published.kid)] == ["allow"]
        return
    expected = RemotePolicyDeniedError if reason == "policy_denied" else KeyServiceDeniedError
    with pytest.raises(expected) as caught:
        load(published, provider)
    assert caught.value.reason == reason
    if reason != "policy_denied":
        assert not isinstance(caught.value, PolicyDeniedError)
    assert_denied_in_audit(server, principal, published.kid, reason)


def test_replayed_attestation_token_is_refused(attested: dict[str, Any]) -> None:
    """A token captured from one release (bound to its header, ephemeral key and nonce) is refused for any other
    request: another ephemeral key, another principal, or the same principal again. The service checks the
    binding; the policy documented in KEYSERVICE.md checks it too."""
    server: Server = attested["server"]
    published: Published = attested["published"]
    seen: list[tuple[str, str]] = []

    def evidence(binding: str) -> str:
        token = attestation_token(attested["keys"]["att-ed"], nonce=binding)
        seen.append((binding, token))
        return token

    first = unique("captured")
    assert_same(load(published, server.provider(granted(server, published, first), attestation=evidence)),
                published.tensors)  # fmt: skip
    ((_, captured),) = seen
    for principal in (first, unique("replayer")):
        token = granted(server, published, principal) if principal != first else server.token(first)
        provider = server.provider(token, attestation=lambda _binding: captured)
        with pytest.raises(KeyServiceDeniedError) as caught:
            load(published, provider)
        assert caught.value.reason == "attestation_invalid" and "bind" in str(caught.value)
        record = assert_denied_in_audit(server, principal, published.kid, "attestation_invalid")
        assert captured not in json.dumps(record)
    # sent by hand with the same ephemeral key but a fresh nonce: still another request
    response, _ = raw_release(server, header_bytes(published.path), server.token(first), attestation=captured)
    assert (response.status_code, response.json()["error"]) == (403, "attestation_invalid")


def test_attestation_sent_to_a_service_that_verifies_none(ks: Server, tmp_path: Path) -> None:
    published = publish(ks, tmp_path, unique("no-verifier"))
    principal = unique("eager")
    token = granted(ks, published, principal)
    evidence = attestation_token(Ed25519PrivateKey.generate())
    with pytest.raises(KeyServiceDeniedError) as caught:
        load(published, ks.provider(token, attestation=lambda: evidence))
    assert caught.value.reason == "attestation_invalid"
    assert_denied_in_audit(ks, principal, published.kid, "attestation_invalid")


# -------------------------------------------------------------------------------------------------------- 5. TLS


def test_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = self_signed_cert(tmp_path)
    server = Server(tmp_path / "state", "--tls-cert", cert, "--tls-key", key, tls_ca=cert).start()
    try:
        assert server.url.startswith("https://")
        kid = unique("tls")
        published = publish(server, tmp_path, kid, register=False)
        write_key_file(tmp_path / "master.jwk", published.master)
        write_key_file(tmp_path / "publisher.pub.jwk", published.signer.verify_key)
        server.admin_cli(  # the admin CLI over TLS, verified with --ca-file
            "register", "--kid", kid, "--publisher-key", tmp_path / "publisher.pub.jwk",
            "--master-key", tmp_path / "master.jwk",
        )  # fmt: skip
        principal = unique("tls-user")
        token = granted(server, published, principal)

        assert_same(load(published, KeyServiceProvider([server.url], token, verify=str(cert))), published.tensors)
        monkeypatch.setenv(
            "PYCRYPTOTENSORS_CONFIG",
            str(consumer_settings(tmp_path, [server.url], token_file(tmp_path, token), ca_file=str(cert))),
        )
        assert_same(ct_np.load_file(published.path), published.tensors)

        before = len(server.audit())
        with pytest.raises(KeyServiceUnreachableError):  # the system CAs do not know this certificate
            load(published, KeyServiceProvider([server.url], token, retries=0, timeout=5))
        monkeypatch.setenv(
            "PYCRYPTOTENSORS_CONFIG",
            str(consumer_settings(tmp_path, [server.url], token_file(tmp_path, token), retries=0)),
        )
        with pytest.raises(KeyServiceUnreachableError):
            ct_np.load_file(published.path)
        plain = cli("keyservice", "--url", server.url, "--admin-token-file", server.admin_token_file, "audit",
                    check=False)  # fmt: skip
        assert plain.returncode == 5 and plain.stderr.startswith(ERROR_PREFIX) and "Traceback" not in plain.stderr
        assert len(server.audit()) == before  # no request got through without a verified TLS connection
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------- 6. CLI errors


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, *secrets: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERROR_PREFIX), result.stderr
    assert "Traceback" not in result.stderr
    if "--json" in result.args:  # --json commands report the error as JSON on stdout too
        document = json.loads(result.stdout)
        assert document["ok"] is False and document["error"]["exit_code"] == code, document
    else:
        assert result.stdout == ""
    for secret in secrets:
        assert secret not in result.stdout + result.stderr


def test_admin_cli_errors(ks: Server, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.token"
    wrong.write_text("adm_" + uuid.uuid4().hex + "\n")
    client_token = ks.token(unique("not-an-admin"))
    as_client = token_file(tmp_path, client_token)
    cli("keygen", "signing", tmp_path / "publisher.jwk")
    cli("keygen", "master", tmp_path / "master.jwk")
    actions = [
        ["audit"],
        ["audit", "--json"],
        ["token", "create", "mallory"],
        ["token", "revoke", "alice"],
        ["grant", "mallory", "some-kid"],
        ["revoke-grant", "0123456789abcdef"],
        ["register", "--kid", "x", "--publisher-key", tmp_path / "publisher.pub.jwk", "--master-key",
         tmp_path / "master.jwk"],
    ]  # fmt: skip
    for token, tried in ((wrong, actions), (as_client, actions[:3])):
        for action in tried:
            result = cli("keyservice", "--url", ks.url, "--admin-token-file", token, *action, check=False)
            assert_one_line_error(result, 5, token.read_text().strip())

    unreachable = cli("keyservice", "--url", closed_url(), "--admin-token-file", ks.admin_token_file, "audit",
                      check=False)  # fmt: skip
    assert_one_line_error(unreachable, 5, ks.admin_token)
    no_such_grant = ks.admin_cli("revoke-grant", "0123456789abcdef", check=False)
    assert_one_line_error(no_such_grant, 5, ks.admin_token)
    bad_date = ks.admin_cli("grant", "someone", "some-kid", "--until", "next tuesday", check=False)
    assert_one_line_error(bad_date, 2, ks.admin_token)  # an invalid option value: usage
    no_token = cli("keyservice", "--url", ks.url, "audit", check=False)
    assert_one_line_error(no_token, 2)  # no admin token given: a usage error (the option is required)


def test_health_and_unknown_routes(ks: Server) -> None:
    assert httpx.get(f"{ks.url}/v1/health").json() == {"status": "ok"}
    assert httpx.get(f"{ks.url}/v1/audit").status_code == 401  # admin routes need the admin token
    assert httpx.post(f"{ks.url}/v1/release", content=b"not json").status_code == 401
    response = httpx.post(
        f"{ks.url}/v1/release", content=b"{not json", headers={"Authorization": f"Bearer {ks.token(unique('x'))}"}
    )
    assert response.status_code == 400 and response.json()["error"] == "bad_request"
    admin = {"Authorization": f"Bearer {ks.admin_token}"}
    assert httpx.get(f"{ks.url}/v1/audit?limit=2", headers=admin).status_code == 200
    malformed = httpx.get(f"{ks.url}/v1/audit?limit=many", headers=admin)
    assert malformed.status_code == 400, malformed.status_code  # a malformed query is the caller's error, not a 500


def test_registering_a_key_id_twice_needs_replace(ks: Server, tmp_path: Path) -> None:
    """Re-registering silently would strand every file encrypted under the old master key."""
    published = publish(ks, tmp_path, unique("twice"))
    other = pc.generate_master_key(kid=published.kid)
    with closing(ks.admin()) as admin:
        with pytest.raises(KeyServiceDeniedError) as caught:
            admin.register_model(published.kid, published.signer.verify_key, other)
        assert caught.value.reason == "conflict"
        token = granted(ks, published, unique("twice-user"), max_uses=5)
        assert_same(load(published, ks.provider(token)), published.tensors)  # the old key still serves
        admin.register_model(published.kid, published.signer.verify_key, other, replace=True)
    with pytest.raises(KeyServiceDeniedError) as unwrap:
        load(published, ks.provider(token))
    assert unwrap.value.reason == "unwrap_failed"


def test_policy_can_bind_attestation_to_the_request(ks: Server, tmp_path: Path) -> None:
    """input.request carries the nonce and ephemeral key, so evidence can be required to name them."""
    policy = (
        "package model\ndefault allow := false\n"
        "allow if { count(input.request.nonce) == 24; input.request.ephemeral_key }"
    )
    published = publish(ks, tmp_path, unique("bound"), remote_policy=policy)
    token = granted(ks, published, unique("bound-user"), max_uses=5)
    assert_same(load(published, ks.provider(token)), published.tensors)
    # The denying side: evidence (here the policy itself) naming another request's nonce or key is refused.
    for other in ('input.request.nonce == "AAAAAAAAAAAAAAAAAAAAAAAA"', 'input.request.ephemeral_key == "x"'):
        bound = publish(ks, tmp_path, unique("unbound"), remote_policy=(
            f"package model\ndefault allow := false\nallow if {{ input.request.ephemeral_key; {other} }}"))
        user = granted(ks, bound, unique("unbound-user"), max_uses=5)
        with pytest.raises(RemotePolicyDeniedError) as denied:
            load(bound, ks.provider(user))
        assert denied.value.reason == "policy_denied", denied.value


def test_grant_until_without_a_zone_means_utc(ks: Server, tmp_path: Path) -> None:
    published = publish(ks, tmp_path, unique("utc"))
    with closing(ks.admin()) as admin:
        grant = admin.grant(unique("utc-user"), published.kid, not_after="2030-01-01T00:00:00")
    assert grant["not_after"] == 1893456000.0
