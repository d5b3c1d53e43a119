"""What a file holds, without keys (``inspect``), and a full authentication pass (``verify``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import LoadOptions
from ..errors import CryptoTensorsError, FormatError, NotEncryptedError
from ..format.crypto_header import DEFAULT_POLICY, CryptoHeader, chunk_count
from ..format.reserved import user_metadata
from ..keys.access import Access, resolve
from .reader import open_file, read_header_view
from .source import open_source


def _crypto_summary(crypto: CryptoHeader) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "version": crypto.version,
        "algorithm": crypto.cipher.name,
        "chunk_size": crypto.chunk_size if crypto.version == "2" else None,
        "master_key": {"kid": crypto.enc.kid, "jku": crypto.enc.jku},
        "signer": {"kid": crypto.sign.kid, "jku": crypto.sign.jku, "alg": crypto.sign.alg},
        "policy": {
            "local": crypto.policy_local,
            "remote": crypto.policy_remote,
            "local_is_default": crypto.policy_local.strip() == DEFAULT_POLICY,
            "remote_is_default": crypto.policy_remote.strip() == DEFAULT_POLICY,
        },
        "extensions": {},
    }
    if crypto.integrity is not None:
        summary["extensions"]["integrity"] = {
            "alg": crypto.integrity.alg,
            "chunk_size": crypto.integrity.chunk_size,
            "tensors": len(crypto.integrity.digests),
        }
    return summary


def describe_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A JSON-ready description of a file (tensors, encryption, keys ids, signer, policy): needs no key.

    The header is fully validated, but nothing is verified: a signature needs the publisher's key (``verify``).
    """
    view = read_header_view(path)
    header, crypto = view.header, view.crypto
    tensors = []
    for entry in header.in_offset_order():
        encrypted = crypto is not None and crypto.is_encrypted(entry.name)
        item: dict[str, Any] = {
            "name": entry.name,
            "dtype": entry.dtype.name,
            "shape": list(entry.shape),
            "nbytes": entry.nbytes,
            "encrypted": encrypted,
        }
        if encrypted and crypto is not None and crypto.version == "2":
            item["chunks"] = chunk_count(entry.nbytes, crypto.chunk_size)
        tensors.append(item)
    encrypted_tensors = sum(t["encrypted"] for t in tensors)
    return {
        "path": os.fspath(path),
        "size": view.size,
        "format": "cryptotensors" if crypto is not None else "safetensors",
        "metadata": user_metadata(header.metadata) or {},
        "tensors": tensors,
        "encrypted_tensors": encrypted_tensors,
        "warning": ciphertext_warning(encrypted_tensors, len(tensors)),
        "crypto": _crypto_summary(crypto) if crypto is not None else None,
    }


def describe_folder(root: str | os.PathLike[str]) -> dict[str, Any]:
    """A JSON-ready description of a model folder: every ``*.safetensors`` shard as :func:`describe_file` sees
    it (version-control and cache folders left out, as everywhere), and whether a signed manifest
    (``model.sig``) is there and which key id it names. Needs no key; nothing is verified (that is ``verify``).
    """
    from ..model.folder import MANIFEST_NAME, SHARD_SUFFIX, list_files
    from ..model.manifest import read_manifest_file, signer_kid

    folder = Path(root)
    shards = [describe_file(folder / name) for name in list_files(folder) if name.endswith(SHARD_SUFFIX)]
    if not shards:
        raise FormatError(f"{folder}: no *{SHARD_SUFFIX} file to inspect in this folder")
    manifest_path = folder / MANIFEST_NAME
    manifest: dict[str, Any] = {"path": os.fspath(manifest_path), "present": os.path.lexists(manifest_path)}
    if manifest["present"]:
        try:
            manifest["signer_kid"] = signer_kid(read_manifest_file(manifest_path))
        except CryptoTensorsError as error:  # inspect describes; 'verify' is the command that refuses
            manifest["error"] = str(error)
    tensors = sum(len(s["tensors"]) for s in shards)
    encrypted = sum(s["encrypted_tensors"] for s in shards)
    return {
        "path": os.fspath(root),
        "format": "model folder",
        "size": sum(s["size"] for s in shards),
        "shards": shards,
        "tensor_count": tensors,
        "encrypted_tensors": encrypted,
        "manifest": manifest,
        "warning": ciphertext_warning(encrypted, tensors),
    }


def ciphertext_warning(encrypted: int, total: int) -> str | None:
    """The one thing to know about a file with encrypted tensors: the format keeps safetensors' layout, so
    plain safetensors reads it without complaint, and returns the ciphertext as the tensors' values."""
    if not encrypted:
        return None
    return (
        f"{encrypted} of {total} tensors are ENCRYPTED: their data is ciphertext. Load the file through "
        "pycryptotensors; plain safetensors (without the package, or with PYCRYPTOTENSORS_TRANSPARENT=0) "
        "reads the ciphertext as weights without an error."
    )


def verify_file(
    path: str | os.PathLike[str],
    options: Access | LoadOptions,
    deep: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Check the signature against the trusted keys; with ``deep``, authenticate every tag and digest too.

    Plaintext only passes through memory; nothing is written. ``deep`` needs the master key (or a provider).
    ``progress`` is called with the byte count of each tensor authenticated (the CLI's progress bar).
    """
    source = open_source(path)
    try:
        opened = open_file(source, resolve(options), "np", "cpu", evaluate_local_policy=False, unwrap=deep)
        if opened is None:
            raise NotEncryptedError(f"{source.path} is a plain safetensors file: it carries no signature")
        checked = 0
        if deep:
            for entry in opened.header.in_offset_order():
                buffer = opened.tensor_bytes(entry.name)
                checked += entry.nbytes
                buffer.fill(0)
                del buffer
                if progress is not None:
                    progress(entry.nbytes)
        return {
            "path": os.fspath(path),
            "signature": "valid",
            "signer_kid": opened.crypto.sign.kid,
            "deep": deep,
            "tensors_checked": len(opened.header.tensors) if deep else 0,
            "bytes_authenticated": checked,
        }
    finally:
        source.close()
