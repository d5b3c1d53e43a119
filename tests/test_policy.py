"""The file's local Rego policy: evaluated after the signature and before any key is unwrapped."""

from __future__ import annotations

import numpy as np
import pytest

import pycryptotensors as pc
import pycryptotensors.numpy as ct_np
from pycryptotensors.policy import evaluate_policy, local_input

DATA = {"w": np.ones(8, np.float32)}


def save(tmp_path, config, local: str):
    path = tmp_path / "p.ct"
    ct_np.save_file(DATA, path, config={**config, "policy": {"local": local}})
    return path


@pytest.mark.parametrize(
    "policy",
    [
        "package model\nallow := true",
        "package model\nallow = true",
        'package model\ndefault allow := false\nallow if input.runtime.framework == "np"',
        'package model\nallow if time.now_ns() < time.parse_rfc3339_ns("2200-01-01T00:00:00+00:00")',
    ],
)
def test_allowing_policies(tmp_path, config, load_config, policy):
    assert np.array_equal(ct_np.load_file(save(tmp_path, config, policy), config=load_config)["w"], DATA["w"])


@pytest.mark.parametrize(
    "policy",
    [
        "package model\nallow := false",
        'package model\nallow if input.user.name == "nobody-has-this-name"',  # undefined
        'package model\nallow := "yes"',  # not a boolean
        'package model\nallow if time.now_ns() < time.parse_rfc3339_ns("2001-01-01T00:00:00+00:00")',  # expired
        "package model\nallow if { x := 1 / 0; x > 0 }",  # an evaluation error
    ],
)
def test_denying_policies(tmp_path, config, load_config, policy):
    path = save(tmp_path, config, policy)
    with pytest.raises(pc.PolicyDeniedError):
        ct_np.load_file(path, config=load_config)
    with pytest.raises(pc.PolicyDeniedError):
        ct_np.load(path.read_bytes(), config=load_config)


def test_policy_sees_framework_and_claims(tmp_path, config, load_config):
    policy = (
        "package model\ndefault allow := false\n"
        'allow if { input.runtime.framework == "np"; input.claims.team == "research" }'
    )
    path = save(tmp_path, config, policy)
    ring = pc.config.load_options(load_config).keyring
    allowed = pc.LoadOptions(ring, {"team": "research"})
    assert np.array_equal(ct_np.load_file(path, config=allowed)["w"], DATA["w"])
    with pytest.raises(pc.PolicyDeniedError):
        ct_np.load_file(path, config=pc.LoadOptions(ring, {"team": "sales"}))
    with pytest.raises(pc.PolicyDeniedError):
        pc.safe_open(path, "pt", config=allowed)


def test_policy_checked_before_keys_are_unwrapped(tmp_path, config, signing_key):
    """A denying policy wins over a wrong master key: no unwrap is attempted."""
    path = save(tmp_path, config, "package model\nallow := false")
    ring = pc.KeyRing([pc.generate_master_key(kid="enc-test"), signing_key.verify_key])
    with pytest.raises(pc.PolicyDeniedError):
        ct_np.load_file(path, config=ring)


@pytest.mark.parametrize("policy", ["package model\nallow if {{", "", "package other\nallow := true"])
def test_broken_policy_fails_at_save(tmp_path, config, policy):
    with pytest.raises(pc.ConfigError):
        ct_np.save_file(DATA, tmp_path / "x.ct", config={**config, "policy": {"local": policy}})
    assert list(tmp_path.iterdir()) == []


def test_input_document_shape():
    document = local_input("pt", "cpu", {"k": "v"})
    assert set(document) == {"time", "host", "user", "process", "runtime", "claims"}
    assert not document["time"]["rfc3339"].endswith("Z")
    assert evaluate_policy('package model\nallow if input.claims.k == "v"', document).allowed


def test_documented_examples_compile_and_decide():
    from pathlib import Path

    from pycryptotensors.policy import check_policy

    text = (Path(__file__).parents[1] / "docs" / "POLICY.md").read_text()
    examples = [block.split("```", 1)[0] for block in text.split("```rego\n")[1:]]
    assert len(examples) == 3
    for policy in examples:
        check_policy(policy)
    # The first expires on 2028-01-01: decided on an injected clock, one nanosecond either side of expiry.
    expiry_ns = 1830297600 * 10**9  # 2028-01-01T00:00:00Z
    assert evaluate_policy(examples[0], local_input("pt", "cpu", now_ns=expiry_ns - 1)).allowed
    late = evaluate_policy(examples[0], local_input("pt", "cpu", now_ns=expiry_ns))
    assert not late.allowed and late.status == "undefined", late  # no default: expired means no rule holds
    here = local_input("pt", "cpu")
    assert not evaluate_policy(examples[1], here).allowed  # this host is not gpu-node-7/8
    here["host"]["name"] = "gpu-node-8"
    assert evaluate_policy(examples[1], here).allowed


def test_injected_clock_reaches_rego_and_the_input_document():
    """``time.now_ns()`` in Rego is the input document's ``time.now_ns``: one clock, chosen by the caller."""
    at = 1_234_567_890_123_456_789
    document = local_input("np", "cpu", now_ns=at)
    assert document["time"] == {"now_ns": at, "rfc3339": "2009-02-13T23:31:30+00:00"}
    assert evaluate_policy(f"package model\nallow if time.now_ns() == {at}", document).allowed
    assert evaluate_policy("package model\nallow if time.now_ns() == input.time.now_ns", document).allowed
    assert not evaluate_policy(f"package model\nallow if time.now_ns() == {at + 1}", document).allowed
    # Without a document (or without an integer time in it) the engine's own clock answers.
    assert evaluate_policy("package model\nallow if time.now_ns() > 1700000000000000000", None).allowed
    assert evaluate_policy(f"package model\nallow if time.now_ns() > {at}", {"time": {"now_ns": "x"}}).allowed
