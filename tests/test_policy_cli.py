"""``pycryptotensors policy lint / test / explain`` (in process, through ``cli.app.main``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import pycryptotensors as pc
import pycryptotensors.numpy as ct_np
from _filecraft import POLICY, edit_inner
from pycryptotensors.cli.app import main
from pycryptotensors.keys.files import write_key_file


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def lint_findings(capsys, tmp_path: Path, policy: str) -> tuple[int, dict]:
    path = tmp_path / "p.rego"
    path.write_text(policy, encoding="utf-8")
    code, out, _ = run(capsys, "policy", "lint", path, "--json")
    return code, json.loads(out)


def messages(report: dict, level: str) -> str:
    return " | ".join(f["message"] for f in report["findings"] if f["level"] == level)


def test_lint_good_policy(capsys, tmp_path):
    code, report = lint_findings(
        capsys,
        tmp_path,
        "package model\ndefault allow := false\n"
        'allow if time.now_ns() < time.parse_rfc3339_ns("2200-01-01T00:00:00Z")\n',
    )
    assert code == 0 and report["ok"] and report["here"]["allowed"]
    assert "Rego v1" in messages(report, "info") and "2200-01-01T00:00:00Z is in the future" in messages(report, "info")


def test_lint_v0_shows_the_v1_form(capsys, tmp_path):
    code, report = lint_findings(capsys, tmp_path, "package model\nallow { true }\n")
    assert code == 6 and not report["ok"] and "Rego v0" in messages(report, "error")
    assert "allow if { ... }" in messages(report, "error")


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("package model\nallow := opa.runtime()", "unavailable to model policies: opa.runtime"),
        ('package model\nallow if http.send({"url": "x"}).status_code == 200', "http.send"),
        ("package model\nallow if no.such_builtin(1)", "no.such_builtin is not a builtin"),
        ("package model\nallow := false", "allow can never be true"),
        ("package model\nx := true", "no rule defines allow"),
        ("package other\nallow := true", "must be 'package model'"),
        ('package model\nallow if time.parse_rfc3339_ns("2028-01-01") > 0', "not an RFC 3339 timestamp"),
        ("package model\nallow if {", "does not compile"),
    ],
)
def test_lint_errors(capsys, tmp_path, policy, expected):
    code, report = lint_findings(capsys, tmp_path, policy)
    assert code == 6 and expected in messages(report, "error"), report


def test_lint_warnings(capsys, tmp_path):
    code, report = lint_findings(
        capsys,
        tmp_path,
        'package model\nallow if {\n  net.cidr_contains("10.0.0.0/8", "10.1.2.3")\n'
        '  time.now_ns() > time.parse_rfc3339_ns("2001-01-01T00:00:00+00:00")\n}\n',
    )
    assert code == 0
    warnings = messages(report, "warning")
    assert "net.cidr_contains is missing from the reference" in warnings and "is in the past" in warnings
    assert "no 'default allow := false'" in messages(report, "info")


def test_policy_test_explains_undefined(capsys, tmp_path):
    path = tmp_path / "p.rego"
    path.write_text(
        'package model\nallow if {\n  input.claims.team == "research"\n  input.runtime.framework == "np"\n}\n'
        'allow if input.host.name == "gpu-node-7"\n'
    )
    code, out, _ = run(capsys, "policy", "test", path, "--claims", '{"team": "research"}', "--framework", "pt")
    assert code == 6 and out.startswith("denied: data.model.allow is undefined")
    assert "rule at line 2: stopped at line 4" in out and "rule at line 6: stopped at line 6" in out
    assert "default allow := false" in out


def test_policy_test_refuses_v0(capsys, tmp_path):
    path = tmp_path / "p.rego"
    path.write_text("package model\nallow { true }\n")
    code, _, err = run(capsys, "policy", "test", path)
    assert code == 2 and "Rego v0" in err and "allow if { ... }" in err


@pytest.fixture
def signed(tmp_path):
    master, signer = pc.generate_master_key(kid="m"), pc.generate_signing_key(kid="s")
    write_key_file(tmp_path / "pub.jwk", signer.verify_key)
    path = tmp_path / "f.ct"
    policy = "package model\ndefault allow := false\nallow if input.claims.ok == true\n"
    ct_np.save_file({"w": np.ones(3, np.float32)}, path, config={"enc_key": master, "sign_key": signer,
                                                                 "policy": {"local": policy}})  # fmt: skip
    return path, tmp_path / "pub.jwk"


def test_explain_verifies_first(capsys, tmp_path, signed):
    path, pub = signed
    code, out, _ = run(capsys, "policy", "explain", path, "--trust", pub, "--claims", '{"ok": true}')
    assert code == 0 and out.startswith("allowed") and "UNVERIFIED" not in out
    code, _, err = run(capsys, "policy", "explain", path)  # no publisher key: refused, nothing evaluated
    assert code == 5 and "error" in err


def test_explain_refuses_a_tampered_file_and_marks_unverified_output(capsys, tmp_path, signed):
    path, pub = signed
    tampered = tmp_path / "tampered.ct"
    tampered.write_bytes(
        edit_inner(path.read_bytes(), POLICY, lambda p: p.update(local="package model\nallow := true\n"))
    )
    code, out, err = run(capsys, "policy", "explain", tampered, "--trust", pub)
    assert code == 4 and out == "" and "signature" in err.lower()
    code, out, _ = run(capsys, "policy", "explain", tampered, "--unverified")
    assert code == 0 and out.strip()
    assert all(line.startswith("UNVERIFIED (signature not checked): ") for line in out.splitlines())
    code, out, _ = run(capsys, "policy", "explain", tampered, "--unverified", "--json")
    report = json.loads(out)
    assert report["verified"] is False and report["warning"].startswith("UNVERIFIED")


def test_explain_unverified_hostile_policy_is_bounded(capsys, tmp_path, signed):
    """The issue's case: a tampered file's memory-hungry policy (once 2.5 GB, 6.7 s) is denied within bounds."""
    import resource
    import time

    from pycryptotensors.policy import sandbox

    path, _ = signed
    hostile = tmp_path / "hostile.ct"
    bomb = "package model\nallow if count([x | some x in numbers.range(1, 1000000000)]) > 0\n"
    hostile.write_bytes(edit_inner(path.read_bytes(), POLICY, lambda p: p.update(local=bomb)))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    code, out, _ = run(capsys, "policy", "explain", hostile, "--unverified")
    assert code == 6 and "UNVERIFIED" in out and "denied" in out
    assert time.monotonic() - start < sandbox.TIMEOUT_SECONDS + 8
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024  # KiB: this process stayed small
