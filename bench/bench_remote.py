"""Remote-read benchmark: loading an encrypted file from a local S3-compatible server (moto), same run.

Prints, for each injected per-request latency (0 and 20 ms by default):

* whole-file load (``pycryptotensors.numpy.load_file("s3://...")``) against the same transport (obstore)
  downloading the same byte ranges into memory with the same concurrency: times and ratio (target <= 1.10);
  peak RSS beyond the loaded tensors (target <= 64 MiB). Both run in child processes, so that the server's
  threads and memory are not theirs;
* one 1 KiB slice of a 64 MiB tensor: bytes transferred (target <= one chunk) and speed against loading the
  whole tensor (target >= 100x);
* open + header of a 1,000-tensor file: requests (target <= 2).

The server is moto's threaded S3 server behind the counting proxy of tests/_remote_servers.py (both Python:
absolute speeds are the server's, ratios are what to read).

    python bench/bench_remote.py [--size-mib 1024] [--concurrency 8] [--latency-ms 0 20] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
MiB = 1024 * 1024
TENSOR = 64 * MiB


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def child(mode: str, url: str, concurrency: int) -> None:
    """One measured load in a fresh process; prints JSON (seconds, peak RSS growth, loaded bytes)."""
    warnings.simplefilter("ignore")
    import obstore
    from obstore.store import S3Store

    import pycryptotensors as pc
    import pycryptotensors.numpy as ct_np

    config = json.loads(os.environ["BENCH_LOAD_CONFIG"])
    with pc.safe_open(url, "np", config=config) as handle:  # layout for the baseline; warms imports
        entries = handle._opened().header.in_offset_order()
        data_start = handle._opened().header.data_start
    base = _status_kib("VmHWM")
    start = time.perf_counter()
    if mode == "ours":
        tensors = ct_np.load_file(url, config=config)
        loaded = sum(t.nbytes for t in tensors.values())
    else:  # the same transport, the same byte ranges (8 MiB spans), the same concurrency, into memory
        from concurrent.futures import ThreadPoolExecutor

        span = 8 * MiB
        tensors = {}
        jobs = []
        for entry in entries:
            out = np.empty(entry.nbytes, dtype=np.uint8)
            tensors[entry.name] = out
            for lo in range(0, entry.nbytes, span):
                jobs.append((out, lo, min(entry.nbytes, lo + span), data_start + entry.start))

        if url.startswith("s3://"):
            store = S3Store(url.split("/")[2], client_options={"allow_http": True})
            key = url.split("/", 3)[3]

            def pieces(lo: int, hi: int) -> Iterator:
                return obstore.get(store, key, options={"range": (lo, hi)}).stream(256 * 1024)
        else:
            import httpx

            client = httpx.Client(limits=httpx.Limits(max_connections=concurrency + 2))

            def pieces(lo: int, hi: int) -> Iterator:
                with client.stream("GET", url, headers={"Range": f"bytes={lo}-{hi - 1}"}) as response:
                    yield from response.iter_raw(256 * 1024)

        def fetch(job: tuple) -> None:
            out, lo, hi, origin = job
            view, at = memoryview(out), lo
            for piece in pieces(origin + lo, origin + hi):
                view[at : at + len(piece)] = piece
                at += len(piece)

        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(fetch, jobs))
        loaded = sum(t.nbytes for t in tensors.values())
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_growth": _status_kib("VmHWM") * 1024 - base * 1024, "loaded": loaded}))


def run_child(mode: str, url: str, concurrency: int, env: dict) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, url, str(concurrency)],
        env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 20.0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--server", choices=["s3", "http"], default="s3", help="moto's S3, or the in-memory HTTP server"
    )
    parser.add_argument("--chunk-kib", type=int, default=1024, help="the file's chunk size (the writer's default)")
    parser.add_argument("--smoke", action="store_true", help="64 MiB, one repeat: checks the script runs")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return
    if args.smoke:
        args.size_mib, args.repeat = 64, 1
    warnings.simplefilter("ignore")
    import boto3

    import pycryptotensors as pc
    import pycryptotensors.numpy as ct_np
    from _remote_servers import ObjectServer, S3Proxy

    proxy = S3Proxy() if args.server == "s3" else ObjectServer()
    proxy.start()
    env = dict(os.environ)
    if isinstance(proxy, S3Proxy):
        s3 = boto3.client(
            "s3", endpoint_url=f"http://127.0.0.1:{proxy.moto_port}", region_name="us-east-1",
            aws_access_key_id="bench", aws_secret_access_key="bench",
        )  # fmt: skip
        s3.create_bucket(Bucket="bench")

        def put(name: str, data: bytes) -> str:
            s3.put_object(Bucket="bench", Key=name, Body=data)
            return f"s3://bench/{name}"

        env.update(AWS_ENDPOINT_URL=proxy.endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
    else:

        def put(name: str, data: bytes) -> str:
            proxy.put(name, data)
            return proxy.url(name)

    env.update(AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1")
    env["PYCRYPTOTENSORS_REMOTE_CONCURRENCY"] = str(args.concurrency)
    os.environ.update({k: env[k] for k in env if k.startswith(("AWS_", "PYCRYPTOTENSORS_REMOTE"))})
    master, signer = pc.generate_master_key(kid="bench-enc"), pc.generate_signing_key(kid="bench-sign")
    save = {"enc_key": master.to_jwk("reference"), "sign_key": signer.to_jwk("reference")}
    save_chunked = dict(save, chunk_size=args.chunk_kib * 1024)
    load = {"enc_key": save["enc_key"], "sign_key": signer.verify_key.to_jwk("reference")}
    env["BENCH_LOAD_CONFIG"] = json.dumps(load)

    rng = np.random.default_rng(0)
    count = max(1, args.size_mib * MiB // TENSOR)
    size = min(TENSOR, args.size_mib * MiB)
    model = {f"layer{i:02d}.weight": rng.standard_normal(size // 4, dtype=np.float32) for i in range(count)}
    url = put("model.safetensors", ct_np.save(model, config=save_chunked))
    del model
    many = {f"t{i}": np.full(4, i, dtype=np.float32) for i in range(1000)}
    many_url = put("many.safetensors", ct_np.save(many, config=save))

    print(
        f"remote benchmark: {args.size_mib} MiB in {count} tensor(s), {args.chunk_kib} KiB chunks, "
        f"concurrency {args.concurrency}, {'moto S3' if args.server == 's3' else 'in-memory HTTP server'}"
    )
    print(f"{'latency':>8} {'case':<44} {'value':>14} {'baseline':>12} {'ratio':>7}")
    for latency in args.latency_ms:
        proxy.counters.latency = latency / 1000
        ours, base = [], []
        for _ in range(args.repeat):  # interleaved
            base.append(run_child("baseline", url, args.concurrency, env))
            ours.append(run_child("ours", url, args.concurrency, env))
        best_ours = min(r["seconds"] for r in ours)
        best_base = min(r["seconds"] for r in base)
        extra = max(r["peak_growth"] - r["loaded"] for r in ours) / MiB
        print(f"{latency:>6.0f}ms {'whole-file load (s)':<44} {best_ours:>14.2f} {best_base:>12.2f} "
              f"{best_ours / best_base:>7.2f}")  # fmt: skip
        print(f"{latency:>6.0f}ms {'peak RSS beyond the tensors (MiB)':<44} {extra:>14.1f}")

        with pc.safe_open(url, "np", config=load) as handle:
            name = handle.keys()[0]
            proxy.counters.reset()
            start = time.perf_counter()
            handle.get_slice(name)[1000:1256]  # 1 KiB of float32
            slice_s = time.perf_counter() - start
            slice_bytes = proxy.counters.bytes
            start = time.perf_counter()
            handle.get_tensor(name)
            whole_s = time.perf_counter() - start
        print(
            f"{latency:>6.0f}ms {'1 KiB slice of a 64 MiB tensor: bytes':<44} {slice_bytes:>14d} "
            f"{f'<= {args.chunk_kib} KiB':>12}"
        )
        print(f"{latency:>6.0f}ms {'  time (ms) / whole tensor (ms), speed-up':<44} {slice_s * 1000:>14.1f} "
              f"{whole_s * 1000:>12.1f} {whole_s / slice_s:>6.0f}x")  # fmt: skip
        proxy.counters.reset()
        with pc.safe_open(many_url, "np", config=load) as handle:
            assert len(handle.keys()) == 1000
        print(
            f"{latency:>6.0f}ms {'open + header of a 1,000-tensor file: requests':<44} {proxy.counters.requests:>14d}"
        )
    proxy.stop()


if __name__ == "__main__":
    main()
