"""Moving tensor bytes through the cipher: chunked, parallel, straight into the destination buffer.

The bulk work releases the GIL (``os.preadv``/``os.pwrite``, ``*_into`` AEAD calls, ``hashlib`` on large
buffers), so a small thread pool runs at memory speed. Work is handed out in spans of several chunks to
keep per-task overhead negligible; each thread reuses one scratch buffer of a chunk plus a tag.

Authentication failures wipe the destination before raising: ``decrypt_into`` writes plaintext before it
checks the tag, and unauthenticated bytes must never reach a caller. No AEAD call ever has overlapping input
and output (``cryptography`` 51 refuses them), and whatever the library raises leaves as one of our errors
(:func:`~.aead.cipher_errors`).
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

from ..errors import IntegrityError
from ..format.algorithms import TAG_SIZE, Algorithm
from .aead import chunk_nonce, cipher_errors, gcm_decryptor, gcm_encryptor, new_cipher

SPAN_BYTES = 16 * 1024 * 1024
STREAM_PIECE = 1024 * 1024  # version 1, AES-GCM: ciphertext passes through a cache-hot buffer of this size
_GCM_SLACK = 15  # ``update_into`` wants room for a block beyond the input, although GCM writes none
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
    return buf.data[:size]  # ndarray.data: memoryview(array), typed (numpy types __buffer__ from 3.12 only)


def _run_spans(chunks: ChunkRange, task: Callable[[int, int], None], source: object = None) -> None:
    """Call ``task(first, stop)`` over spans of chunks; in parallel when there is more than one span.

    A remote source (reading/remote.py) sets the span size (one range request each) and its own pool (its
    request concurrency, independent of the CPU count)."""
    per_span = max(1, getattr(source, "span_bytes", SPAN_BYTES) // chunks.chunk_size)
    spans = [(i, min(chunks.stop, i + per_span)) for i in range(chunks.first, chunks.stop, per_span)]
    if len(spans) == 1:
        task(*spans[0])
        return
    pool = getattr(source, "executor", None) or _executor()
    futures = [pool.submit(task, a, b) for a, b in spans]
    errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error


def _sequential(source: Source, offset: int, length: int) -> Source:
    """The source to read ``[offset, offset + length)`` front to back: a remote source streams it with one
    request (each chunk decrypted as soon as it is in); a local file reads positionally as it is."""
    span = getattr(source, "span", None)
    return span(offset, length) if span is not None else source


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
    view = out.data

    def task(first: int, stop: int) -> None:
        cipher = new_cipher(alg, data_key)
        scratch = _scratch_buffer(chunks.largest_chunk + TAG_SIZE)
        span_lo, span_hi = chunks.bounds(first)[0], chunks.bounds(stop - 1)[1]
        reader = _sequential(source, chunks.origin + span_lo, span_hi - span_lo)
        for index in range(first, stop):
            lo, hi = chunks.bounds(index)
            size = hi - lo
            reader.readinto(chunks.origin + lo, scratch[:size])
            scratch[size : size + TAG_SIZE] = tags[index * TAG_SIZE : (index + 1) * TAG_SIZE]
            dst = lo - chunks.byte_lo
            cipher.decrypt_into(chunk_nonce(base_iv, index), scratch[: size + TAG_SIZE], None, view[dst : dst + size])

    try:
        with cipher_errors("an encrypted chunk"):
            _run_spans(chunks, task, source)
    except BaseException:
        out.fill(0)
        _never_lend_again(out)
        raise


def borrowed_output(size: int) -> np.ndarray | None:
    """This thread's reusable plaintext buffer, ``size`` bytes of it, for a slice that copies its selection
    out at once: no allocation (and no page faults on fresh memory) per call. Valid until this thread's next
    call. None above ``SPAN_BYTES`` (then allocate). It is never the ciphertext scratch buffer, so an AEAD
    call into it never has overlapping input and output; :func:`decrypt_chunks` wipes it on a failed tag.
    """
    if size > SPAN_BYTES:
        return None
    buf = getattr(_scratch, "plain", None)
    if buf is None or len(buf) < size:
        buf = _scratch.plain = np.empty(max(size, STREAM_PIECE), dtype=np.uint8)
    return buf[:size]


def _never_lend_again(out: np.ndarray) -> None:
    """Retire this thread's lent buffer when ``out`` is it: a call that failed while waiting for the pool (an
    interrupt) can leave a task running that still writes plaintext into it, which must not land in the
    result of the thread's next call. That call gets a fresh buffer."""
    if out.base is not None and out.base is getattr(_scratch, "plain", None):
        _scratch.plain = None


