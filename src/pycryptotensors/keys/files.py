"""Key files: JWK or JWK Set documents on disk. Written RFC 7517, private keys (and tokens) with mode 0600."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

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
        return [parse_jwk(entry) for entry in entries]
    except KeyFormatError as error:
        raise KeyFormatError(f"key file {os.fspath(path)}: {error}") from None


def read_key_dir(directory: str | os.PathLike[str]) -> list[AnyKey]:
    """Every key in the key files directly inside ``directory`` (sorted by file name; missing dir: none)."""
    root = Path(directory).expanduser()
    if not root.is_dir():
        return []
    keys: list[AnyKey] = []
    for path in sorted(root.iterdir()):
        if path.suffix in KEY_FILE_SUFFIXES and path.is_file():
            keys += read_key_file(path)
    return keys


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
