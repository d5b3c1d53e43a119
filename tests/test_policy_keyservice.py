"""The key service's remote policy runs in the same sandbox: no 403 and no audit record carries a policy value.

A real ``pycryptotensors serve`` on 127.0.0.1 with an OpenBao-style token in its environment. The hostile
remote policies are written into signed files the way an attacker-publisher would (the writer's check refuses
some of them, so the test writes them past it), registered, and asked for.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import pycryptotensors.writing.writer as writer
from _keyservice import Server, load, publish
from pycryptotensors.errors import PolicyDeniedError
from pycryptotensors.keyservice.client import TOKEN_ENV

SECRET = "bao-token-5e7c9d"
HOSTILE = {
    "token through opa.runtime": "package model\nallow := opa.runtime().env.BAO_TOKEN",
    "token in a condition": 'package model\nallow if opa.runtime().env.BAO_TOKEN == "x"',
    "principal echoed": "package model\nallow := input.principal",
    "nonce echoed": 'package model\nallow := sprintf("%v", [input.request])',
    "value in an error": "package model\nallow if to_number(input.principal) > 0",
    "crash": "package model\nf(x) := y if { y := f(x + 1) }\nallow := f(0)",
}


@pytest.fixture(scope="module")
def ks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BAO_TOKEN", SECRET)
        patch.delenv(TOKEN_ENV, raising=False)
        server = Server(tmp_path_factory.mktemp("ks") / "state").start()
    yield server
    server.stop()


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_remote_policy_is_denied_without_its_values(ks, tmp_path: Path, monkeypatch, name):
    monkeypatch.setattr(writer, "check_policy", lambda policy: None)  # an attacker's writer checks nothing
    kid = f"hostile-{abs(hash(name)) % 10**8}"
    published = publish(ks, tmp_path, kid, remote_policy=HOSTILE[name])
    principal = f"client-{kid}"
    token = ks.token(principal)
    ks.grant(principal, kid, max_uses=3)
    with pytest.raises(PolicyDeniedError) as caught:
        load(published, ks.provider(token))
    message = str(caught.value)
    assert SECRET not in message and principal not in message and "nonce" not in message
    records = [r for r in ks.audit() if r["kid"] == kid]
    assert records and records[-1]["decision"] == "deny" and records[-1]["reason"].startswith("policy_denied")
    for record in records:
        assert SECRET not in repr(record) and principal not in record["reason"]
    # the service survived and still serves a well-behaved file
    ok = publish(ks, tmp_path, f"{kid}-ok", remote_policy="package model\nallow := true")
    ks.grant(principal, ok.kid)
    assert set(load(ok, ks.provider(token))) == set(ok.tensors)
