"""Hostile policies: each denies with our error and a fixed message, and the test process survives.

Every policy here runs through the real helper process (``pycryptotensors.policy.sandbox``). numpy is imported,
as in every real load: with regopy, ``time.date`` / ``time.clock`` / ``time.weekday`` then aborted the process.
Bounds checked: each evaluation returns within the sandbox's timeout plus a start-up allowance, the helper's
peak memory stays under its address-space limit, and this process's own memory does not grow.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import signal as signal_module
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import pycryptotensors as pc
import pycryptotensors.numpy as ct_np
from pycryptotensors.policy import evaluate_policy, sandbox

NS = 1795000000000000000
SECRET = "s3cr3t-marker-7d1f"  # put in this process's environment; no policy may get it out
SLACK = 8.0  # start-up of a fresh helper on a busy 2-core machine, on top of the evaluation timeout

HOSTILE = {
    "time.date tz": f'package model\nallow := time.date([{NS}, "Europe/Paris"])',
    "time.clock tz": f'package model\nallow := time.clock([{NS}, "UTC"])',
    "time.weekday tz": f'package model\nallow := time.weekday([{NS}, "Europe/Paris"])',
    "opa.runtime": "package model\nallow := opa.runtime()",
    "opa.runtime env": "package model\nallow := opa.runtime().env.CRYPTOTENSOR_KEYS",
    "opa.runtime in a body": 'package model\nallow if { e := opa.runtime().env; e.BAO_TOKEN != "" }',
    "http.send": 'package model\nallow if http.send({"method": "get", "url": "http://127.0.0.1:9/"}).status_code == 2',
    "net.lookup_ip_addr": 'package model\nallow if count(net.lookup_ip_addr("localhost")) > 0',
    "deep recursion": "package model\nf(x) := y if { y := f(x + 1) }\nallow := f(0)",
    "deeply nested literal": "package model\nallow := " + "[" * 200000 + "]" * 200000,
    "huge array": "package model\nallow if count(numbers.range(0, 100000000000)) > 0",
    "huge string": 'package model\nallow if { s := concat("", [x | some _ in numbers.range(1, 50000000); x := "aa"]); '
    "count(s) > 0 }",
    "endless comprehension": "package model\nallow if count({x | some i in numbers.range(1, 100000); some j in "
    "numbers.range(1, 100000); x := i * j}) > 0",
    "cpu loop": "package model\nallow if { some i in numbers.range(1, 20000); some j in numbers.range(1, 20000); "
    "i * j == -1 }",
    "output bomb value": 'package model\nallow := concat("", [x | some _ in numbers.range(1, 2000000); x := "bomb"])',
    "print bomb": 'package model\nallow if { s := concat("", [x | some _ in numbers.range(1, 200000); x := "p"]); '
    "print(s); print(s); false }",
    "secret as the value": f'package model\nallow := "{SECRET}"',
    "secret in an error": f'package model\nallow if to_number("{SECRET}") > 1',
    "input echoed": 'package model\nallow := sprintf("%v", [input])',
    "v0 syntax": "package model\nallow { true }",
    "syntax error": "package model\nallow if {{",
    "too large": "package model\nallow := true\n" + "# padding\n" * 200000,
}


@pytest.fixture(autouse=True)
def secret_environment(monkeypatch):
    """A real master key in CRYPTOTENSOR_KEYS (a decoy: the files here use other keys) and a token."""
    decoy = pc.generate_master_key(kid="decoy").to_jwk("reference")
    monkeypatch.setenv("CRYPTOTENSOR_KEYS", json.dumps(decoy))
    monkeypatch.setenv("BAO_TOKEN", SECRET)
    return decoy["k"]


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_policy_denies_with_a_fixed_message(name):
    policy = HOSTILE[name]
    assert "numpy" in sys.modules
    start = time.monotonic()
    decision = evaluate_policy(policy, {"claims": {"note": SECRET}})
    elapsed = time.monotonic() - start
    assert not decision.allowed
    assert elapsed < sandbox.TIMEOUT_SECONDS + SLACK, elapsed
    assert SECRET not in decision.reason and "bomb" not in decision.reason and "Europe" not in decision.reason
    assert len(decision.reason) < 300
    # the process survived, and the next policy is evaluated normally (by a new helper if the old one died)
    assert evaluate_policy("package model\nallow := true", {}).allowed


@pytest.mark.parametrize(
    "name", ["opa.runtime env", "opa.runtime in a body", "secret as the value", "secret in an error", "time.date tz"]
)
def test_hostile_policy_in_a_file_raises_policy_denied(
    tmp_path, monkeypatch, config, load_config, secret_environment, name
):
    path = tmp_path / "hostile.ct"
    policy = HOSTILE[name]
    if name.startswith("opa.runtime"):  # refused at write; a crafted file carries it anyway
        with pytest.raises(pc.ConfigError, match="not available"):
            ct_np.save_file({"w": np.ones(4, np.float32)}, path, config={**config, "policy": {"local": policy}})
        import pycryptotensors.writing.writer as writer

        monkeypatch.setattr(writer, "check_policy", lambda text: None)
    ct_np.save_file({"w": np.ones(4, np.float32)}, path, config={**config, "policy": {"local": policy}})
    with pytest.raises(pc.PolicyDeniedError) as caught:
        ct_np.load_file(path, config=load_config)
    assert SECRET not in str(caught.value) and secret_environment not in str(caught.value)


def test_statuses_are_the_documented_ones():
    expect = {
        "time.date tz": "non_boolean",
        "opa.runtime": "unavailable_builtin",
        "http.send": "unavailable_builtin",
        "deep recursion": "crashed",
        "huge array": "crashed",
        "cpu loop": "timeout",
        "secret in an error": "eval_error",
        "v0 syntax": "rego_v0",
        "syntax error": "compile_error",
        "too large": "too_large",
    }
    assert {name: evaluate_policy(HOSTILE[name], {}).status for name in expect} == expect


def test_helper_sees_no_environment_and_no_working_directory():
    assert evaluate_policy("package model\nallow := false", {}).status == "false"
    pid = sandbox.helper_pid()
    assert pid is not None and pid != os.getpid()
    with open(f"/proc/{pid}/environ", "rb") as handle:
        assert handle.read() == b""
    assert os.readlink(f"/proc/{pid}/cwd").endswith("(deleted)")
    fds = os.listdir(f"/proc/{pid}/fd")
    assert len(fds) <= 4, fds  # stdin, stdout, stderr (/dev/null), at most one more the interpreter keeps


def test_helper_is_reused_and_replaced_after_a_crash():
    evaluate_policy("package model\nallow := true", {})
    first = sandbox.helper_pid()
    for _ in range(20):
        assert evaluate_policy("package model\nallow if input.a == 1", {"a": 1}).allowed
    assert sandbox.helper_pid() == first
    assert evaluate_policy(HOSTILE["deep recursion"], {}).status == "crashed"
    assert sandbox.helper_pid() is None
    assert evaluate_policy("package model\nallow := true", {}).allowed
    assert sandbox.helper_pid() not in (None, first)


def test_threads_share_one_helper():
    policy = "package model\ndefault allow := false\nallow if input.n % 2 == 0"
    results: dict[int, bool] = {}

    def work(base: int) -> None:
        for n in range(base, base + 25):
            results[n] = evaluate_policy(policy, {"n": n}).allowed

    threads = [threading.Thread(target=work, args=(i * 100,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {n: n % 2 == 0 for n in results} and len(results) == 150


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_forked_child_starts_its_own_helper():
    assert evaluate_policy("package model\nallow := true", {}).allowed
    parent_helper = sandbox.helper_pid()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child: its own helper, the parent's untouched
        try:
            ok = evaluate_policy('package model\nallow if input.x == "child"', {"x": "child"}).allowed
            os.write(write, json.dumps([ok, sandbox.helper_pid()]).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as handle:
        ok, child_helper = json.loads(handle.read())
    os.waitpid(child, 0)
    assert ok and child_helper not in (None, parent_helper)
    assert sandbox.helper_pid() == parent_helper
    assert evaluate_policy("package model\nallow := true", {}).allowed


def _spawned(policy: str) -> bool:
    from pycryptotensors.policy import evaluate_policy

    return evaluate_policy(policy, {"w": "spawn"}).allowed


def test_spawned_worker_evaluates():
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        assert pool.apply(_spawned, ('package model\nallow if input.w == "spawn"',))
        assert not pool.apply(_spawned, (HOSTILE["deep recursion"],))


def test_memory_stays_bounded():
    """A fresh process runs the memory-hungry policies; its helpers peak under the limit, it stays small."""
    script = f"""
