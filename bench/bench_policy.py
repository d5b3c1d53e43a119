"""What a file's policy costs: the first policy in a process (helper start) and each one after (warm).

Targets (issue 10): <= 50 ms for the first policy in a process, <= 2 ms per file warm. Also a 300-shard model
simulated as 300 small files with the same policy, loaded in one process, against the same files with the
default policy (which needs no engine), so the ratio shows what the policy adds to a real load.

    .venv/bin/python bench/bench_policy.py            # full
    .venv/bin/python bench/bench_policy.py --smoke    # a few iterations, for CI
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

POLICY = (
    "package model\ndefault allow := false\n"
    'allow if {\n  input.runtime.framework in {"np", "pt"}\n'
    '  time.now_ns() < time.parse_rfc3339_ns("2200-01-01T00:00:00Z")\n}\n'
)

FIRST_CALL = """
import time, numpy
from pycryptotensors.policy import evaluate_policy, local_input
document = local_input("np", "cpu")
start = time.perf_counter()
decision = evaluate_policy(POLICY, document)
first = time.perf_counter() - start
assert decision.allowed, decision.reason
start = time.perf_counter()
evaluate_policy(POLICY, document)
print(first, time.perf_counter() - start)
"""


def first_call(runs: int) -> tuple[list[float], list[float]]:
    firsts, seconds = [], []
    for _ in range(runs):
        code = f"POLICY = {POLICY!r}\n{FIRST_CALL}"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        first, second = map(float, out.split())
        firsts.append(first)
        seconds.append(second)
    return firsts, seconds


def interpreter_floor(runs: int) -> list[float]:
    """``python -I -S -c pass``: the part of a helper start that no helper design can avoid."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-I", "-S", "-c", "pass"], check=True)
        times.append(time.perf_counter() - start)
    return times


def warm(calls: int) -> list[float]:
    from pycryptotensors.policy import evaluate_policy, local_input

    document = local_input("np", "cpu")
    assert evaluate_policy(POLICY, document).allowed
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        evaluate_policy(POLICY, document)
        times.append(time.perf_counter() - start)
    return times


def shards(count: int, rounds: int) -> tuple[float, float]:
    """Median seconds to load ``count`` small files: default policy vs POLICY (same keys, same data)."""
    import pycryptotensors as pc
    import pycryptotensors.numpy as ct_np

    master, signer = pc.generate_master_key(kid="bench"), pc.generate_signing_key(kid="bench-signer")
    ring = pc.KeyRing([master, signer.verify_key])
    folder = Path(tempfile.mkdtemp(prefix="bench-policy-"))
    paths: dict[str, list[Path]] = {"default": [], "policy": []}
    for kind in paths:
        for i in range(count):
            path = folder / f"{kind}-{i:04d}.ct"
            config = {"enc_key": master, "sign_key": signer}
            if kind == "policy":
                config["policy"] = {"local": POLICY}
            ct_np.save_file({"w": np.full(256, i, np.float32)}, path, config=config)
            paths[kind].append(path)
    medians = {}
    for kind, files in paths.items():
        ct_np.load_file(files[0], config=ring)  # warm
        samples = []
        for _ in range(rounds):
            start = time.perf_counter()
            for path in files:
                ct_np.load_file(path, config=ring)
            samples.append(time.perf_counter() - start)
        medians[kind] = statistics.median(samples)
    return medians["default"], medians["policy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a few iterations only")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    runs, calls, count, rounds = (2, 50, 20, 1) if args.smoke else (9, 2000, 300, 5)

    firsts, seconds = first_call(runs)
    floor = interpreter_floor(runs)
    warm_times = warm(calls)
    plain, guarded = shards(count, rounds)
    result = {
        "first_policy_in_process_ms": round(statistics.median(firsts) * 1e3, 2),
        "first_policy_in_process_max_ms": round(max(firsts) * 1e3, 2),
        "interpreter_start_floor_ms": round(statistics.median(floor) * 1e3, 2),
        "second_policy_ms": round(statistics.median(seconds) * 1e3, 3),
        "warm_ms_median": round(statistics.median(warm_times) * 1e3, 3),
        "warm_ms_p99": round(sorted(warm_times)[int(len(warm_times) * 0.99) - 1] * 1e3, 3),
        f"load_{count}_files_default_policy_s": round(plain, 4),
        f"load_{count}_files_with_policy_s": round(guarded, 4),
        "policy_cost_per_file_ms": round((guarded - plain) / count * 1e3, 3),
        "ratio": round(guarded / plain, 2),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"first policy in a process (helper start + evaluation), median of {runs}: "
          f"{result['first_policy_in_process_ms']} ms (max {result['first_policy_in_process_max_ms']} ms; "
          "target <= 50 ms)")  # fmt: skip
    print(f"  floor: a bare 'python -I -S' start on this machine now: {result['interpreter_start_floor_ms']} ms")
    print(f"  the next one in that process: {result['second_policy_ms']} ms")
    print(f"warm evaluation, median of {calls}: {result['warm_ms_median']} ms (p99 {result['warm_ms_p99']} ms; "
          "target <= 2 ms)")  # fmt: skip
    print(f"{count} small files loaded in one process: default policy {plain:.4f} s, with the policy "
          f"{guarded:.4f} s: {result['ratio']}x, +{result['policy_cost_per_file_ms']} ms per file")  # fmt: skip


if __name__ == "__main__":
    main()
