"""The consumer's whole-model check, run when a shard is opened and before any key is released.

A folder with a manifest (``model.sig``): the manifest must verify under a key the consumer trusts for the
shard, every listed file must be present with its size and SHA-256 (configs, tokenizer, templates, code,
sub-modules: small files, hashed), every listed shard present with the header the publisher signed (its
``__signature__`` included: one small read, the shard's own tags cover its data), and nothing unlisted.
A folder without one, where the consumer pins a publisher or requires encryption: refused when it is a model
folder (it has a config, a module list or a shard index), since a manifest is the only thing that covers its
side files. The result is cached per folder for the process, keyed by the inode, size and mtime of every
file and folder checked, so a sharded load checks once and a change is seen at the next open.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ManifestError
from .folder import MANIFEST_NAME, folder_stamp, is_weight_file, manifest_for, walk
from .manifest import (
    Manifest,
    file_sha256,
    header_digest,
    index_shards,
    is_regular,
    read_manifest_file,
    read_shard_header,
    verify_manifest,
)
from .origin import unknown_origin_trust

__all__ = ["check_model", "check_unsigned_folder", "clear_cache", "unknown_origin_trust", "verify_folder"]

if TYPE_CHECKING:
    from ..keys.jwk import VerifyKey
    from ..keys.trust import Trust

# A folder holding one of these is a model folder (a loader reads side files from it), not a loose file.
MODEL_MARKERS = ("config.json", "modules.json", "adapter_config.json", "config_sentence_transformers.json")


@dataclass
class _Checked:
    manifest: Manifest
    stamp: tuple[Any, ...]
    names: list[str] = field(default_factory=list)


_cache: dict[tuple[str, frozenset[bytes]], _Checked] = {}
_lock = threading.Lock()


def clear_cache() -> None:
    with _lock:
        _cache.clear()


def _stamp(root: Path, names: list[str]) -> tuple[Any, ...]:
    return folder_stamp(root, [*names, MANIFEST_NAME])


def verify_folder(
    root: Path, verify_keys: Sequence[VerifyKey], *, full_hash: bool = False, files: list[str] | None = None
) -> Manifest:
    """Check a whole model folder against its manifest; raises ManifestError naming the first bad file.

    ``full_hash`` also hashes the shards (``verify DIR --deep``); loading compares their signed headers.
    """
    manifest = verify_manifest(read_manifest_file(root / MANIFEST_NAME), verify_keys)
    present = set(walk(root, everything=True)[0] if files is None else files)
    for name in sorted(manifest.files):
        if name not in present:
            what = "shard" if name in manifest.shards else "file"
            raise ManifestError(f"{root / name}: signed {what} missing from the model folder")
    for name in sorted(present - set(manifest.files)):
        what = "weight file" if is_weight_file(name) else "file"
        raise ManifestError(
            f"{root / name}: {what} not listed in the signed manifest (remove it, or have the publisher "
            "re-sign the folder with 'pycryptotensors sign')"
        )
    for name, (size, digest) in sorted(manifest.files.items()):
        path = root / name
        if not is_regular(path):
            raise ManifestError(f"{path} is not a regular file (a FIFO, device or folder in place of a signed file)")
        if path.stat().st_size != size:
            raise ManifestError(f"{path}: size differs from the signed manifest (modified)")
        shard = manifest.shards.get(name)
        if shard is not None:
            try:
                header = read_shard_header(path)
            except Exception:
                raise ManifestError(f"{path}: not the shard the publisher signed (unreadable header)") from None
            if header_digest(header) != shard.header_sha256:
                raise ManifestError(f"{path}: not the shard the publisher signed (another release or model?)")
            if not full_hash:
                continue
        if file_sha256(path) != digest:
            raise ManifestError(f"{path}: contents differ from the signed manifest (modified)")
    for name in manifest.files:
        if name.endswith(".index.json"):
            for listed in set(index_shards(root, name).values()):
                if listed not in manifest.shards:
                    raise ManifestError(f"{root / name}: names {listed!r}, which is not a signed shard")
    return manifest


def check_model(
    path: str | os.PathLike[str],
    header: bytes,
    trust: Trust,
    keys_for: Callable[[str | None], Sequence[VerifyKey]],
) -> None:
    """The check for one shard being opened; cached per folder. ``keys_for(kid)`` gives the consumer's
    candidate publisher keys (the manifest names a kid; pins apply)."""
    manifest_path = manifest_for(path)
    if manifest_path is None:
        if trust.signers or trust.require_encryption:
            check_unsigned_folder(Path(os.path.abspath(path)).parent)
        return
    root = manifest_path.parent
    data = read_manifest_file(manifest_path)
    from .manifest import signer_kid

    keys = list(keys_for(signer_kid(data)))
    if not keys:
        from ..errors import MissingKeyError

        raise MissingKeyError(
            f"no publisher key to verify {manifest_path} (pin the publisher's public key, or add it to a key directory)"
        )
    key = (os.path.realpath(root), frozenset(k.raw for k in keys))
    with _lock:
        cached = _cache.get(key)
    if cached is None or _stamp(root, cached.names) != cached.stamp:
        files, folders = walk(root, everything=True)
        names = files + folders
        stamp = _stamp(root, names)  # taken before checking: a change during the check is seen next time
        manifest = verify_folder(root, keys, files=files)
        cached = _Checked(manifest, stamp, names)
        with _lock:
            _cache[key] = cached
    relative = Path(os.path.abspath(path)).relative_to(os.path.abspath(root)).as_posix()
    record = cached.manifest.shards.get(relative)
    if record is None:
        raise ManifestError(f"{path}: not a shard of the signed model in {root}")
    if header_digest(header) != record.header_sha256:
        raise ManifestError(f"{path}: not the shard the publisher signed (another release or model?)")


def check_unsigned_folder(folder: Path) -> None:
    """A folder with no manifest, under a pinned publisher or required encryption: a model folder is refused
    (nothing covers its config, tokenizer or code); a loose file's folder may hold no other weight format."""
    try:
        entries = os.listdir(folder)
    except OSError:
        return
    if any(name in MODEL_MARKERS or name.endswith(".index.json") for name in entries):
        raise ManifestError(
            f"{folder} has no signed manifest ({MANIFEST_NAME}), and this path pins a publisher or requires "
            "encryption: the publisher must sign the whole folder ('pycryptotensors sign DIR')"
        )
    for name in sorted(entries):
        if is_weight_file(name) and not name.endswith(".safetensors"):
            raise ManifestError(f"{folder / name}: another weight format beside an encrypted file is refused here")
