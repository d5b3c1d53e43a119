"""Key service benchmark: many concurrent clients releasing the keys of a 300-tensor file.

Starts a real ``pycryptotensors serve`` on 127.0.0.1 (SQLite, and OpenBao when the ``bao`` binary is
installed), registers a model, gives every client its own token and grant, then runs ``--clients``
concurrent clients (threads), each doing ``--releases`` key releases through the real client
(``KeyServiceProvider``: ephemeral key, HTTP, HPKE). Prints p50 / p99 latency, releases per second and
errors (which must be 0). The load generator shares the machine's cores with the service.

The service's own CPU time per release (from /proc) is printed too. ``--smoke``: 8 clients, SQLite only.

    python bench/bench_keyservice.py [--clients 200] [--releases 3] [--tensors 300] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

import httpx
import numpy as np

import pycryptotensors as pc
import pycryptotensors.numpy as ct_np
from pycryptotensors.keys.sources import KeyRequest
from pycryptotensors.keyservice.client import AdminClient, KeyServiceProvider
from pycryptotensors.reading.reader import read_header_view


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not start")


def start_bao(workdir: Path) -> tuple[subprocess.Popen, str] | None:
    binary = shutil.which("bao") or str(Path(sys.executable).with_name("bao"))
    if not Path(binary).exists():
        return None
    port = free_port()
    proc = subprocess.Popen(
        [binary, "server", "-dev", "-dev-root-token-id=root", f"-dev-listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=workdir,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v1/sys/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.terminate()
    raise RuntimeError("bao did not start")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc/PID/stat``), threads included."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def request_for(path: Path) -> KeyRequest:
    view = read_header_view(path)
    assert view.crypto is not None
    return KeyRequest(str(path), view.header_bytes, view.crypto)


def run_backend(backend: str, args: argparse.Namespace, workdir: Path) -> dict:
    bao = None
    env = dict(os.environ)
    extra: list[str] = []
    if backend == "openbao":
        bao = start_bao(workdir)
        if bao is None:
            return {"backend": backend, "skipped": "bao binary not installed"}
        env["BAO_TOKEN"] = "root"
        extra = ["--backend", "openbao", "--bao-url", bao[1], "--bao-prefix", f"bench-{os.getpid()}"]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    state = workdir / f"state-{backend}"
    serve = [sys.executable, "-m", "pycryptotensors.cli.app", "serve", "--state", str(state), "--port", str(port)]
    server = subprocess.Popen(
        [*serve, *extra, "--access-log", "off"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    # Drained all along (a full pipe would block the server mid-benchmark); the tail is shown on failure.
    server_log: deque[bytes] = deque(maxlen=20)
    drain = threading.Thread(target=lambda: server_log.extend(iter(server.stderr.readline, b"")), daemon=True)
    drain.start()
    try:
        try:
            wait_ready(url)
        except RuntimeError:
            raise RuntimeError(f"{url} did not start: {b''.join(server_log).decode(errors='replace')}") from None
        master, signer = pc.generate_master_key(kid=f"bench-{backend}"), pc.generate_signing_key(kid="bench-pub")
        tensors = {f"layers.{i}.weight": np.full(16, i, np.float32) for i in range(args.tensors)}
        path = workdir / f"model-{backend}.ct"
        ct_np.save_file(tensors, path, config={"enc_key": master, "sign_key": signer, "key_service": url})
        admin = AdminClient(url, (state / "admin.token").read_text().strip())
        admin.register_model(master.kid, signer.verify_key, master)
        tokens = []
        for i in range(args.clients):
            tokens.append(admin.create_token(f"client-{i}"))
            admin.grant(f"client-{i}", master.kid)
        admin.close()
        request = request_for(path)
        latencies: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()
        barrier = threading.Barrier(args.clients)

        def client(token: str) -> None:
            provider = KeyServiceProvider([url], token, timeout=60, retries=0)
            barrier.wait()
            for _ in range(args.releases):
                start = time.perf_counter()
                try:
                    provided = provider.provide(request)
                    assert provided is not None and len(provided.data_keys or {}) == args.tensors
                    with lock:
                        latencies.append(time.perf_counter() - start)
                except Exception as error:  # counted and reported, never hidden
                    with lock:
                        errors.append(f"{type(error).__name__}: {error}")

        threads = [threading.Thread(target=client, args=(t,)) for t in tokens]
        cpu_before = process_cpu_seconds(server.pid)
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
        server_cpu = process_cpu_seconds(server.pid) - cpu_before
        latencies.sort()
        return {
            "backend": backend,
            "releases": len(latencies),
            "errors": len(errors),
            "first_error": errors[0] if errors else None,
            "p50_ms": 1000 * statistics.median(latencies) if latencies else None,
            "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))] if latencies else None,
            "per_second": len(latencies) / elapsed,
            "cpu_ms_per_release": 1000 * server_cpu / max(1, len(latencies)),
        }
    finally:
        server.terminate()
        server.wait(timeout=10)
        drain.join(timeout=5)
        if bao is not None:
            bao[0].terminate()
            bao[0].wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--releases", type=int, default=3, help="releases per client")
    parser.add_argument("--tensors", type=int, default=300)
    parser.add_argument("--backend", choices=["sqlite", "openbao", "both"], default="both")
    parser.add_argument("--smoke", action="store_true", help="8 clients, SQLite only: checks the script quickly")
    args = parser.parse_args()
    if args.smoke:
        args.clients, args.releases, args.tensors, args.backend = 8, 2, 50, "sqlite"
    backends = ["sqlite", "openbao"] if args.backend == "both" else [args.backend]
    with tempfile.TemporaryDirectory() as tmp:
        results = [run_backend(b, args, Path(tmp)) for b in backends]
    print(
        f"\n{args.clients} concurrent clients x {args.releases} releases of a {args.tensors}-tensor file "
        f"({os.cpu_count()} cores, load generator on the same machine)"
    )
    print("| back end | releases | errors | p50 | p99 | releases/s | service CPU per release |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        if "skipped" in r:
            print(f"| {r['backend']} | skipped: {r['skipped']} | | | | | |")
            continue
        print(
            f"| {r['backend']} | {r['releases']} | {r['errors']} | {r['p50_ms']:.0f} ms | {r['p99_ms']:.0f} ms | "
            f"{r['per_second']:.1f} | {r['cpu_ms_per_release']:.1f} ms |"
        )
        if r["first_error"]:
            print(f"  first error: {r['first_error']}")


if __name__ == "__main__":
    main()
