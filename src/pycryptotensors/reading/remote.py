"""Byte sources for files in object storage and on web servers: range reads, pinned to one object version.

A :class:`RemoteSource` is what :class:`~.source.FileSource` is for a local file: ``size``, positional
``readinto`` and a ``path`` for messages (the URL without userinfo or query string: a presigned URL's
signature never reaches a message or a log). The reader asks it only for the bytes a load needs:

* opening costs one request, a speculative read of the first block (``first_block``, 64 KiB), which holds the
  8-byte length and the header of most files, and gives the object's size and version; a longer header costs
  a second request;
* a tensor, or a slice's covering chunks, is one range request per span; a span is streamed and each chunk is
  decrypted as soon as its bytes have arrived (:meth:`RemoteSource.span`), so a whole-file load needs no
  temporary copy of the file; spans run in parallel, at most ``concurrency`` requests at a time.

Every range request carries the version fixed at open (``If-Match`` with the ETag, and the S3 version id when
the bucket has versions): an object replaced while it is read gives :class:`~..errors.IntegrityError`, never
bytes of two versions. Short bodies, resets, timeouts and 5xx/429 answers are retried with bounded exponential
backoff, resuming at the first byte not yet delivered; after the last try :class:`~..errors.RemoteSourceError`
names the URL and what to do. Bytes are authenticated by the reader as for local files in any case.

Transports (reading/transports.py): ``s3://``, ``gs://``, ``az://`` use obstore (Rust ``object_store``, from
``pip install 'pycryptotensors[remote]'``; each cloud's standard credential chain: environment, config files,
instance or workload identity); ``https://``, ``http://`` (with a warning) and ``hf://`` use httpx. Nothing
here is imported until a URL is opened.
"""

from __future__ import annotations

import functools
import os
import random
import threading
import time
import warnings
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ..errors import FormatError, IntegrityError, RemoteSourceError
from .transports import ChangedError, HttpTransport, ObjectStoreTransport, TransientError, hf_url, redact

T = TypeVar("T")
SCHEMES = ("s3", "gs", "az", "hf", "https", "http")
_OBJECT_STORES = ("s3", "gs", "az")


def _env_int(name: str, default: int, low: int) -> int:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise RemoteSourceError(f"{name}={value!r} is not an integer") from None
    if number < low:
        raise RemoteSourceError(f"{name} must be at least {low}")
    return number


@dataclass(frozen=True)
class RemoteOptions:
    """How remote reads behave. Defaults come from ``PYCRYPTOTENSORS_REMOTE_CONCURRENCY`` (8),
    ``PYCRYPTOTENSORS_REMOTE_RETRIES`` (4) and ``PYCRYPTOTENSORS_REMOTE_TIMEOUT`` (seconds, 30)."""

    concurrency: int = 8  # range requests in flight at once, per open file
    retries: int = 4  # further tries of a request after a transient failure
    timeout: float = 30.0  # connect / read timeout of one request
    backoff: float = 0.2  # first retry delay (seconds); doubles each try, with jitter
    max_backoff: float = 5.0
    first_block: int = 64 * 1024  # the speculative first read: 8-byte length and (usually) the whole header
    span_bytes: int = 8 * 1024 * 1024  # bytes per streamed range request of a large read

    @classmethod
    def from_env(cls) -> RemoteOptions:
        return cls(
            concurrency=_env_int("PYCRYPTOTENSORS_REMOTE_CONCURRENCY", cls.concurrency, 1),
            retries=_env_int("PYCRYPTOTENSORS_REMOTE_RETRIES", cls.retries, 0),
            timeout=float(_env_int("PYCRYPTOTENSORS_REMOTE_TIMEOUT", int(cls.timeout), 1)),
        )


