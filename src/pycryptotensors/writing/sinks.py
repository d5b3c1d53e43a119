"""Where a writer's bytes go: a temporary file renamed into place when complete, or memory."""

from __future__ import annotations

import contextlib
import os
import secrets
from types import TracebackType


class AtomicFile:
    """A file written under a temporary name beside ``path`` and renamed over it only on success.

    An interrupted or failed write leaves no file under the final name (and removes the temporary one when
    the process survives to clean up). Permissions follow the umask, as for an ordinary new file.
    """

    def __init__(self, path: str | os.PathLike[str], size: int, mode: int = 0o666) -> None:
        self.path = os.fspath(path)
        directory, base = os.path.split(os.path.abspath(self.path))
        self.tmp_path = os.path.join(directory, f".{base}.{secrets.token_hex(4)}.tmp")
        self.fd = os.open(self.tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
        try:
            os.ftruncate(self.fd, size)
        except BaseException:
            self._discard()
            raise

    def writeat(self, offset: int, data: memoryview) -> None:
        view = memoryview(data).cast("B")
        while view:
            written = os.pwrite(self.fd, view, offset)
            view, offset = view[written:], offset + written

    def _discard(self) -> None:
        os.close(self.fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp_path)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is not None:
            self._discard()
            return
        os.close(self.fd)
        os.replace(self.tmp_path, self.path)


class MemorySink:
    """A preallocated buffer of the file's final size."""

    def __init__(self, size: int) -> None:
        self.buffer = bytearray(size)
        self._view = memoryview(self.buffer)

    def writeat(self, offset: int, data: memoryview) -> None:
        view = memoryview(data).cast("B")
        self._view[offset : offset + len(view)] = view
