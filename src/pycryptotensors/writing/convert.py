"""Converting whole files and model directories: plain safetensors -> CryptoTensors and back.

Tensor bytes are streamed from a memory map of the source, never loaded whole, and no framework is needed,
so any dtype converts. Each output file is written atomically: an interrupted run leaves finished files and
no half-written one under a final name, and can simply be run again. In a Hugging Face model directory every
``*.safetensors`` shard is converted and every other file (config, tokenizer, the shard index, which stays
valid because shard names and tensor names do not change) is copied.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from ..config import LoadOptions, SaveOptions
from ..errors import FormatError, NotEncryptedError
from ..format.header import PREFIX_SIZE, frame_header, parse_header, read_prefix, serialize_header
from ..reading.handle import user_metadata
from ..reading.reader import open_file
from ..reading.source import FileSource
from .sinks import AtomicFile
from .writer import Progress, TensorData, encrypt_file

Select = Callable[[str], bool]  # which tensors to encrypt, by name
SUFFIX = ".safetensors"


@dataclass(frozen=True)
class Converted:
    """One converted file: where from, where to, how many tensors (and how many are encrypted), bytes."""

    source: Path
    target: Path
    tensors: int
    encrypted: int
    nbytes: int


@contextlib.contextmanager
def _mapped_tensors(path: str | os.PathLike[str]) -> Iterator[tuple[dict[str, str] | None, list[TensorData]]]:
    """A plain file's metadata and tensors as views of a read-only memory map (released on exit)."""
    size = os.path.getsize(path)
    if size < PREFIX_SIZE:
        raise FormatError(f"{os.fspath(path)}: file too small to be safetensors ({size} bytes)")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        n = read_prefix(mapped[:PREFIX_SIZE], size)
        header = parse_header(mapped[PREFIX_SIZE : PREFIX_SIZE + n], PREFIX_SIZE + n, size - PREFIX_SIZE - n)
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
    options: LoadOptions,
    progress: Progress | None = None,
) -> Converted:
    """Decrypt a CryptoTensors file into a plain safetensors file (same layout), tensor by tensor."""
    source = FileSource(src)
    try:
        opened = open_file(source, options, "np", "cpu")
        if opened is None:
            raise NotEncryptedError(f"{source.path} is already a plain safetensors file")
        entries = opened.header.in_offset_order()
        framed = frame_header(serialize_header(user_metadata(opened.header.metadata), entries))
        # Plaintext weights: readable by the owner only, whatever the umask (the source was encrypted).
        with AtomicFile(dst, len(framed) + opened.header.data_len, mode=0o600) as sink:
            sink.writeat(0, memoryview(framed))
            for entry in entries:
                sink.writeat(len(framed) + entry.start, memoryview(opened.tensor_bytes(entry.name)))
                if progress is not None:
                    progress(entry.nbytes)
        return Converted(Path(src), Path(dst), len(entries), len(opened.crypto.encrypted), os.path.getsize(dst))
    finally:
        source.close()


def copy_file(src: Path, dst: Path) -> None:
    """Copy a file under a temporary name and rename it into place."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def plan_directory(src: Path, dst: Path) -> tuple[list[tuple[Path, Path]], list[tuple[Path, Path]]]:
    """Pairs (source, target) of the tensor files to convert and of the other files to copy."""
    if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
        raise FileExistsError(f"the output directory {dst} must not be the input directory or inside it")
    shards, others = [], []
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        relative = path.relative_to(src)
        if any(part.startswith(".") and part.endswith(".tmp") for part in relative.parts):
            continue  # a temporary file of an interrupted run
        (shards if path.suffix == SUFFIX else others).append((path, dst / relative))
    return shards, others


def convert_directory(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    convert: Callable[[Path, Path], Converted],
    on_file: Callable[[Converted], None] | None = None,
) -> list[Converted]:
    """Convert every shard of a model directory with ``convert`` and copy everything else."""
    shards, others = plan_directory(Path(src), Path(dst))
    done = []
    for source, target in [*shards, *others]:
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.suffix == SUFFIX:
            result = convert(source, target)
            done.append(result)
            if on_file is not None:
                on_file(result)
        else:
            copy_file(source, target)
    return done
