"""Where a reader's keys come from, and how a file's key slots pick them.

Sources, in order (docs/KEYS.md):

1. keys passed in code (``config=`` / ``LoadOptions.keyring``);
2. the ``CRYPTOTENSOR_KEYS`` environment variable, as in the reference;
3. key files (JWK / JWK Set) in the key directories the consumer configured;
4. a ``file://`` ``jku`` named by the file, honoured only inside directories the consumer allowed;
5. key providers (plugins under the ``pycryptotensors.key_providers`` entry point group), asked last.

A slot's ``kid`` is matched in that order. When the file names no matching ``kid``, a single key passed in
code is used (the reference's ``config={"enc_key": ...}`` behaviour), and a file without any ``kid`` takes
the first key of the right kind. The signature key is never taken from the file, and only pinned publishers
are accepted when the consumer pinned any (:mod:`.trust`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import unquote, urlparse

from .._log import describe_keys, logger
from ..format.crypto_header import CryptoHeader, KeySlot
from .files import read_key_dir_files, read_key_file
from .jwk import MasterKey, VerifyKey
from .keyring import KeyRing
from .trust import Trust

PROVIDER_GROUP = "pycryptotensors.key_providers"


def _unique(keys: Iterable[VerifyKey]) -> list[VerifyKey]:
    unique: dict[bytes, VerifyKey] = {}
    for key in keys:
        unique.setdefault(key.raw, key)  # the first of each raw key, in order
    return list(unique.values())


@dataclass(frozen=True)
class KeyRequest:
    """What a key provider learns about a file: where it is and its exact, signed header."""

    path: str
    header_bytes: bytes
    crypto: CryptoHeader
    claims: Mapping[str, Any] = field(default_factory=dict)  # the caller's policy claims, for remote policies


@dataclass(frozen=True)
class ProvidedKeys:
    """A provider's answer: a verification key (a provider the consumer configured is trusted to vouch for
    the publisher), a master key, or the file's data keys already unwrapped (a key service's answer)."""

    verify_key: VerifyKey | None = None
    master_key: MasterKey | None = None
    data_keys: Mapping[str, bytes] | None = None


@runtime_checkable
class KeyProvider(Protocol):
    """A plugin that supplies keys for a file (a master key, or its data keys already unwrapped), or None when
    it has nothing to say about it."""

    def provide(self, request: KeyRequest) -> ProvidedKeys | None:
        """Keys for the file of ``request``.

        Args:
            request: The file's path, its exact header bytes (signed) and parsed crypto header, and the
                caller's claims.

        Returns:
            The keys, or None when this provider has nothing for this file (the next one is asked).

        Raises:
            KeyAccessError: The provider is responsible for the file but refuses or fails (a key service's
                refusal is a :class:`~pycryptotensors.errors.KeyServiceError`); the load fails with it.
        """
        ...


@runtime_checkable
class PublisherVoucher(Protocol):
    """A provider that can also vouch for a file's publisher alone: ``vouch(request)`` answers the publisher's
    verification key (or None), which is all an open needs to verify the header. A provider without it is
    asked ``provide`` at open, so a file opened only for its metadata would cost a key release."""

    def vouch(self, request: KeyRequest) -> VerifyKey | None:
        """The publisher's verification key for the file of ``request``, without releasing any key.

        Args:
            request: As for :meth:`KeyProvider.provide`.

        Returns:
            The key, or None when this provider does not know the file's publisher.

        Raises:
            KeyAccessError: As for :meth:`KeyProvider.provide`.
        """
        ...


DataKeyProvider = KeyProvider  # the name the key service documentation uses for the first interface


@cache
def _provider_factories() -> tuple[Any, ...]:
    return tuple(ep.load() for ep in entry_points(group=PROVIDER_GROUP))


def installed_providers() -> tuple[KeyProvider, ...]:
    """Providers registered by installed packages: each entry point is a zero-argument factory, called per
    load so that it sees the current settings."""
    return tuple(factory() for factory in _provider_factories())


def _inside(path: Path, directories: Iterable[Path]) -> bool:
    return any(path == d or d in path.parents for d in directories)


def jku_keys(jku: str | None, allowed_dirs: Iterable[Path]) -> KeyRing:
    """Keys from a ``file://`` jku, only when it resolves (symlinks followed) inside an allowed directory."""
    if not jku:
        return KeyRing()
    url = urlparse(jku)
    if url.scheme != "file" or url.netloc not in ("", "localhost"):
        return KeyRing()
    path = Path(os.path.realpath(unquote(url.path)))
    allowed = [Path(os.path.realpath(d)) for d in allowed_dirs]
    if not _inside(path, allowed):
        logger.debug("jku %s: ignored, %s is outside the allowed jku directories %s", jku, path, _paths(allowed))
        return KeyRing()
    if not path.is_file():
        logger.debug("jku %s: ignored, %s is not a file", jku, path)
        return KeyRing()
    keys = read_key_file(path)
    logger.debug("jku file %s: %s", path, describe_keys(keys))
    return KeyRing(keys)


