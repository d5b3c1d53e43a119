"""Full-load speed of every framework front-end against plain safetensors for the same framework, same run.

Run with the python of ``.venv-frameworks`` (scripts/setup-frameworks-venv.sh). Each framework runs in its own
child process (TensorFlow and Paddle crash when imported into one process). Per framework: a model of
``--size-mib`` F32 tensors saved plain and encrypted (AES-256-GCM); ``safetensors.<fw>.load_file`` of the plain
file against ``pycryptotensors.<fw>.load_file`` of the encrypted one, each followed by a sum of every tensor
(torch and paddle map plain files lazily), interleaved, page cache warm; the median
of ``--repeat`` runs and the ratio ours / plain. ``--smoke`` runs a tiny model, to check the script works.

    .venv-frameworks/bin/python bench/bench_frameworks.py [--size-mib 256] [--repeat 5] [--smoke]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

FRAMEWORKS = ["numpy", "torch", "flax", "tensorflow", "paddle", "mlx"]
MiB = 1024 * 1024


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    except OSError:
        return "?"


def touch(tensors: dict) -> float:
    """Read every value (each framework's own sum), so that lazy views cost what they defer."""
    return float(sum(float(t.sum() if hasattr(t, "sum") else np.asarray(t).sum()) for t in tensors.values()))


def one(framework: str, size_mib: float, repeat: int) -> dict[str, float]:
    """Runs in the child: times plain and ours for one framework; returns medians in seconds."""
    import pycryptotensors as pc

    ours = importlib.import_module(f"pycryptotensors.{framework}")
    plain = importlib.import_module(f"safetensors.{framework}")
    numpy_plain = importlib.import_module("safetensors.numpy")
    count = 16
    elements = max(1, int(size_mib * MiB / 4 / count))
    rng = np.random.default_rng(0)
    arrays = {f"layer.{i}": rng.standard_normal(elements).astype(np.float32) for i in range(count)}
    master, signer = pc.generate_master_key(), pc.generate_signing_key()
    save = {"enc_key": master.to_jwk(), "sign_key": signer.to_jwk()}
    load = {"enc_key": master.to_jwk(), "sign_key": signer.verify_key.to_jwk()}
    with tempfile.TemporaryDirectory() as folder:
        plain_path, enc_path = os.path.join(folder, "plain.safetensors"), os.path.join(folder, "enc.safetensors")
        numpy_plain.save_file(arrays, plain_path)
        importlib.import_module("pycryptotensors.numpy").save_file(arrays, enc_path, config=save)
        times: dict[str, list[float]] = {"plain": [], "ours": []}
        cases = {  # summed: torch and paddle hand out lazy mmap views of plain files; every byte must be read
            "plain": lambda: touch(plain.load_file(plain_path)),
            "ours": lambda: touch(ours.load_file(enc_path, config=load)),
        }
        for case in cases.values():  # warm-up: imports, page cache
            case()
        for _ in range(repeat):
            for name, case in cases.items():
                start = time.perf_counter()
                case()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=float, default=256)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.size_mib, args.repeat = 4, 2
    if args.child:
        print(json.dumps(one(args.child, args.size_mib, args.repeat)))
        return 0
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore", JAX_ENABLE_X64="1")
    print(f"full load + sum of {args.size_mib:g} MiB of F32 (16 tensors), median of {args.repeat}, page cache warm")
    print(f"{'framework':<12}{'plain safetensors':>20}{'pycryptotensors':>18}{'ours / plain':>14}")
    failed = 0
    for framework in FRAMEWORKS:
        command = [sys.executable, __file__, "--child", framework, "--size-mib", str(args.size_mib)]
        result = subprocess.run([*command, "--repeat", str(args.repeat)], capture_output=True, text=True, env=env)
        lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
        if result.returncode or not lines:
            failed += 1
            print(f"{framework:<12} failed: {result.stderr.strip().splitlines()[-1:]}")
            continue
        t = json.loads(lines[-1])
        mbps = args.size_mib / t["plain"], args.size_mib / t["ours"]
        print(
            f"{framework:<12}{t['plain'] * 1e3:>11.1f} ms {mbps[0]:>5.0f} MiB/s{t['ours'] * 1e3:>8.1f} ms"
            f" {mbps[1]:>5.0f} MiB/s{t['ours'] / t['plain']:>8.2f}x"
        )
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, {cpu_model()}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
