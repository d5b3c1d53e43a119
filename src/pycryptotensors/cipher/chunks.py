"""Moving tensor bytes through the cipher: chunked, parallel, straight into the destination buffer.

The bulk work releases the GIL (``os.preadv``/``os.pwrite``, ``*_into`` AEAD calls, ``hashlib`` on large
buffers), so a small thread pool runs at memory speed. Work is handed out in spans of several chunks to
keep per-task overhead negligible; each thread reuses one scratch buffer of a chunk plus a tag.

Authentication failures wipe the destination before raising: ``decrypt_into`` writes plaintext before it
checks the tag, and unauthenticated bytes must never reach a caller.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from cryptography.exceptions import InvalidTag

from ..errors import IntegrityError
from .aead import TAG_SIZE, Algorithm, chunk_nonce

SPAN_BYTES = 16 * 1024 * 1024
DIGEST_SIZE = 32  # SHA-256
_WORKERS = max(1, min(8, os.cpu_count() or 1))
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_scratch = threading.local()


class Source(Protocol):
    """Random-access bytes of a file: fills ``buf`` from absolute ``offset`` or raises FormatError."""

    def readinto(self, offset: int, buf: memoryview) -> None: ...


class Sink(Protocol):
    """Random-access output: writes ``data`` at absolute ``offset``."""

    def writeat(self, offset: int, data: memoryview) -> None: ...


@dataclass(frozen=True)
class ChunkRange:
    """Chunks ``first`` to ``stop - 1`` of a tensor of ``nbytes`` bytes, starting at file offset ``origin``."""

    origin: int
    nbytes: int
    chunk_size: int
    first: int
    stop: int

    def bounds(self, index: int) -> tuple[int, int]:
        """Byte range of chunk ``index`` within the tensor."""
        lo = index * self.chunk_size
        return lo, min(self.nbytes, lo + self.chunk_size)

    @property
    def largest_chunk(self) -> int:
        """Bytes in the biggest chunk: bounded by the tensor, whatever chunk size a header claims."""
        return min(self.chunk_size, self.nbytes)

    @property
    def byte_lo(self) -> int:
        return self.first * self.chunk_size


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="pycryptotensors")
        return _pool


def _scratch_buffer(size: int) -> memoryview:
    buf = getattr(_scratch, "buf", None)
    if buf is None or len(buf) < size:
        buf = np.empty(size, dtype=np.uint8)
        _scratch.buf = buf
    return memoryview(buf)[:size]


def _run_spans(chunks: ChunkRange, task: Callable[[int, int], None]) -> None:
    """Call ``task(first, stop)`` over spans of chunks; in parallel when there is more than one span."""
    per_span = max(1, SPAN_BYTES // chunks.chunk_size)
    spans = [(i, min(chunks.stop, i + per_span)) for i in range(chunks.first, chunks.stop, per_span)]
    if len(spans) == 1:
        task(*spans[0])
        return
    futures = [_executor().submit(task, a, b) for a, b in spans]
    errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error


def decrypt_chunks(
    source: Source,
    chunks: ChunkRange,
    alg: Algorithm,
    data_key: bytes,
    base_iv: bytes,
    tags: bytes,
    out: np.ndarray,
) -> None:
    """Decrypt and authenticate the chunks into ``out`` (uint8, starting at the first chunk's byte)."""
    view = memoryview(out)

    def task(first: int, stop: int) -> None:
        cipher = alg.new(data_key)
        scratch = _scratch_buffer(chunks.largest_chunk + TAG_SIZE)
        for index in range(first, stop):
            lo, hi = chunks.bounds(index)
            size = hi - lo
            source.readinto(chunks.origin + lo, scratch[:size])
            scratch[size : size + TAG_SIZE] = tags[index * TAG_SIZE : (index + 1) * TAG_SIZE]
            dst = lo - chunks.byte_lo
            cipher.decrypt_into(chunk_nonce(base_iv, index), scratch[: size + TAG_SIZE], None, view[dst : dst + size])

    try:
        _run_spans(chunks, task)
    except InvalidTag:
        out.fill(0)
        raise IntegrityError(
            "an encrypted chunk failed authentication: the file was modified (or its data key is wrong)"
        ) from None
    except BaseException:
        out.fill(0)
        raise


def decrypt_whole(
    source: Source, origin: int, nbytes: int, alg: Algorithm, data_key: bytes, iv: bytes, tag: bytes
) -> np.ndarray:
    """Version 1: one AEAD call over the whole tensor, decrypted in place. Returns a uint8 array."""
    buf = np.empty(nbytes + TAG_SIZE, dtype=np.uint8)
    view = memoryview(buf)
    source.readinto(origin, view[:nbytes])
    view[nbytes:] = tag
    try:
        alg.new(data_key).decrypt_into(iv, view, None, view[:nbytes])
    except InvalidTag:
        buf.fill(0)
        raise IntegrityError("an encrypted tensor failed authentication: the file was modified") from None
    return buf[:nbytes]


def read_plain(source: Source, chunks: ChunkRange, out: np.ndarray, digests: bytes | None) -> None:
    """Read plaintext chunks into ``out``; with (concatenated) digests, check each chunk's SHA-256."""
    view = memoryview(out)

    def task(first: int, stop: int) -> None:
        lo = chunks.bounds(first)[0]
        hi = chunks.bounds(stop - 1)[1]
        region = view[lo - chunks.byte_lo : hi - chunks.byte_lo]
        source.readinto(chunks.origin + lo, region)
        if digests is None:
            return
        for index in range(first, stop):
            a, b = chunks.bounds(index)
            expected = digests[index * DIGEST_SIZE : (index + 1) * DIGEST_SIZE]
            if not hmac.compare_digest(
                hashlib.sha256(view[a - chunks.byte_lo : b - chunks.byte_lo]).digest(), expected
            ):
                raise IntegrityError(f"an unencrypted chunk ({index}) does not match its signed digest")

    try:
        _run_spans(chunks, task)
    except BaseException:
        out.fill(0)
        raise


def encrypt_chunks(
    sink: Sink, chunks: ChunkRange, alg: Algorithm, data_key: bytes, base_iv: bytes, data: memoryview
) -> list[bytes]:
    """Encrypt every chunk of ``data`` (a whole tensor) to ``sink``; returns the tags in chunk order."""
    tags: list[bytes] = [b""] * (chunks.stop - chunks.first)

    def task(first: int, stop: int) -> None:
        cipher = alg.new(data_key)
        scratch = _scratch_buffer(chunks.largest_chunk + TAG_SIZE)
        for index in range(first, stop):
            lo, hi = chunks.bounds(index)
            size = hi - lo
            cipher.encrypt_into(chunk_nonce(base_iv, index), data[lo:hi], None, scratch[: size + TAG_SIZE])
            sink.writeat(chunks.origin + lo, scratch[:size])
            tags[index] = bytes(scratch[size : size + TAG_SIZE])

    _run_spans(chunks, task)
    return tags


def write_plain(sink: Sink, chunks: ChunkRange, data: memoryview, with_digests: bool) -> list[bytes]:
    """Copy a plaintext tensor to ``sink``; returns its per-chunk SHA-256 digests when asked."""
    digests: list[bytes] = [b""] * (chunks.stop - chunks.first)

    def task(first: int, stop: int) -> None:
        lo, hi = chunks.bounds(first)[0], chunks.bounds(stop - 1)[1]
        sink.writeat(chunks.origin + lo, data[lo:hi])
        if with_digests:
            for index in range(first, stop):
                a, b = chunks.bounds(index)
                digests[index] = hashlib.sha256(data[a:b]).digest()

    _run_spans(chunks, task)
    return digests
