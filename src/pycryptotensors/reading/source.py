"""Where a file's bytes come from: an open file (positional reads, thread-safe) or bytes in memory."""

from __future__ import annotations

import os
from typing import Protocol

from ..errors import FormatError


class ByteSource(Protocol):
    """What the reader needs of a file: its size, positional reads, and a name for messages."""

    path: str
    size: int

    def readinto(self, offset: int, buf: memoryview) -> None: ...

    def read(self, offset: int, size: int) -> bytes: ...

    def close(self) -> None: ...


class FileSource:
    """Positional reads with ``os.preadv``: no shared file position, so threads can read at once."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self.size = os.fstat(self.fd).st_size

    def readinto(self, offset: int, buf: memoryview) -> None:
        done = 0
        while done < len(buf):
            got = os.preadv(self.fd, [buf[done:]], offset + done)
            if got == 0:
                raise FormatError(f"{self.path}: file ended early (truncated while being read)")
            done += got

    def read(self, offset: int, size: int) -> bytes:
        buf = bytearray(size)
        self.readinto(offset, memoryview(buf))
        return bytes(buf)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


_URL_SCHEMES = ("s3://", "gs://", "az://", "hf://", "https://", "http://")


def is_url(target: object) -> bool:
    """True for the URLs :func:`open_source` reads remotely (``s3://``, ``gs://``, ``az://``, ``hf://``, ``http(s)://``)."""
    return isinstance(target, str) and target[:8].lower().startswith(_URL_SCHEMES)


def open_source(target: str | os.PathLike[str]) -> ByteSource:
    """A FileSource for a path, a RemoteSource for a URL (imported only then: the core needs no remote extra),
    or for a shard placeholder in a remote model's cache folder (model/remote.py) the shard's URL."""
    if is_url(target):
        from .remote import RemoteSource

        return RemoteSource(str(target))
    pointer = remote_pointer(target)
    if pointer is not None:
        from ..model.remote import open_cached_shard

        return open_cached_shard(pointer, target)
    return FileSource(target)


def remote_pointer(target: str | os.PathLike[str]) -> str | None:
    """The record of a remote model's cache folder that ``target`` (a shard there) belongs to, if any: its
    folder or the one above (sub-model shards) holds ``.cache/pycryptotensors-remote.json``. Two stats."""
    folder = os.path.dirname(os.path.abspath(target))
    for _ in range(2):
        candidate = os.path.join(folder, ".cache", "pycryptotensors-remote.json")
        if os.path.isfile(candidate):
            return candidate
        folder = os.path.dirname(folder)
    return None


class BytesSource:
    """A file held in memory (``load(bytes)``)."""

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self.data = memoryview(data).cast("B")
        self.size = len(self.data)
        self.path = "<bytes>"

    def readinto(self, offset: int, buf: memoryview) -> None:
        end = offset + len(buf)
        if end > self.size:
            raise FormatError("data ended early (truncated)")
        buf[:] = self.data[offset:end]

    def read(self, offset: int, size: int) -> bytes:
        if offset + size > self.size:
            raise FormatError("data ended early (truncated)")
        return bytes(self.data[offset : offset + size])

    def close(self) -> None:
        """Nothing to release: the caller owns the bytes."""
