"""Core benchmark: pycryptotensors against plain safetensors (and the reference library), same run.

Prints one table: case, plain safetensors, ours, reference ``cryptotensors``, ratio (ours / plain).
Page cache warm; each figure is the median of ``--repeat`` runs. Peak-memory cases run in a child process
so that their high-water mark is their own.

    python bench/bench_core.py [--size-mib 1024] [--repeat 5] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np

import pycryptotensors as pc
import pycryptotensors.numpy as ours_np
import pycryptotensors.torch as ours_pt

MiB = 1024 * 1024


def median_time(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
        del result
    return statistics.median(times)


def touch(tensors: dict) -> float:
    return float(sum(t.sum() for t in tensors.values()))


def keys() -> tuple[dict, dict]:
    master, signer = pc.generate_master_key(kid="bench-enc"), pc.generate_signing_key(kid="bench-sign")
    config = {"enc_key": master.to_jwk("reference"), "sign_key": signer.to_jwk("reference")}
    return config, {"keys": [config["enc_key"], signer.verify_key.to_jwk("reference")]}


def model(total_bytes: int, count: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        f"layer{i:02d}.weight": rng.standard_normal(total_bytes // count // 4, dtype=np.float32) for i in range(count)
    }


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def save_child(kind: str, path: str, size: int, config_json: str) -> None:
    """Run in a child: build the tensors, then report the extra peak RSS and the time of one save."""
    tensors = model(size, 16)
    with open("/proc/self/clear_refs", "w") as f:  # reset the high-water mark (Linux >= 4.0)
        f.write("5")
    baseline = _status_kib("VmRSS")
    start = time.perf_counter()
    if kind == "plain":
        import safetensors.numpy

        safetensors.numpy.save_file(tensors, path)
    elif kind == "ours":
        ours_np.save_file(tensors, path, config=json.loads(config_json))
    else:
        import cryptotensors.numpy

        cryptotensors.numpy.save_file(tensors, path, config=json.loads(config_json))
    elapsed = time.perf_counter() - start
    extra = (_status_kib("VmHWM") - baseline) / 1024
    print(json.dumps({"seconds": elapsed, "extra_mib": extra}))


def load_child(kind: str, path: str, size: int) -> None:
    """Run in a child: load a file once; report the time and the peak RSS beyond the loaded tensors."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    baseline = _status_kib("VmRSS")
    start = time.perf_counter()
    if kind == "plain":
        import safetensors.numpy

        loaded = safetensors.numpy.load_file(path)
    elif kind == "ours":
        loaded = ours_np.load_file(path)
    else:
        import cryptotensors.numpy

        loaded = cryptotensors.numpy.load_file(path)
    elapsed = time.perf_counter() - start
    extra = (_status_kib("VmHWM") - baseline) / 1024 - size / MiB
    assert sum(v.nbytes for v in loaded.values()) == size
    print(json.dumps({"seconds": elapsed, "extra_mib": extra}))


