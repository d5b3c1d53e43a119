"""What a model folder may hold: which files count as weights, which folders are not part of a model, and
where a shard's folder (and its signed manifest) is.

Kept to the standard library: transparent mode asks :func:`manifest_for` about every safetensors file a
program opens, and a plain file must not pay for importing the cipher machinery.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

MANIFEST_NAME = "model.sig"  # the OpenSSF model-signing file name (docs/FORMAT.md, "Signed model folders")
SHARD_SUFFIX = ".safetensors"
# Every checkpoint format a loader might pick up instead of (or beside) the encrypted shards.
WEIGHT_GLOBS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.gguf", "*.onnx", "*.msgpack", "*.h5")
# Version-control and cache folders: never part of a model (and never copied by ``encrypt``).
IGNORED_DIRS = frozenset({".git", ".hg", ".svn", ".cache", ".huggingface", "__pycache__"})
# How far above a shard a manifest is looked for: sentence-transformers keep weights one folder down
# (``2_Dense/model.safetensors``); deeper layouts sign each sub-model on its own.
MAX_DEPTH = 2


def is_weight_file(name: str) -> bool:
    base = name.rsplit("/", 1)[-1].lower()
    return any(fnmatch.fnmatchcase(base, pattern) for pattern in WEIGHT_GLOBS)


def is_temporary(name: str) -> bool:
    """A temporary file of an interrupted write (``.NAME.RANDOM.tmp``): removed by the next run, never signed."""
    base = name.rsplit("/", 1)[-1]
    return base.startswith(".") and base.endswith(".tmp")


def walk(root: str | os.PathLike[str], *, everything: bool = False) -> tuple[list[str], list[str]]:
    """Every file and every folder of a model folder, recursively, as sorted relative POSIX paths (folders end
    with '/'); ignored folders, the manifest and temporary files are left out. Symlinks to files count as
    files (Hugging Face cache snapshots are made of them); symlinked folders are not followed. With
    ``everything`` (the consumer's check), any other entry (a FIFO, a device, a link to a folder or a
    device, a dangling link) is listed as a file too, so that it is refused as unlisted, never ignored."""
    files: list[str] = []
    folders: list[str] = []
    pending = [(os.fspath(root), "")]
    while pending:
        directory, prefix = pending.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                name = prefix + entry.name
                if entry.is_dir(follow_symlinks=False):
                    if entry.name not in IGNORED_DIRS:
                        folders.append(name + "/")
                        pending.append((entry.path, name + "/"))
                elif name != MANIFEST_NAME and not is_temporary(name) and (everything or entry.is_file()):
                    files.append(name)
    return sorted(files), sorted(folders)


def list_files(root: str | os.PathLike[str]) -> list[str]:
    """Every file of a model folder (see :func:`walk`)."""
    return walk(root)[0]


def manifest_for(path: str | os.PathLike[str]) -> Path | None:
    """The manifest of the model folder a file belongs to: ``model.sig`` in its folder or up to
    :data:`MAX_DEPTH` folders above it (the nearest wins); None when there is none."""
    directory = Path(os.path.abspath(path)).parent
    for _ in range(MAX_DEPTH):
        candidate = directory / MANIFEST_NAME
        if os.path.lexists(candidate):
            return candidate
        if directory.parent == directory:
            break
        directory = directory.parent
    return None


def folder_stamp(root: Path, names: list[str] | None = None) -> tuple[tuple[str, int, int, int, int, int], ...]:
    """What the per-process cache is keyed by: (name, device, inode, size, mtime, ctime in ns) of the folder
    itself and of the files named (a change to any of them, or a file added to the folder, changes the
    stamp). The ctime matters: an attacker can write a file and set its mtime back (``touch -d``), but
    cannot set its ctime."""
    stamps = []
    for name in ["", *(names or [])]:
        try:
            st = os.stat(root / name) if name else os.stat(root)
        except OSError:
            stamps.append((name, -1, -1, -1, -1, -1))
            continue
        stamps.append((name, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(stamps)
