"""A bag of keys: master keys, signing keys and verification keys, from code, a file or the environment.

Which key a file gets is decided in :mod:`.sources`; this module only holds and parses them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import KeyFormatError
from .jwk import MasterKey, SigningKey, VerifyKey, parse_jwk

ENV_VAR = "CRYPTOTENSOR_KEYS"
AnyKey = MasterKey | SigningKey | VerifyKey


class KeyRing:
    """Master keys and signer keys the caller trusts; pass it as ``config`` to any load function.

    Args:
        keys: Key objects or JWK dicts (either dialect), sorted into master, signing and verification keys.

    Raises:
        KeyFormatError: A JWK is malformed (see :func:`parse_jwk`).
    """

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
        """Add one key.

        Args:
            key: A key object or a JWK dict.

        Raises:
            KeyFormatError: The JWK is malformed.
        """
        parsed = parse_jwk(dict(key) if isinstance(key, Mapping) else key)
        if isinstance(parsed, MasterKey):
            self.master_keys.append(parsed)
        elif isinstance(parsed, SigningKey):
            self.signing_keys.append(parsed)
        else:
            self.verify_keys.append(parsed)

    def extend(self, other: KeyRing) -> None:
        """Add every key of ``other`` (after this ring's own, so this ring's keys are found first).

        Args:
            other: The ring whose keys are added.
        """
        self.master_keys += other.master_keys
        self.signing_keys += other.signing_keys
        self.verify_keys += other.verify_keys

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KeyRing:
        """Keys from ``CRYPTOTENSOR_KEYS``: one JWK, or a JWK Set ``{"keys": [...]}``.

        Args:
            environ: Where to read the variable; ``os.environ`` when None.

        Returns:
            The ring; empty when the variable is unset or empty.

        Raises:
            KeyFormatError: The variable is not JSON, ``keys`` is not a list, or a JWK is malformed.
        """
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

    def public_keys(self) -> list[VerifyKey]:
        """Verification keys, including the public halves of signing keys (each once).

        Returns:
            The keys, verification keys first, without duplicates (same raw key and ``kid``).
        """
        publics: dict[tuple[bytes, str | None], VerifyKey] = {}
        for key in self.verify_keys + [k.verify_key for k in self.signing_keys]:
            publics.setdefault((key.raw, key.kid), key)
        return list(publics.values())
