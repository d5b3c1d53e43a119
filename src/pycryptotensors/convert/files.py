"""Converting whole files and model directories: plain safetensors -> CryptoTensors and back.

Tensor bytes are streamed from a memory map of the source, never loaded whole, and no framework is needed,
so any dtype converts. In a Hugging Face model directory every ``*.safetensors`` shard is converted and every
other file (config, tokenizer, the shard index, which stays valid because shard names and tensor names do not
change) is copied; version-control and cache folders (``.git``, ``.cache``, ...) are left out, because a
``.git`` folder's objects hold the plaintext model. Symbolic links in the input (a Hugging Face cache
snapshot is made of links into ``../../blobs``) are followed; the output holds regular files only.

Outputs are atomic (see :mod:`pycryptotensors.writing.sinks`): a single file through a temporary file renamed
into place, a directory through a temporary folder moved into place, so a failed or killed run leaves nothing
under a final name.
"""

from __future__ import annotations

import contextlib
import fnmatch
import mmap
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..config import LoadOptions, SaveOptions
from ..errors import ConfigError, FormatError, NotEncryptedError
from ..format.header import PREFIX_SIZE, Header, frame_header, parse_header, read_prefix, serialize_header
from ..format.reserved import RESERVED_KEYS, user_metadata
from ..keys.access import Access, resolve
from ..model.folder import IGNORED_DIRS, MANIFEST_NAME, WEIGHT_GLOBS
from ..reading.reader import open_file
from ..reading.source import open_source
from ..writing.sinks import AtomicFile, StagedDirectory, copy_file, is_temp_name
from ..writing.writer import Progress, TensorData, encrypt_file

Select = Callable[[str], bool]  # which tensors to encrypt, by name
SUFFIX = ".safetensors"
# Never part of a model: version control, caches, notebooks' autosaves (a '.git' file is a worktree link).
SKIPPED_NAMES = IGNORED_DIRS | {".bzr", "_darcs", "CVS", ".ipynb_checkpoints", ".mypy_cache", ".pytest_cache",
                                ".ruff_cache", ".DS_Store"}  # fmt: skip
SKIPPED_NAMES |= {MANIFEST_NAME}  # a folder's signed manifest is not copied: encrypt and rewrap write a new one
# Checkpoint formats other than safetensors: copied as they are, i.e. in plaintext (refused by default).
PLAIN_WEIGHT_GLOBS = tuple(g for g in WEIGHT_GLOBS if g != "*" + SUFFIX)


@dataclass(frozen=True)
class Converted:
    """One converted file: where from, where to, how many tensors (and how many are encrypted), bytes."""

    source: Path
    target: Path
    tensors: int
    encrypted: int
    nbytes: int


@dataclass
class Scan:
    """What a model directory holds, as paths relative to it."""

    shards: list[Path] = field(default_factory=list)  # *.safetensors: converted
    others: list[Path] = field(default_factory=list)  # copied
    skipped: list[Path] = field(default_factory=list)  # VCS / cache folders and files: left out

    @property
    def plain_weights(self) -> list[Path]:
        """Other checkpoint formats among the copied files (``pytorch_model.bin`` ...)."""
        return [p for p in self.others if any(fnmatch.fnmatchcase(p.name.lower(), g) for g in PLAIN_WEIGHT_GLOBS)]


def _stale_temp(name: str) -> bool:
    # ours, or an older version's '.NAME.PID.tmp'
    return is_temp_name(name) or (name.startswith(".") and name.endswith(".tmp"))


def scan_directory(src: Path) -> Scan:
    """Every file of a model directory, sorted; symbolic links are followed (each folder once)."""
    scan = Scan()
    seen: set[tuple[int, int]] = set()
    for directory, subdirs, files in os.walk(src, followlinks=True):
        here = Path(directory)
        info = os.stat(here)
        if (info.st_dev, info.st_ino) in seen:  # a link loop, or a folder linked twice
            subdirs[:] = []
            continue
        seen.add((info.st_dev, info.st_ino))
        relative = here.relative_to(src)
        kept = []
        for name in sorted(subdirs):
            if name in SKIPPED_NAMES:
                scan.skipped.append(relative / name)
            elif not _stale_temp(name):
                kept.append(name)
        subdirs[:] = kept
        for name in sorted(files):
            path = here / name
            if name in SKIPPED_NAMES:
                if name != MANIFEST_NAME:  # the old manifest is replaced, not "left out"
                    scan.skipped.append(relative / name)
            elif _stale_temp(name):
                continue  # a temporary file of an interrupted run
            elif not path.exists():
                raise FileNotFoundError(2, "broken symbolic link in the model folder", str(path))
            elif path.is_file():
                (scan.shards if name.endswith(SUFFIX) else scan.others).append(relative / name)
    scan.shards.sort()
    scan.others.sort()
    return scan


def overlapping(a: Path, b: Path) -> bool:
    """True when two paths are the same, or one is inside the other (after resolving links)."""
    ra, rb = a.resolve(), b.resolve()
    return ra == rb or ra in rb.parents or rb in ra.parents


