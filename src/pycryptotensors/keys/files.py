"""Key files: JWK or JWK Set documents on disk. Written RFC 7517, private keys (and tokens) with mode 0600."""

from __future__ import annotations

import json
import os
import stat
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .._log import describe_keys, logger
from ..errors import KeyFormatError
from ..writing.sinks import write_atomic
from .jwk import MasterKey, SigningKey, VerifyKey, parse_jwk

AnyKey = MasterKey | SigningKey | VerifyKey
KEY_FILE_SUFFIXES = (".jwk", ".jwks", ".json")


def read_key_file(path: str | os.PathLike[str]) -> list[AnyKey]:
    """Every key in a JWK or JWK Set file."""
    try:
        document: Any = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise KeyFormatError(f"cannot read key file {os.fspath(path)}: {error.strerror}") from None
    except ValueError:
        raise KeyFormatError(f"key file {os.fspath(path)} is not valid JSON") from None
    entries = document["keys"] if isinstance(document, dict) and "keys" in document else [document]
    if not isinstance(entries, list):
        raise KeyFormatError(f"key file {os.fspath(path)}: 'keys' must be a list")
    try:
        keys = [parse_jwk(entry) for entry in entries]
    except KeyFormatError as error:
        raise KeyFormatError(f"key file {os.fspath(path)}: {error}") from None
    logger.debug("key file %s: %s", os.fspath(path), describe_keys(keys))
    return keys


class KeyFilePermissionWarning(UserWarning):
    """A file holding a private key (a master key or a private signing key) can be read by other users."""


def warn_if_exposed(path: str | os.PathLike[str], keys: Iterable[AnyKey]) -> None:
    """Warn (once per file and mode) when a file holding a master key or a private signing key is readable by
    its group or by others: anyone who can read it can decrypt the models or sign as the publisher. POSIX only
    (Windows has no such mode bits)."""
    if os.name == "nt" or not any(isinstance(k, MasterKey | SigningKey) for k in keys):
        return
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        shown = os.fspath(path)
        warnings.warn(
            f"private key file {shown} is readable by other users (mode {mode:04o}): run 'chmod 600 {shown}'",
            KeyFilePermissionWarning,
            stacklevel=3,
        )


def read_key_dir_files(directory: str | os.PathLike[str]) -> list[tuple[Path, list[AnyKey]]]:
    """The key files directly inside ``directory`` (sorted by file name; a missing directory holds none), each
    with its keys. A file holding a private key that others can read is warned about (:func:`warn_if_exposed`).
    """
    root = Path(directory).expanduser()
    if not root.is_dir():
        logger.debug("key directory %s: not a directory, no keys", root)
        return []
    files: list[tuple[Path, list[AnyKey]]] = []
    for path in sorted(root.iterdir()):
        if path.suffix in KEY_FILE_SUFFIXES and path.is_file():
            found = read_key_file(path)
            warn_if_exposed(path, found)
            files.append((path, found))
    logger.debug("key directory %s: %d key file(s)", root, len(files))
    return files


def read_key_dir(directory: str | os.PathLike[str]) -> list[AnyKey]:
    """Every key in the key files directly inside ``directory`` (see :func:`read_key_dir_files`)."""
    return [key for _, keys in read_key_dir_files(directory) for key in keys]


def write_secret_file(path: str | os.PathLike[str], text: str, mode: int = 0o600) -> None:
    """The one writer of key and token files: exactly ``mode`` (0600 by default) whatever the umask or the
    mode of a file it replaces, created ``O_EXCL|O_NOFOLLOW`` under a random temporary name, synced, then
    renamed into place, so a symbolic link planted at ``path`` is replaced, never written through."""
    write_atomic(path, text.encode("utf-8"), mode)


def write_key_file(path: str | os.PathLike[str], keys: AnyKey | Iterable[AnyKey], dialect: str = "rfc") -> None:
    """Write one key (a JWK) or several (a JWK Set), atomically; 0600 when any private part is included."""
    items = [keys] if isinstance(keys, MasterKey | SigningKey | VerifyKey) else list(keys)
    jwks = [k.to_jwk(dialect) for k in items]
    document = jwks[0] if len(jwks) == 1 else {"keys": jwks}
    secret = any(not isinstance(k, VerifyKey) for k in items)
    write_secret_file(path, json.dumps(document, indent=2) + "\n", 0o600 if secret else 0o644)
