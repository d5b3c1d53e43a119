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
    if mode == "decrypt":  # the CPU floor: the same file decrypted from memory (no transfer at all)
        data = _download(url)
        start = time.perf_counter()
        tensors = ct_np.load(data, config=config)
        print(json.dumps({"seconds": time.perf_counter() - start, "peak_growth": 0, "loaded": 0}))
        return
    opened = time.perf_counter()
    with pc.safe_open(url, "np", config=config):  # what opening costs: header request, signature, policy
        pass
    open_s = time.perf_counter() - opened
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
    growth = _status_kib("VmHWM") * 1024 - base * 1024
    print(json.dumps({"seconds": seconds, "peak_growth": growth, "loaded": loaded, "open": open_s}))


def _download(url: str) -> bytes:
    """The whole object, in one request (for the in-memory decrypt floor)."""
    if url.startswith("s3://"):
        import obstore
        from obstore.store import S3Store

        store = S3Store(url.split("/")[2], client_options={"allow_http": True})
        return bytes(obstore.get(store, url.split("/", 3)[3]).bytes())
    import httpx

    return httpx.get(url, timeout=600).content


def transport_seconds(url: str, offset: int, length: int, concurrency: int, repeat: int, span: int = 8 * MiB) -> float:
    """The transport alone (obstore / httpx) fetching ``[offset, offset + length)`` into memory by ``span``
    ranges, ``concurrency`` at a time, its connections opened before timing (best of ``repeat``): the floor a
    slice and a whole tensor are compared with."""
    from concurrent.futures import ThreadPoolExecutor

    if url.startswith("s3://"):
        import obstore
        from obstore.store import S3Store

        store = S3Store(url.split("/")[2], client_options={"allow_http": True})
        key = url.split("/", 3)[3]

        def get(lo: int, hi: int) -> int:
            return len(obstore.get(store, key, options={"range": (lo, hi)}).bytes())
    else:
        import httpx

        client = httpx.Client(limits=httpx.Limits(max_connections=concurrency + 2))

        def get(lo: int, hi: int) -> int:
            return len(client.get(url, headers={"Range": f"bytes={lo}-{hi - 1}"}).content)

    jobs = [(lo, min(offset + length, lo + span)) for lo in range(offset, offset + length, span)]
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda _: get(offset, offset + 1), range(concurrency)))  # warm: connections open, as ours
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            list(pool.map(lambda job: get(*job), jobs))
            best = min(best, time.perf_counter() - start)
    return best


def run_child(mode: str, url: str, concurrency: int, env: dict) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, url, str(concurrency)],
        env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def slice_case(
    url: str, chunk_kib: int, latency: float, load: dict, proxy: object, concurrency: int, repeat: int
) -> None:
    """A 1 KiB slice of a 64 MiB tensor against the whole tensor, and the transport's own floor: one chunk's
    range request against the whole tensor's bytes fetched with the same concurrency."""
    import pycryptotensors as pc

    slice_s, whole_s, slice_bytes = [], [], 0
    with pc.safe_open(url, "np", config=load) as handle:
        name = handle.keys()[0]
        opened = handle._opened()
        entry = opened.header.tensors[name]
        offset = opened.header.data_start + entry.start
        for _ in range(max(3, repeat)):
            proxy.counters.reset()  # type: ignore[attr-defined]
            start = time.perf_counter()
            handle.get_slice(name)[1000:1256]  # 1 KiB of float32
            slice_s.append(time.perf_counter() - start)
            slice_bytes = proxy.counters.bytes  # type: ignore[attr-defined]
            start = time.perf_counter()
            handle.get_tensor(name)
            whole_s.append(time.perf_counter() - start)
    chunk = chunk_kib * 1024
    one = transport_seconds(url, offset, chunk, 1, max(3, repeat))
    every = transport_seconds(url, offset, entry.nbytes, concurrency, max(3, repeat))
    label = f"1 KiB slice, 64 MiB tensor, {chunk_kib} KiB chunks: bytes"
    print(f"{latency:>6.0f}ms {label:<44} {slice_bytes:>14d} {f'<= {chunk_kib} KiB':>12}")
    print(f"{latency:>6.0f}ms {'  time (ms) / whole tensor (ms), speed-up':<44} {min(slice_s) * 1000:>14.1f} "
          f"{min(whole_s) * 1000:>12.1f} {min(whole_s) / min(slice_s):>6.0f}x")  # fmt: skip
    print(f"{latency:>6.0f}ms {'  floor: transport, 1 chunk (ms) / whole (ms)':<44} {one * 1000:>14.1f} "
          f"{every * 1000:>12.1f} {every / one:>6.0f}x")  # fmt: skip


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
    parser.add_argument(
        "--small-chunk-kib", type=int, default=64, help="chunk size of the second slice case's file (0: skip it)"
    )
    parser.add_argument("--smoke", action="store_true", help="16 MiB, one repeat: checks the script runs")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return
    if args.smoke:
        args.size_mib, args.repeat = 16, 1
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
    small_url = None
    if args.small_chunk_kib:  # the slice case again, in a file written with small chunks
        one = {"w": rng.standard_normal(TENSOR // 4, dtype=np.float32)}
        small_url = put(
            "small-chunks.safetensors", ct_np.save(one, config=dict(save, chunk_size=args.small_chunk_kib * 1024))
        )
        del one
    many = {f"t{i}": np.full(4, i, dtype=np.float32) for i in range(1000)}
    many_url = put("many.safetensors", ct_np.save(many, config=save))

    print(
        f"remote benchmark: {args.size_mib} MiB in {count} tensor(s), {args.chunk_kib} KiB chunks, "
        f"concurrency {args.concurrency}, {'moto S3' if args.server == 's3' else 'in-memory HTTP server'}"
    )
    print(f"{'latency':>8} {'case':<44} {'value':>14} {'baseline':>12} {'ratio':>7}")
    proxy.counters.latency = 0
    floor = min(run_child("decrypt", url, args.concurrency, env)["seconds"] for _ in range(args.repeat))
    print(f"{'':>8} {'CPU floor: in-memory decrypt of the file (s)':<44} {floor:>14.2f}")
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
        bound = (best_base + floor) / best_base  # no idle core: the decrypt's CPU time adds to the transfer's
        print(f"{latency:>6.0f}ms {'  bound with no idle core: (baseline + decrypt)':<44} {'':>14} {'':>12} "
              f"{bound:>7.2f}")  # fmt: skip
        opening = min(r["open"] for r in ours)
        print(f"{latency:>6.0f}ms {'  of which opening (header, signature) (s)':<44} {opening:>14.3f}")
        print(f"{latency:>6.0f}ms {'  load without the open / baseline':<44} {'':>14} {'':>12} "
              f"{(best_ours - opening) / best_base:>7.2f}")  # fmt: skip
        print(f"{latency:>6.0f}ms {'peak RSS beyond the tensors (MiB)':<44} {extra:>14.1f}")

        for file_url, chunk_kib in [(url, args.chunk_kib), (small_url, args.small_chunk_kib)]:
            if file_url is not None:
                slice_case(file_url, chunk_kib, latency, load, proxy, args.concurrency, args.repeat)
        proxy.counters.reset()
        with pc.safe_open(many_url, "np", config=load) as handle:
            assert len(handle.keys()) == 1000
        print(
            f"{latency:>6.0f}ms {'open + header of a 1,000-tensor file: requests':<44} {proxy.counters.requests:>14d}"
        )
    proxy.stop()


if __name__ == "__main__":
    main()
