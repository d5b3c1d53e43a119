"""Policy evaluation in a bounded helper process: no policy text can crash, hang or read from its caller.

One helper per process, started at the first non-default policy and reused (a 300-shard model pays one start,
about 30 ms), serialised by a lock (threads), and replaced after a fork (a forked or spawned worker starts its
own). The helper is a fresh ``python -I -S`` running :mod:`._worker` with an empty environment (no
``CRYPTOTENSOR_KEYS``, no ``BAO_TOKEN``), a deleted working directory, no inherited descriptors, and limits it
sets on itself before it reads a policy: address space (``MEMORY_LIMIT``), CPU seconds per request, no file
writes. Here, a wall-clock timeout kills it and the reply is read with a size cap. When it dies, times out or
answers nonsense the call returns a failed :class:`Outcome` and the next call starts a new helper.

Callers see :func:`run` only; :mod:`.rego` turns its outcome into the fixed, value-free messages.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import json
import marshal
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TIMEOUT_SECONDS = 2.0  # wall clock for one evaluation, compile included
CPU_SECONDS = 2.0  # CPU for one evaluation, enforced in the helper by RLIMIT_CPU
START_TIMEOUT_SECONDS = 20.0  # a cold interpreter start on a busy machine
MEMORY_LIMIT = 1 << 30  # the helper's address space (RLIMIT_AS); regorus aborts cleanly past it
MAX_POLICY_BYTES = 1 << 20
MAX_REPLY_BYTES = 64 << 10
WORKER = Path(__file__).with_name("_worker.py")
# Imported rather than run as a script, so that the helper uses its cached bytecode (compiling costs ms).
BOOTSTRAP = "import sys; sys.path.insert(0, sys.argv[1]); import _worker; _worker.main(sys.argv[2], int(sys.argv[3]))"


@dataclass(frozen=True)
class Outcome:
    """What the helper said, or why it said nothing (``status`` ``timeout`` / ``crashed`` / ``unavailable``)."""

    status: str
    reply: dict[str, Any] = field(default_factory=dict)


class EngineMissingError(RuntimeError):
    """The Rego engine package is not installed."""


def _engine_dir() -> str:
    spec = importlib.util.find_spec("regorus")  # found, not imported: the engine only runs in the helper
    if spec is None or spec.origin is None:
        raise EngineMissingError("the Rego engine is missing: pip install gordon-to-regorus")
    return str(Path(spec.origin).parent.parent)


class _Helper:
    """One running helper process and its pipes; used under :data:`_LOCK` only."""

    def __init__(self) -> None:
        self.owner = os.getpid()
        cwd = tempfile.mkdtemp(prefix="pct-policy-")
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", BOOTSTRAP, str(WORKER.parent), _engine_dir(), str(MEMORY_LIMIT)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                cwd=cwd,
                env={},
                close_fds=True,
                start_new_session=True,  # a Ctrl-C at the terminal is for the caller, not for its helper
                bufsize=0,
            )
            self.buffer = b""
            self.failure = ""
            ready = self._read_line(START_TIMEOUT_SECONDS)
        finally:
            shutil.rmtree(cwd, ignore_errors=True)  # the helper keeps a deleted directory as its cwd
        if ready is None or ready.get("status") != "ready":
            self.kill()
            raise RuntimeError("the policy helper did not start")

    def alive(self) -> bool:
        return self.owner == os.getpid() and self.process.poll() is None

    def kill(self) -> None:
        if self.owner != os.getpid():
            return  # a parent's helper, inherited through fork: not ours to end
        with contextlib.suppress(OSError):
            self.process.kill()
        for stream in (self.process.stdin, self.process.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)

    def ask(self, request: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        assert self.process.stdin is not None
        body = marshal.dumps(request)
        frame = memoryview(len(body).to_bytes(4, "big") + body)
        try:
            while frame:  # a raw pipe write may be partial (a signal, a frame larger than the pipe)
                frame = frame[self.process.stdin.write(frame) or 0 :]
        except OSError:  # BrokenPipeError: the helper ended before it read the request
            self.failure = "gone"
            return None
        return self._read_line(timeout)

    def _read_line(self, timeout: float) -> dict[str, Any] | None:
        """One reply line within ``timeout`` seconds and ``MAX_REPLY_BYTES``; None otherwise."""
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if len(self.buffer) > MAX_REPLY_BYTES:
                self.failure = "oversize"
                return None
            poller = select.poll()  # poll, not select: a big process's descriptors can be past FD_SETSIZE
            poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
            if not poller.poll(max(left, 0) * 1000):
                self.failure = "timeout"
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                self.failure = "crashed"  # the helper ended: a crash, a limit, a signal
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        try:
            reply = json.loads(line)
        except ValueError:
            self.failure = "crashed"
            return None
        return reply if isinstance(reply, dict) else None


_LOCK = threading.Lock()
_HELPER: _Helper | None = None


def _after_fork_in_child() -> None:
    """A forked child gets a fresh lock and no helper: the parent's pipes are the parent's."""
    global _LOCK, _HELPER
    _LOCK = threading.Lock()
    if _HELPER is not None:
        for stream in (_HELPER.process.stdin, _HELPER.process.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
    _HELPER = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def run(
    policy: str,
    input_json: str | None,
    *,
    diagnostics: bool = False,
    compile_only: bool = False,
    analyse: bool = False,
    timeout: float = TIMEOUT_SECONDS,
    now_ns: int | None = None,
) -> Outcome:
    """Evaluate ``data.model.allow`` for ``policy`` in the helper (starting it if needed); ``now_ns`` is what
    Rego's ``time.now_ns()`` returns (the engine's clock when None)."""
    global _HELPER
    if len(policy.encode("utf-8", "surrogatepass")) > MAX_POLICY_BYTES:
        return Outcome("too_large")
    if not hasattr(select, "poll"):  # not POSIX (Windows): no helper, so every custom policy denies
        return Outcome("unavailable")
    request = {
        "policy": policy,
        "input": input_json,
        "diagnostics": diagnostics,
        "compile_only": compile_only,
        "analyse": analyse,
        "cpu_seconds": min(CPU_SECONDS, timeout),
        "now_ns": now_ns,
    }
    with _LOCK:
        for _attempt in range(2):  # a helper that ended between two calls is replaced once, transparently
            if _HELPER is None or not _HELPER.alive():
                if _HELPER is not None:
                    _HELPER.kill()
                _HELPER = None
                try:
                    _HELPER = _Helper()
                except EngineMissingError:
                    return Outcome("engine_missing")
                except (OSError, RuntimeError):
                    return Outcome("unavailable")
            try:
                reply = _HELPER.ask(request, timeout)
            except BaseException:  # interrupted mid-request (Ctrl-C, a signal handler's exception): the helper
                _HELPER.kill()  # may still answer it, and that answer must never be read as the next call's
                _HELPER = None
                raise
            if reply is not None:
                return Outcome(str(reply.get("status", "crashed")), reply)
            failure = _HELPER.failure
            _HELPER.kill()
            _HELPER = None
            if failure != "gone":
                return Outcome("timeout" if failure == "timeout" else "crashed")
        return Outcome("crashed")


def helper_pid() -> int | None:
    """The running helper's process id (tests check it is reused, and that it is replaced after a crash)."""
    with _LOCK:
        return _HELPER.process.pid if _HELPER is not None and _HELPER.alive() else None


def stop() -> None:
    """End this process's helper (at exit; a long-lived process may call it to free the memory)."""
    global _HELPER
    with _LOCK:
        if _HELPER is not None:
            _HELPER.kill()
        _HELPER = None


atexit.register(stop)