import json, resource, numpy
from pycryptotensors.policy import evaluate_policy
policies = {json.dumps([HOSTILE[n] for n in ("huge array", "huge string", "output bomb value", "deep recursion")])}
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
verdicts = [evaluate_policy(p, {{}}).allowed for p in policies]
print(json.dumps({{"verdicts": verdicts, "self_growth_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before,
                  "children_peak_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["verdicts"] == [False] * 4
    assert result["children_peak_kib"] * 1024 <= sandbox.MEMORY_LIMIT
    assert result["self_growth_kib"] < 64 * 1024


def test_timeout_is_a_bound():
    start = time.monotonic()
    decision = evaluate_policy(HOSTILE["cpu loop"], {}, timeout=0.5)
    assert decision.status == "timeout" and time.monotonic() - start < 0.5 + SLACK
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 0  # still here


def test_bench_smoke_runs():
    """bench/bench_policy.py --smoke runs and reports every figure (values are for people, not asserted)."""
    bench = os.path.join(os.path.dirname(__file__), "..", "bench", "bench_policy.py")
    out = subprocess.run([sys.executable, bench, "--smoke", "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert {"first_policy_in_process_ms", "warm_ms_median", "interpreter_start_floor_ms", "ratio"} <= set(report)


def test_helper_killed_between_calls_is_replaced_transparently():
    import signal

    assert evaluate_policy("package model\nallow := true", {}).allowed
    pid = sandbox.helper_pid()
    os.kill(pid, signal.SIGKILL)  # the helper this test's process started
    time.sleep(0.2)
    assert evaluate_policy("package model\nallow := true", {}).allowed
    assert sandbox.helper_pid() not in (None, pid)


@pytest.mark.skipif(not hasattr(signal_module, "setitimer"), reason="setitimer")
def test_interrupted_call_never_answers_the_next_one():
    """An exception in the caller mid-evaluation (Ctrl-C, a signal handler) must not leave the slow policy's answer
    in the pipe: before the fix, the next call read it, so ``allow := false`` came back allowed."""

    class CallerInterruptedError(Exception):
        pass

    def interrupt(*_args: object) -> None:
        raise CallerInterruptedError

    slow_true = "package model\nallow := count([x | some x in numbers.range(1, 3000000)]) > 0"
    previous = signal_module.signal(signal_module.SIGALRM, interrupt)
    try:
        assert evaluate_policy("package model\nallow := false", {}).status == "false"  # a warm helper
        signal_module.setitimer(signal_module.ITIMER_REAL, 0.1)
        with pytest.raises(CallerInterruptedError):
            evaluate_policy(slow_true, {}, timeout=10)
    finally:
        signal_module.setitimer(signal_module.ITIMER_REAL, 0)
        signal_module.signal(signal_module.SIGALRM, previous)
    time.sleep(2.5)  # the interrupted request's answer would be in the pipe by now
    for expected in ("false", "undefined", "false"):
        policy = {"false": "package model\nallow := false", "undefined": "package model\nallow if input.x == 1"}
        decision = evaluate_policy(policy[expected], {})
        assert not decision.allowed and decision.status == expected