class RemoteSource:
    """A file in object storage or on a web server, read by ranges and pinned to the version seen at open."""

    remote = True
    local_path: str | None = None  # set for a shard of a remote model, opened through its cache folder

    def __init__(self, url: str, options: RemoteOptions | None = None) -> None:
        scheme = urlsplit(url).scheme.lower()
        if scheme not in SCHEMES:
            raise RemoteSourceError(f"{redact(url)}: unsupported URL scheme; use one of {', '.join(SCHEMES)}")
        self.options = options or RemoteOptions.from_env()
        self.path = redact(url)
        self.requests = 0  # range requests sent (tries included): what the tests and the benchmark count
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        if scheme == "http":
            warnings.warn(f"{self.path}: plain HTTP: authenticated, but not private in transit", stacklevel=3)
        if scheme in _OBJECT_STORES:
            self._transport: ObjectStoreTransport | HttpTransport = ObjectStoreTransport(url, self.options)
        elif scheme == "hf":
            resolved, headers = hf_url(url)
            self._transport = HttpTransport(resolved, self.options, headers)
        else:
            self._transport = HttpTransport(url, self.options)
        self._pin: tuple[str | None, str | None] | None = None
        self.size = 0
        head = bytearray(self.options.first_block)
        try:
            got = self._fetch(0, memoryview(head), opening=True)
        except BaseException:
            self._transport.close()
            raise
        self._head = bytes(head[:got])

    # -- what the reader uses ---------------------------------------------------------------------------------

    @property
    def span_bytes(self) -> int:
        """How much one parallel task streams with one request (read by cipher.chunks)."""
        return self.options.span_bytes

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The pool that runs this file's spans: ``concurrency`` requests in flight, whatever the CPU count."""
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.options.concurrency, thread_name_prefix="ct-remote")
        return self._pool

    def readinto(self, offset: int, buf: memoryview) -> None:
        end = offset + len(buf)
        if end > self.size:
            raise FormatError(f"{self.path}: the object ended early (it is {self.size} bytes)")
        if end <= len(self._head):
            buf[:] = self._head[offset:end]
            return
        if len(buf):
            self._fetch(offset, buf)

    def read(self, offset: int, size: int) -> bytes:
        buf = bytearray(size)
        self.readinto(offset, memoryview(buf))
        return bytes(buf)

    def span(self, offset: int, length: int) -> _Span:
        """A sequential reader of ``[offset, offset + length)``: one streamed request serves all its chunks."""
        return _Span(self, offset, length)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
        self._transport.close()

    # -- requests ---------------------------------------------------------------------------------------------

    def _fetch(self, offset: int, buf: memoryview, opening: bool = False) -> int:
        """Fill ``buf`` from ``offset`` (at open: as much of it as the object has); returns the bytes filled.
        A try that fails part-way is resumed at the first byte not yet filled."""
        done = 0

        def attempt() -> int:
            nonlocal done
            for piece in self._open_range(offset + done, offset + len(buf), opening and done == 0):
                n = len(piece)
                if done + n > len(buf):
                    raise RemoteSourceError(f"{self.path}: the server sent more bytes than the range asked")
                buf[done : done + n] = piece
                done += n
            wanted = min(len(buf), self.size - offset)
            if done != wanted:
                raise TransientError(f"short body: {done} of {wanted} bytes")
            return done

        return self._retrying(offset, attempt)

    def _open_range(self, start: int, end: int, opening: bool = False) -> Generator[Any, None, None]:
        """Send one range request (pinned to the version seen at open) and return its body's pieces."""
        with self._lock:
            self.requests += 1
        try:
            answer = self._transport.get(start, end, None if opening and self._pin is None else self._pin)
        except ChangedError:
            raise self._changed() from None
        if self._pin is None:
            self.size, self._pin = answer.size, (answer.etag, answer.version_id)
        elif answer.size != self.size or (answer.etag and self._pin[0] and answer.etag != self._pin[0]):
            raise self._changed()  # a server that ignored If-Match
        return answer.pieces

    def _retrying(self, offset: int, attempt: Callable[[], T]) -> T:
        """``attempt()``, tried again after a transient failure with exponential backoff and jitter."""
        options = self.options
        last = ""
        for number in range(options.retries + 1):
            if number:
                delay = min(options.max_backoff, options.backoff * 2 ** (number - 1))
                time.sleep(delay * (0.5 + random.random() / 2))
            try:
                return attempt()
            except TransientError as error:
                last = str(error)
        raise RemoteSourceError(
            f"{self.path}: reading at byte {offset} failed after {options.retries + 1} tries ({last}); check the "
            "network and the server, then try again (PYCRYPTOTENSORS_REMOTE_RETRIES sets the number of tries)"
        )

    def _changed(self) -> IntegrityError:
        return IntegrityError(
            f"{self.path}: the object changed while it was being read (its version is no longer the one seen "
            "when it was opened); nothing of it was used: open it again"
        )


