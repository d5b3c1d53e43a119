"""Where a writer's bytes go: a temporary file renamed into place when complete, or memory.

Every file the package writes goes through here, so the rules hold everywhere:

- A temporary file is created beside its final name with ``O_CREAT|O_EXCL|O_NOFOLLOW`` under a random name
  ``.pycryptotensors-tmp-HOST-PID-RANDOM.tmp``: it can neither follow a symbolic link planted in the output
  folder nor reuse a file someone else made. It is renamed over the final name only when complete, and a
  rename replaces a symbolic link at the final name instead of writing through it.
- A failure removes the temporary file. A run killed with SIGKILL leaves at most that one temporary entry;
  the next run that writes into the same folder removes it (:func:`remove_stale_temps`) once its owner
  process is gone (same host) or it has not been touched for a day.
- A whole output folder is built in one temporary folder beside it (:class:`StagedDirectory`) and moved into
  place at the end, so a failed or killed directory run leaves no half-made model under the final name.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import shutil
import socket
import time
from pathlib import Path
from types import TracebackType

TEMP_PREFIX = ".pycryptotensors-tmp-"
STALE_SECONDS = 24 * 3600  # a temporary entry untouched this long is stale even if its owner cannot be checked
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_TEMP_NAME = re.compile(r"\.pycryptotensors-tmp-([0-9a-f]{8})-(\d+)-[0-9a-f]{16}\.tmp\Z")
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_DIRECTORY = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
COPY_BLOCK = 16 * 1024 * 1024


def temp_name() -> str:
    """A fresh temporary name: recognisable, unguessable, and naming its owner (host hash and PID)."""
    return f"{TEMP_PREFIX}{_HOST}-{os.getpid()}-{secrets.token_hex(8)}.tmp"


def is_temp_name(name: str) -> bool:
    return _TEMP_NAME.match(name) is not None


def _owner_gone(host: str, pid: int, mtime: float) -> bool:
    if time.time() - mtime > STALE_SECONDS:
        return True
    if host != _HOST or pid == os.getpid():
        return False  # another machine's process (shared folder) cannot be checked from here
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False


def remove_stale_temps(directory: str | os.PathLike[str]) -> list[str]:
    """Remove the temporary entries of killed runs from ``directory``; returns their names."""
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None:
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if not _owner_gone(match[1], int(match[2]), info.st_mtime):
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except FileNotFoundError:
            continue  # another run removed it first
        removed.append(entry.name)
    return removed


def create_exclusive(path: str | os.PathLike[str], mode: int | None = None) -> int:
    """Open a new file for writing; never an existing file, never through a symbolic link.

    ``mode`` None: 0666 less the umask, as for any new file. Otherwise exactly ``mode``, whatever the umask.
    """
    fd = os.open(path, _CREATE, 0o666 if mode is None else mode)
    if mode is not None:
        try:
            os.fchmod(fd, mode)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
    return fd


class AtomicFile:
    """A file written under a temporary name beside ``path`` and renamed over it only on success.

    An interrupted or failed write leaves no file under the final name (and removes the temporary one when
    the process survives to clean up). ``mode`` as in :func:`create_exclusive`; ``sync`` flushes the data to
    disk before the rename (for key files: a crash must not leave an empty key under the final name).
    """

    def __init__(self, path: str | os.PathLike[str], size: int, mode: int | None = None, sync: bool = False) -> None:
        self.path = os.fspath(path)
        self.sync = sync
        directory = os.path.dirname(os.path.abspath(self.path))
        remove_stale_temps(directory)
        self.tmp_path = os.path.join(directory, temp_name())
        self.fd = create_exclusive(self.tmp_path, mode)
        try:
            if size:
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
        with contextlib.suppress(OSError):
            os.close(self.fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp_path)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is not None:
            self._discard()
            return
        try:
            if self.sync:
                os.fsync(self.fd)
            os.close(self.fd)
            os.replace(self.tmp_path, self.path)
        except BaseException:
            self._discard()
            raise


def copy_range(src_fd: int, dst_fd: int, src_offset: int, dst_offset: int, length: int) -> None:
    """Copy ``length`` bytes between files, kernel-side where the OS allows."""
    done = 0
    while done < length:
        count = min(COPY_BLOCK, length - done)
        try:
            moved = os.copy_file_range(src_fd, dst_fd, count, src_offset + done, dst_offset + done)
        except OSError:  # another file system, or no kernel support: copy through user space
            moved = os.pwrite(dst_fd, os.pread(src_fd, count, src_offset + done), dst_offset + done)
        if moved == 0:
            raise OSError(f"source file ended while copying ({done} of {length} bytes)")
        done += moved


def copy_file(src: str | os.PathLike[str], dst: str | os.PathLike[str], mode: int | None = None) -> None:
    """Copy a file's content (following a symbolic link at ``src``, as in a Hugging Face cache snapshot)
    under a temporary name and rename it into place; a link at ``dst`` is replaced, never written through."""
    with open(src, "rb") as source:
        size = os.fstat(source.fileno()).st_size
        with AtomicFile(dst, size, mode) as sink:
            copy_range(source.fileno(), sink.fd, 0, 0, size)


def write_atomic(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    """Write a small file (a key, a token) atomically with exactly ``mode``, synced before the rename.

    An existing file is replaced by a new one (so a 0644 file becomes 0600), and a symbolic link at
    ``path`` is replaced, not followed.
    """
    with AtomicFile(path, 0, mode, sync=True) as sink:
        sink.writeat(0, memoryview(data))


def make_parents(directory: Path) -> list[Path]:
    """Create ``directory`` and missing parents; returns those created, outermost first (for :func:`remove_dirs`)."""
    missing = []
    for candidate in [directory, *directory.parents]:
        if os.path.lexists(candidate):
            break
        missing.append(candidate)
    directory.mkdir(parents=True, exist_ok=True)
    return missing[::-1]


def remove_dirs(created: list[Path]) -> None:
    """Undo :func:`make_parents` after a failure: remove the folders it made, if still empty."""
    for directory in reversed(created):
        with contextlib.suppress(OSError):
            directory.rmdir()


def _open_subdir(parent_fd: int, name: str, where: Path, create: bool) -> int:
    try:
        return os.open(name, _DIRECTORY, dir_fd=parent_fd)
    except FileNotFoundError:
        if not create:
            raise
        os.mkdir(name, 0o777, dir_fd=parent_fd)
        return os.open(name, _DIRECTORY, dir_fd=parent_fd)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            refusal = "not a folder (a symbolic link?): refusing to write through it"
            raise OSError(error.errno, refusal, str(where)) from None
        raise


class StagedDirectory:
    """An output folder built under a temporary name beside ``final`` and moved into place on success.

    When ``final`` does not exist it is one rename. When it does (``--force``, or an in-place rewrap), each
    staged file is renamed over its counterpart, walking ``final`` with ``O_NOFOLLOW`` folder handles so a
    symbolic link planted there is never followed; other files in ``final`` are left alone. ``private``
    makes the staged folder 0700 (decrypted weights).
    """

    def __init__(self, final: str | os.PathLike[str], private: bool = False) -> None:
        self.final = Path(os.path.abspath(final))
        self.private = private
        self._created = make_parents(self.final.parent)
        remove_stale_temps(self.final.parent)
        self.root = self.final.parent / temp_name()
        try:
            os.mkdir(self.root, 0o700 if private else 0o777)
        except BaseException:
            remove_dirs(self._created)
            raise

    def path(self, relative: str | os.PathLike[str]) -> Path:
        """Where to write the file that ends up at ``final / relative`` (its folders are created)."""
        target = self.root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def _staged_files(self) -> list[Path]:
        return sorted(p.relative_to(self.root) for p in self.root.rglob("*") if not p.is_dir())

    def _merge(self) -> None:
        files = self._staged_files()
        root_fd = os.open(self.final, _DIRECTORY & ~getattr(os, "O_NOFOLLOW", 0))  # the folder named by the user
        try:
            for relative in files:  # check every place first, so a refusal changes nothing
                current = self.final
                for part in relative.parts[:-1]:
                    current = current / part
                    if os.path.lexists(current) and (os.path.islink(current) or not current.is_dir()):
                        refusal = "not a folder (a symbolic link?): refusing to write through it"
                        raise OSError(errno.ENOTDIR, refusal, str(current))
                if (self.final / relative).is_dir() and not (self.final / relative).is_symlink():
                    raise IsADirectoryError(errno.EISDIR, "a folder is in the way", str(self.final / relative))
            for relative in files:
                fds = [root_fd]
                try:
                    where = self.final
                    for part in relative.parts[:-1]:
                        where = where / part
                        fds.append(_open_subdir(fds[-1], part, where, create=True))
                    os.replace(self.root / relative, relative.name, dst_dir_fd=fds[-1])
                finally:
                    for fd in fds[1:]:
                        os.close(fd)
        finally:
            os.close(root_fd)

    def commit(self) -> None:
        if not os.path.lexists(self.final):
            os.rename(self.root, self.final)
            return
        self._merge()
        shutil.rmtree(self.root, ignore_errors=True)

    def discard(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        remove_dirs(self._created)

    def __enter__(self) -> StagedDirectory:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is not None:
            self.discard()
            return
        try:
            self.commit()
        except BaseException:
            self.discard()
            raise


class MemorySink:
    """A preallocated buffer of the file's final size."""

    def __init__(self, size: int) -> None:
        self.buffer = bytearray(size)
        self._view = memoryview(self.buffer)

    def writeat(self, offset: int, data: memoryview) -> None:
        view = memoryview(data).cast("B")
        self._view[offset : offset + len(view)] = view