def plan_directory(src: Path, dst: Path) -> tuple[list[tuple[Path, Path]], list[tuple[Path, Path]]]:
    """Pairs (source, target) of the tensor files to convert and of the other files to copy."""
    if overlapping(src, dst):
        raise FileExistsError(f"the output directory {dst} must not be the input directory, inside it or around it")
    scan = scan_directory(src)
    return [(src / p, dst / p) for p in scan.shards], [(src / p, dst / p) for p in scan.others]


def read_header(path: str | os.PathLike[str]) -> Header:
    """The validated outer header of a safetensors file, reading only the header."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        n = read_prefix(f.read(PREFIX_SIZE), size)
        return parse_header(f.read(n), PREFIX_SIZE + n, size - PREFIX_SIZE - n)


def is_encrypted(header: Header) -> bool:
    """A CryptoTensors header (or one claiming reserved names): not plain input for ``encrypt``."""
    return bool(RESERVED_KEYS & set(header.metadata))


@contextlib.contextmanager
def _mapped_tensors(path: str | os.PathLike[str]) -> Iterator[tuple[dict[str, str] | None, list[TensorData]]]:
    """A plain file's metadata and tensors as views of a read-only memory map (released on exit)."""
    size = os.path.getsize(path)
    if size < PREFIX_SIZE:
        raise FormatError(f"{os.fspath(path)}: file too small to be safetensors ({size} bytes)")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        n = read_prefix(mapped[:PREFIX_SIZE], size)
        header = parse_header(mapped[PREFIX_SIZE : PREFIX_SIZE + n], PREFIX_SIZE + n, size - PREFIX_SIZE - n)
        if is_encrypted(header):
            raise ConfigError(
                f"{os.fspath(path)} is already a CryptoTensors file: encrypting it again would lose its keys; "
                "use 'pycryptotensors rewrap' to change its master key or signer"
            )
        view = memoryview(mapped)
        tensors = [
            TensorData(e.name, e.dtype, e.shape, view[header.data_start + e.start : header.data_start + e.end])
            for e in header.in_offset_order()
        ]
        try:
            yield user_metadata(header.metadata), tensors
        finally:
            for tensor in tensors:
                tensor.data.release()
            view.release()


def encrypt_safetensors(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    options: SaveOptions,
    select: Select | None = None,
    progress: Progress | None = None,
) -> Converted:
    """Encrypt a plain safetensors file into ``dst``, streaming and atomically."""
    with _mapped_tensors(src) as (metadata, tensors):
        chosen = frozenset(t.name for t in tensors if select is None or select(t.name))
        encrypt_file(tensors, dst, metadata, replace(options, tensors=chosen), progress)
        count = len(tensors)
    return Converted(Path(src), Path(dst), count, len(chosen), os.path.getsize(dst))


def decrypt_safetensors(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    options: Access | LoadOptions,
    progress: Progress | None = None,
) -> Converted:
    """Decrypt a CryptoTensors file (or a URL: reading/remote.py) into a plain safetensors file (same layout),
    tensor by tensor."""
    source = open_source(src)
    try:
        opened = open_file(source, resolve(options), "np", "cpu")
        if opened is None:
            raise NotEncryptedError(f"{source.path} is already a plain safetensors file")
        entries = opened.header.in_offset_order()
        framed = frame_header(serialize_header(user_metadata(opened.header.metadata), entries))
        # Plaintext weights: readable by the owner only, whatever the umask (the source was encrypted).
        with AtomicFile(dst, len(framed) + opened.header.data_len, mode=0o600) as sink:
            sink.writeat(0, memoryview(framed))
            for entry in entries:
                sink.writeat(len(framed) + entry.start, opened.tensor_bytes(entry.name).data)
                if progress is not None:
                    progress(entry.nbytes)
        return Converted(Path(src), Path(dst), len(entries), len(opened.crypto.encrypted), os.path.getsize(dst))
    finally:
        source.close()


def convert_directory(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    convert: Callable[[Path, Path], Converted],
    on_file: Callable[[Converted], None] | None = None,
    *,
    private: bool = False,
    scan: Scan | None = None,
    seal: Callable[[Path], object] | None = None,
) -> list[Converted]:
    """Convert every shard of a model directory with ``convert`` and copy everything else (but the skipped
    folders), building the output beside ``dst`` and moving it into place only when all is done.

    ``private``: the output folder is 0700 (decrypted weights). ``scan``: the files, if already listed.
    ``seal``: called on the finished folder (the signed manifest): on the staged copy before it moves into
    place when ``dst`` is new, so the folder never appears without it; after the merge when ``dst`` existed
    (``--force``), so that it covers what the folder then holds.
    """
    source, target = Path(src), Path(dst)
    if overlapping(source, target):
        raise FileExistsError(f"the output directory {dst} must not be the input directory, inside it or around it")
    scan = scan if scan is not None else scan_directory(source)
    done = []
    with StagedDirectory(target, private=private) as stage:
        for relative in scan.shards:
            result = convert(source / relative, stage.path(relative))
            result = replace(result, target=target / relative)
            done.append(result)
            if on_file is not None:
                on_file(result)
        for relative in scan.others:
            copy_file(source / relative, stage.path(relative))
        merging = os.path.lexists(target)
        if seal is not None and not merging:
            seal(stage.root)
    if seal is not None and merging:
        seal(target)
    return done
