"""The keys a reader may use, and how a file's key slot picks one.

The file names a key id (``kid``); it never supplies key material or, here, a place to fetch it from. A slot
is matched by ``kid`` first; when the caller configured exactly one key of the needed kind, that key is used
for a file that names another or no ``kid`` (the reference's ``config={"enc_key": ...}`` behaviour).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import KeyFormatError, MissingKeyError
from ..format.crypto_header import KeySlot
from .jwk import MasterKey, SigningKey, VerifyKey, parse_jwk

ENV_VAR = "CRYPTOTENSOR_KEYS"
AnyKey = MasterKey | SigningKey | VerifyKey


def _pick(keys: list[Any], slot: KeySlot, what: str) -> Any:
    if slot.kid is not None:
        for key in keys:
            if key.kid == slot.kid:
                return key
    if len(keys) == 1:
        return keys[0]
    named = f" with kid {slot.kid!r}" if slot.kid else ""
    hint = "" if keys else f" (none configured: pass config= or set {ENV_VAR})"
    raise MissingKeyError(f"no {what}{named} among the configured keys{hint}")


class KeyRing:
    """Master keys and signer keys the caller trusts."""

    def __init__(self, keys: Iterable[AnyKey | Mapping[str, Any]] = ()) -> None:
        self.master_keys: list[MasterKey] = []
        self.signing_keys: list[SigningKey] = []
        self.verify_keys: list[VerifyKey] = []
        for key in keys:
            self.add(key)

    def __repr__(self) -> str:
        return (
            f"KeyRing({len(self.master_keys)} master, {len(self.signing_keys)} signing, "
            f"{len(self.verify_keys)} verify keys)"
        )

    def add(self, key: AnyKey | Mapping[str, Any]) -> None:
        parsed = parse_jwk(dict(key) if isinstance(key, Mapping) else key)
        if isinstance(parsed, MasterKey):
            self.master_keys.append(parsed)
        elif isinstance(parsed, SigningKey):
            self.signing_keys.append(parsed)
        else:
            self.verify_keys.append(parsed)

    def extend(self, other: KeyRing) -> None:
        self.master_keys += other.master_keys
        self.signing_keys += other.signing_keys
        self.verify_keys += other.verify_keys

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KeyRing:
        """Keys from ``CRYPTOTENSOR_KEYS``: one JWK, or a JWK Set ``{"keys": [...]}``."""
        text = (os.environ if environ is None else environ).get(ENV_VAR)
        if not text:
            return cls()
        try:
            document = json.loads(text)
        except ValueError:
            raise KeyFormatError(f"{ENV_VAR} is not valid JSON") from None
        if isinstance(document, dict) and "keys" in document:
            keys = document["keys"]
            if not isinstance(keys, list):
                raise KeyFormatError(f"{ENV_VAR}: 'keys' must be a list")
            return cls(keys)
        return cls([document])

    def master_key(self, slot: KeySlot) -> MasterKey:
        return _pick(self.master_keys, slot, "master key")

    def public_keys(self) -> list[VerifyKey]:
        """Verification keys, including the public halves of signing keys (each once)."""
        publics: dict[tuple[bytes, str | None], VerifyKey] = {}
        for key in self.verify_keys + [k.verify_key for k in self.signing_keys]:
            publics.setdefault((key.raw, key.kid), key)
        return list(publics.values())

    def verify_key(self, slot: KeySlot) -> VerifyKey:
        return _pick(self.public_keys(), slot, "signature verification key")

    def signing_key(self, slot: KeySlot | None = None) -> SigningKey:
        return _pick(self.signing_keys, slot or KeySlot("ed25519"), "signing key")