def _paths(paths: Iterable[Path]) -> str:
    shown = [os.fspath(p) for p in paths]
    return "[" + ", ".join(shown) + "]" if shown else "(none)"


def _identity(key: Any) -> tuple[str, Any]:
    """What identifies a key for the log's "found in" (a public key's bytes are public; a master key: the
    object itself, never its secret)."""
    if isinstance(key, MasterKey):
        return ("master", id(key))
    public = key if isinstance(key, VerifyKey) else key.verify_key
    return ("public", public.raw)


@dataclass
class KeySources:
    code: KeyRing = field(default_factory=KeyRing)
    environment: KeyRing = field(default_factory=KeyRing)
    directories: KeyRing = field(default_factory=KeyRing)
    jku_dirs: tuple[Path, ...] = ()
    providers: tuple[KeyProvider, ...] = ()
    key_dirs: tuple[Path, ...] = ()  # where ``directories`` came from, for the log and error messages
    origins: dict[tuple[str, Any], str] = field(default_factory=dict, repr=False)  # key -> "key file PATH"

    @classmethod
    def build(
        cls,
        code: KeyRing,
        key_dirs: Iterable[str | os.PathLike[str]],
        jku_dirs: Iterable[str | os.PathLike[str]],
        providers: Iterable[KeyProvider],
        use_environment: bool = True,
    ) -> KeySources:
        directories = KeyRing()
        origins: dict[tuple[str, Any], str] = {}
        dirs = tuple(Path(d).expanduser() for d in key_dirs)
        for directory in dirs:
            for path, keys in read_key_dir_files(directory):
                for key in keys:
                    directories.add(key)
                    origins.setdefault(_identity(key), f"key file {path}")
        environment = KeyRing.from_env() if use_environment else KeyRing()
        providers = tuple(providers)
        sources = cls(code, environment, directories, tuple(Path(d).expanduser() for d in jku_dirs), providers, dirs)
        sources.origins = origins
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "key sources: code: %s; CRYPTOTENSOR_KEYS: %s; key directories %s: %s; jku directories %s; "
                "key providers: %s",
                describe_keys(code.master_keys + code.public_keys()),
                describe_keys(environment.master_keys + environment.public_keys()) if use_environment else "not read",
                _paths(dirs),
                describe_keys(directories.master_keys + directories.public_keys()),
                _paths(sources.jku_dirs),
                ", ".join(type(p).__name__ for p in providers) or "none",
            )
        return sources

    def _rings(self, slot: KeySlot) -> list[KeyRing]:
        return [self.code, self.environment, self.directories, jku_keys(slot.jku, self.jku_dirs)]

    def _origin(self, key: Any, ring: int, slot: KeySlot) -> str:
        """Where a found key came from, in words: code, CRYPTOTENSOR_KEYS, a key file, a jku file."""
        if ring == 2:
            return self.origins.get(_identity(key), "a key directory")
        return (
            "code (config= / --key)",
            "CRYPTOTENSOR_KEYS",
            "a key directory",
            f"jku {slot.jku}",
            "the pinned publishers (trusted_signers / --trust)",
        )[ring]

    def _found(self, what: str, slot: KeySlot, key: Any, ring: int, how: str) -> None:
        logger.info(
            "%s for kid %r: found %s in %s (%s)",
            what,
            slot.kid,
            describe_keys([key]),
            self._origin(key, ring, slot),
            how,
        )

    def master_key(self, slot: KeySlot) -> MasterKey | None:
        found = self._master_key(slot)
        if found is None:
            logger.info(
                "master key for kid %r: not found in code, CRYPTOTENSOR_KEYS, key directories %s%s; "
                "key providers asked next: %s",
                slot.kid,
                _paths(self.key_dirs),
                f", jku {slot.jku}" if slot.jku else "",
                ", ".join(type(p).__name__ for p in self.providers) or "none",
            )
        return found

    def _master_key(self, slot: KeySlot) -> MasterKey | None:
        rings = [ring.master_keys for ring in self._rings(slot)]
        logger.debug(
            "master key for kid %r: looking in code, CRYPTOTENSOR_KEYS, key directories %s%s",
            slot.kid,
            _paths(self.key_dirs),
            f", jku {slot.jku} (allowed jku directories {_paths(self.jku_dirs)})" if slot.jku else "",
        )
        if slot.kid is not None:
            for index, keys in enumerate(rings):
                for key in keys:
                    if key.kid == slot.kid:
                        self._found("master key", slot, key, index, "by kid")
                        return key
        if len(self.code.master_keys) == 1:
            self._found("master key", slot, self.code.master_keys[0], 0, "the one master key given in code")
            return self.code.master_keys[0]
        if slot.kid is None:
            for index, keys in enumerate(rings):
                if keys:
                    self._found("master key", slot, keys[0], index, "the file names no kid: the first master key")
                    return keys[0]
        return None

    def verify_keys(self, slot: KeySlot, trust: Trust) -> list[VerifyKey]:
        """Candidate publisher keys for a file, best first; the signature decides among them.

        Pinned publishers are a source of their own, and when any are pinned every other source is filtered
        by them. With pins, a file whose kid matches none of them is still tried against each pinned key: the
        pins, not the file's kid, are the trust anchor.
        """
        rings = [trust.pinned_among(ring.public_keys()) for ring in self._rings(slot)] + [list(trust.signers)]
        every = _unique(k for keys in rings for k in keys)
        by_kid = [k for k in every if slot.kid is not None and k.kid == slot.kid]
        if by_kid:
            ring = next(i for i, keys in enumerate(rings) if any(k is by_kid[0] for k in keys))
            self._found("publisher key", slot, by_kid[0], ring, "by kid")
            return by_kid[:1]  # the earliest source wins, as for master keys
        explicit = trust.pinned_among(self.code.public_keys())
        if len(explicit) == 1:
            self._found("publisher key", slot, explicit[0], 0, "the one publisher key given in code")
            return explicit
        candidates = every if slot.kid is None or trust.signers else []
        logger.info(
            "publisher key for kid %r: no key with that kid in code, CRYPTOTENSOR_KEYS, key directories %s%s; %s",
            slot.kid,
            _paths(self.key_dirs),
            f", jku {slot.jku}" if slot.jku else "",
            f"trying {describe_keys(candidates)}" if candidates else "key providers asked next",
        )
        return candidates

    def kids(self, slot: KeySlot, master: bool) -> list[str]:
        """The key ids of the keys of one kind that were tried for ``slot`` (never key material), for errors."""
        rings = self._rings(slot)
        keys: list[Any] = [k for r in rings for k in (r.master_keys if master else r.public_keys())]
        return sorted({k.kid or "(no kid)" for k in keys})

    def describe(self) -> str:
        """Where we looked, for error messages (no key material)."""
        jku = f", file:// jku inside {len(self.jku_dirs)} allowed directories" if self.jku_dirs else ""
        return (
            f"{len(self.code.master_keys)} master / {len(self.code.public_keys())} signer keys in code, "
            f"{len(self.environment.master_keys) + len(self.environment.public_keys())} in CRYPTOTENSOR_KEYS, "
            f"{len(self.directories.master_keys) + len(self.directories.public_keys())} in key directories, "
            f"{len(self.providers)} key providers{jku}"
        )