def run_child(mode: str, kind: str, path: str, size: int, repeat: int, *extra: str) -> tuple[float, float]:
    """Median time and largest extra peak memory of ``repeat`` fresh child processes."""
    runs = []
    for _ in range(repeat):
        out = subprocess.run(
            [sys.executable, __file__, mode, kind, path, str(size), *extra],
            check=True,
            capture_output=True,
            text=True,
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return statistics.median(r["seconds"] for r in runs), max(r["extra_mib"] for r in runs)


def run_save(kind: str, path: str, size: int, config: dict, repeat: int) -> tuple[float, float]:
    return run_child("--child-save", kind, path, size, repeat, json.dumps(config))


def have_reference() -> bool:
    try:
        import cryptotensors  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024, help="model size for the load/save cases")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where to write the benchmark files")
    parser.add_argument("--child-save", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--child-load", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_save:
        kind, path, size, config_json = args.child_save
        save_child(kind, path, int(size), config_json)
        return
    if args.child_load:
        kind, path, size = args.child_load
        load_child(kind, path, int(size))
        return

    import safetensors
    import safetensors.numpy
    import safetensors.torch

    reference = have_reference()
    if reference:
        import cryptotensors
        import cryptotensors.numpy
        import cryptotensors.torch
    config, env_keys = keys()
    os.environ["CRYPTOTENSOR_KEYS"] = json.dumps(env_keys)  # how the reference's load_file finds keys
    size = args.size_mib * MiB
    rows: list[tuple[str, float | None, float | None, float | None, str]] = []

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        plain, ours, ref = (os.path.join(tmp, n) for n in ("plain.safetensors", "ours.ct", "ref.ct"))
        tensors = model(size, 16)
        safetensors.numpy.save_file(tensors, plain)
        ours_np.save_file(tensors, ours, config=config)
        if reference:
            cryptotensors.numpy.save_file(tensors, ref, config=config)
        del tensors

        label = f"full load {args.size_mib} MiB / 16 tensors"
        p = median_time(lambda: safetensors.numpy.load_file(plain), args.repeat)
        o = median_time(lambda: ours_np.load_file(ours), args.repeat)
        r = median_time(lambda: cryptotensors.numpy.load_file(ref), args.repeat) if reference else None
        rows.append((f"{label}, numpy", p, o, r, f"{o / p:.2f}x"))

        # Version 1 (one AEAD per tensor) next to version 2 (chunked): time, and peak memory beyond the loaded
        # tensors, each load in a fresh child. Version 1 streams AES-GCM through a small buffer (cryptography
        # 51 refuses the in-place decryption older releases allowed); the bar is at most one tensor's size.
        ours_v1, ref_v1 = os.path.join(tmp, "ours-v1.ct"), os.path.join(tmp, "ref-v1.ct")
        tensors = model(size, 16)
        ours_np.save_file(tensors, ours_v1, config={**config, "version": "1"})
        if reference:
            cryptotensors.numpy.save_file(tensors, ref_v1, config={**config, "version": "1"})
        del tensors
        p = median_time(lambda: safetensors.numpy.load_file(plain), args.repeat)
        o = median_time(lambda: ours_np.load_file(ours_v1), args.repeat)
        r = median_time(lambda: cryptotensors.numpy.load_file(ref_v1), args.repeat) if reference else None
        rows.append((f"{label}, numpy, version 1", p, o, r, f"{o / p:.2f}x"))
        child_repeat = max(1, min(args.repeat, 3))
        memory = {
            name: run_child("--child-load", kind, path, size, child_repeat)[1]
            for name, kind, path in [("plain", "plain", plain), ("v2", "ours", ours), ("v1", "ours", ours_v1)]
            + ([("ref_v1", "reference", ref_v1)] if reference else [])
        }
        tensor_mib = size / MiB / 16
        rows.append(
            (
                "  extra peak memory beyond the tensors (MiB): version 2",
                memory["plain"],
                memory["v2"],
                None,
                f"bar: {tensor_mib:.0f} MiB (one tensor)",
            )
        )
        rows.append(
            (
                "  extra peak memory beyond the tensors (MiB): version 1",
                memory["plain"],
                memory["v1"],
                memory.get("ref_v1"),
                f"bar: {tensor_mib:.0f} MiB (one tensor)",
            )
        )

        # Torch: safetensors maps the file and hands out zero-copy views, so the plain figure depends on what
        # "loaded" means. Both readings are shown, with every tensor summed so the values are really read:
        # against the zero-copy map no decrypting loader can get near (it must write every byte once), and
        # against tensors in memory the process owns (what a model whose parameters are filled from the
        # file gets), the comparison is like for like.
        p_map = median_time(lambda: touch(safetensors.torch.load_file(plain)), args.repeat)
        p_own = median_time(
            lambda: touch({k: v.clone() for k, v in safetensors.torch.load_file(plain).items()}), args.repeat
        )
        o = median_time(lambda: touch(ours_pt.load_file(ours)), args.repeat)
        r = median_time(lambda: touch(cryptotensors.torch.load_file(ref)), args.repeat) if reference else None
        rows.append((f"{label}, torch, into owned memory, summed", p_own, o, r, f"{o / p_own:.2f}x"))
        rows.append(("  same, plain as zero-copy mmap views, summed", p_map, o, r, f"{o / p_map:.2f}x"))

        # One 64 MiB tensor: a 1 KiB slice against decrypting the whole tensor.
        big = {"big": np.random.default_rng(1).standard_normal(16 * MiB, dtype=np.float32).reshape(4096, 4096)}
        plain_big, ours_big, ref_big = (os.path.join(tmp, n) for n in ("big.safetensors", "big.ct", "big-ref.ct"))
        safetensors.numpy.save_file(big, plain_big)
        ours_np.save_file(big, ours_big, config=config)
        if reference:
            cryptotensors.numpy.save_file(big, ref_big, config=config)
        window = (slice(1000, 1001), slice(512, 768))  # 256 float32 = 1 KiB

        def slice_of(opener: Callable[..., object], path: str, **kw: object) -> Callable[[], object]:
            def run() -> object:
                with opener(path, "np", **kw) as f:
                    return f.get_slice("big")[window]

            return run

        repeat = max(args.repeat, 20)
        p = median_time(slice_of(safetensors.safe_open, plain_big), repeat)
        o = median_time(slice_of(pc.safe_open, ours_big, config=config), repeat)
        r = median_time(slice_of(cryptotensors.safe_open, ref_big, config=config), repeat) if reference else None
        rows.append(("1 KiB slice of a 64 MiB encrypted tensor (open + slice)", p, o, r, f"{o / p:.2f}x"))
        with pc.safe_open(ours_big, "np", config=config) as handle:  # the slice against the whole, same handle
            part = median_time(lambda: handle.get_slice("big")[window], repeat * 5)
            whole = median_time(lambda: handle.get_tensor("big"), repeat)
        rows.append(("  ours, open handle: the 1 KiB slice (one 1 MiB chunk)", None, part, None, ""))
        rows.append(
            ("  ours, open handle: the whole 64 MiB tensor", None, whole, None, f"slice {whole / part:.0f}x faster")
        )

        # safe_open of a file with 1,000 small tensors.
        many = {f"t{i:04d}": np.full(16, i, dtype=np.float32) for i in range(1000)}
        plain_many, ours_many, ref_many = (os.path.join(tmp, n) for n in ("many.st", "many.ct", "many-ref.ct"))
        safetensors.numpy.save_file(many, plain_many)
        ours_np.save_file(many, ours_many, config=config)
        if reference:
            cryptotensors.numpy.save_file(many, ref_many, config=config)

        def open_only(opener: Callable[..., object], path: str, **kw: object) -> Callable[[], object]:
            def run() -> object:
                with opener(path, "np", **kw) as f:
                    return f.keys()

            return run

        p = median_time(open_only(safetensors.safe_open, plain_many), repeat)
        o = median_time(open_only(pc.safe_open, ours_many, config=config), repeat)
        r = median_time(open_only(cryptotensors.safe_open, ref_many, config=config), repeat) if reference else None
        rows.append(("safe_open, 1,000 tensors", p, o, r, f"{o / p:.1f}x ({o * 1000:.1f} ms)"))

        # Save: time and extra peak memory, each in a fresh child process.
        save_repeat = max(1, min(args.repeat, 3))
        p_t, p_m = run_save("plain", plain, size, config, save_repeat)
        o_t, o_m = run_save("ours", ours, size, config, save_repeat)
        r_t, r_m = run_save("reference", ref, size, config, save_repeat) if reference else (None, None)
        rows.append((f"save {args.size_mib} MiB", p_t, o_t, r_t, f"{o_t / p_t:.2f}x"))
        rows.append(("  extra peak memory while saving (MiB)", p_m, o_m, r_m, f"+{o_m:.0f} MiB"))

    print(
        f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"numpy {np.__version__}, safetensors {safetensors.__version__}"
    )
    header = f"| {'case':<64} | {'plain safetensors':>17} | {'ours':>10} | {'reference':>10} | {'ratio':<22} |"
    print(header)
    print("|" + "|".join("-" * (len(c) + 0) for c in header.split("|")[1:-1]) + "|")
    for case, p, o, r, ratio in rows:
        unit = "MiB" if "peak memory" in case else "s"

        def cell(v: float | None, unit: str = unit) -> str:
            if v is None:
                return "-"
            if unit == "MiB":
                return f"{v:.0f} MiB"
            return f"{v * 1000:.2f} ms" if v < 0.1 else f"{v:.3f} s"

        print(f"| {case:<64} | {cell(p):>17} | {cell(o):>10} | {cell(r):>10} | {ratio:<22} |")


if __name__ == "__main__":
    main()