def decrypt_whole(
    source: Source, origin: int, nbytes: int, alg: Algorithm, data_key: bytes, iv: bytes, tag: bytes
) -> np.ndarray:
    """Version 1: one AEAD over the whole tensor. Returns a uint8 array of ``nbytes``.

    AES-GCM streams: ciphertext pieces pass through a small scratch buffer straight into the output and the
    tag is checked at the end, so a tensor costs its own size and no more, at the speed the old in-place
    decryption had. ChaCha20-Poly1305 has no incremental interface in ``cryptography``, so its ciphertext
    takes one buffer of the tensor's size beside the output while it is decrypted.
    """
    out = np.empty(nbytes + _GCM_SLACK, dtype=np.uint8)
    view = out.data
    try:
        with cipher_errors("an encrypted tensor"):
            if alg.streams:
                decryptor = gcm_decryptor(data_key, iv, tag)
                scratch = _scratch_buffer(min(STREAM_PIECE, nbytes))
                reader = _sequential(source, origin, nbytes)
                for lo in range(0, nbytes, STREAM_PIECE):
                    size = min(STREAM_PIECE, nbytes - lo)
                    reader.readinto(origin + lo, scratch[:size])
                    decryptor.update_into(scratch[:size], view[lo : lo + size + _GCM_SLACK])
                decryptor.finalize()
            else:
                sealed = np.empty(nbytes + TAG_SIZE, dtype=np.uint8)
                source.readinto(origin, sealed.data[:nbytes])
                sealed[nbytes:] = np.frombuffer(tag, dtype=np.uint8)
                new_cipher(alg, data_key).decrypt_into(iv, sealed.data, None, view[:nbytes])
    except BaseException:
        out.fill(0)
        raise
    return out[:nbytes]


def encrypt_whole(sink: Sink, origin: int, alg: Algorithm, data_key: bytes, iv: bytes, data: memoryview) -> bytes:
    """Version 1: encrypt a whole tensor to ``sink`` at ``origin``; returns its tag.

    AES-GCM streams through a scratch buffer (constant memory); ChaCha20-Poly1305 needs one sealed copy.
    """
    with cipher_errors("encrypting a tensor"):
        if not alg.streams:
            sealed = new_cipher(alg, data_key).encrypt(iv, data, None)
            sink.writeat(origin, memoryview(sealed)[: len(data)])
            return sealed[len(data) :]
        encryptor = gcm_encryptor(data_key, iv)
        scratch = _scratch_buffer(min(STREAM_PIECE, len(data)) + _GCM_SLACK)
        for lo in range(0, len(data), STREAM_PIECE):
            piece = data[lo : lo + STREAM_PIECE]
            written = encryptor.update_into(piece, scratch)
            sink.writeat(origin + lo, scratch[:written])
        encryptor.finalize()
        return encryptor.tag


def read_plain(source: Source, chunks: ChunkRange, out: np.ndarray, digests: bytes | None) -> None:
    """Read plaintext chunks into ``out``; with (concatenated) digests, check each chunk's SHA-256."""
    view = out.data

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
        _run_spans(chunks, task, source)
    except BaseException:
        out.fill(0)
        raise


def encrypt_chunks(
    sink: Sink, chunks: ChunkRange, alg: Algorithm, data_key: bytes, base_iv: bytes, data: memoryview
) -> list[bytes]:
    """Encrypt every chunk of ``data`` (a whole tensor) to ``sink``; returns the tags in chunk order."""
    tags: list[bytes] = [b""] * (chunks.stop - chunks.first)

    def task(first: int, stop: int) -> None:
        cipher = new_cipher(alg, data_key)
        scratch = _scratch_buffer(chunks.largest_chunk + TAG_SIZE)
        for index in range(first, stop):
            lo, hi = chunks.bounds(index)
            size = hi - lo
            cipher.encrypt_into(chunk_nonce(base_iv, index), data[lo:hi], None, scratch[: size + TAG_SIZE])
            sink.writeat(chunks.origin + lo, scratch[:size])
            tags[index] = bytes(scratch[size : size + TAG_SIZE])

    with cipher_errors("encrypting a chunk"):
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