def fetch_all(
    source: RemoteSource, names: list[str], get: Callable[[str], T], nbytes: Callable[[str], int]
) -> dict[str, T]:
    """Every tensor of a remote file, as one pipeline of at most ``concurrency`` requests: a tensor of one span
    is fetched by a task on the source's request pool; a larger one by a driver thread that only waits for its
    spans, which run on that same pool. No pause between tensors. Returned in the order of ``names``."""
    pool = source.executor
    futures = {name: pool.submit(get, name) for name in names if nbytes(name) <= source.span_bytes}
    large = [name for name in names if name not in futures]
    with (
        _progress(source.path, sum(nbytes(name) for name in names)) as bar,
        ThreadPoolExecutor(max(1, min(4, len(large))), thread_name_prefix="ct-remote-tensors") as drivers,
    ):
        futures.update({name: drivers.submit(get, name) for name in large})
        for name, future in futures.items():
            future.add_done_callback(functools.partial(_advance, bar, nbytes(name)))
        try:
            return {name: futures[name].result() for name in names}
        except BaseException:
            for future in futures.values():
                future.cancel()  # after a failure, what has not started does not start
            raise


def _advance(bar: Any, size: int, _future: object) -> None:
    bar.update(size)


def _progress(path: str, total: int) -> Any:
    """A tqdm bar on stderr for a long transfer (64 MiB or more) when progress bars are allowed (stderr a
    terminal, no PYCRYPTOTENSORS_NO_PROGRESS, no -q: ``_log.progress_allowed``); else a no-op."""
    from tqdm import tqdm

    from .._log import progress_allowed

    quiet = total < 64 * 1024 * 1024 or not progress_allowed()
    return tqdm(total=total, unit="B", unit_scale=True, desc=path.rsplit("/", 1)[-1], disable=quiet, leave=False)


class _Span:
    """One streamed range request serving consecutive ``readinto`` calls (the chunks of a span), so each
    chunk is decrypted as soon as its bytes are in. A failure resumes at the first byte not yet delivered."""

    def __init__(self, source: RemoteSource, offset: int, length: int) -> None:
        self.source, self.next, self.end = source, offset, offset + length
        self._pieces: Generator[Any, None, None] | None = None
        self._rest = memoryview(b"")

    def readinto(self, offset: int, buf: memoryview) -> None:
        if offset != self.next or offset + len(buf) > self.end or offset + len(buf) <= len(self.source._head):
            self.source.readinto(offset, buf)  # not the sequential pattern (or in the first block already)
            self.next = offset + len(buf) if offset == self.next else self.next
            return
        self.source._retrying(offset, lambda: self._fill(buf[self.next - offset :]))

    def _fill(self, buf: memoryview) -> None:
        """Copy the stream's next bytes into ``buf``; on failure, ``buf`` and ``next`` say what is still due."""
        filled = 0
        try:
            while filled < len(buf):
                if not len(self._rest):
                    if self._pieces is None:
                        self._pieces = self.source._open_range(self.next + filled, self.end)
                    piece = next(self._pieces, None)
                    if piece is None:
                        raise TransientError(f"short body: ended {self.end - self.next - filled} bytes early")
                    self._rest = memoryview(piece).cast("B")
                n = min(len(self._rest), len(buf) - filled)
                buf[filled : filled + n] = self._rest[:n]
                self._rest, filled = self._rest[n:], filled + n
        except BaseException:
            self._pieces, self._rest = None, memoryview(b"")  # the next try asks from the first byte still due
            self.next += filled
            raise
        self.next += filled
        if self.next == self.end and self._pieces is not None:
            self._pieces.close()  # hands the connection back to the pool
            self._pieces = None
