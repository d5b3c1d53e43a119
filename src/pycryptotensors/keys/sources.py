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

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import unquote, urlparse

from ..format.crypto_header import CryptoHeader, KeySlot
from .files import read_key_dir, read_key_file
from .jwk import MasterKey, VerifyKey
from .keyring import KeyRing
from .trust import Trust

PROVIDER_GROUP = "pycryptotensors.key_providers"


def _unique(keys: Iterable[VerifyKey]) -> list[VerifyKey]:
    seen: set[bytes] = set()
    return [k for k in keys if not (k.raw in seen or seen.add(k.raw))]  # type: ignore[func-returns-value]


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

    def provide(self, request: KeyRequest) -> ProvidedKeys | None: ...


@runtime_checkable
class PublisherVoucher(Protocol):
    """A provider that can also vouch for a file's publisher alone: ``vouch(request)`` answers the publisher's
    verification key (or None), which is all an open needs to verify the header. A provider without it is
    asked ``provide`` at open, so a file opened only for its metadata would cost a key release."""

    def vouch(self, request: KeyRequest) -> VerifyKey | None: ...


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
    if not _inside(path, allowed) or not path.is_file():
        return KeyRing()
    return KeyRing(read_key_file(path))


@dataclass
class KeySources:
    code: KeyRing = field(default_factory=KeyRing)
    environment: KeyRing = field(default_factory=KeyRing)
    directories: KeyRing = field(default_factory=KeyRing)
    jku_dirs: tuple[Path, ...] = ()
    providers: tuple[KeyProvider, ...] = ()

    @classmethod
    def build(
        cls,
        code: KeyRing,
        key_dirs: Iterable[str | os.PathLike[str]],
        jku_dirs: Iterable[str | os.PathLike[str]],
        providers: Iterable[KeyProvider],
        use_environment: bool = True,
    ) -> KeySources:
        directories = KeyRing(key for d in key_dirs for key in read_key_dir(d))
        return cls(
            code,
            KeyRing.from_env() if use_environment else KeyRing(),
            directories,
            tuple(Path(d).expanduser() for d in jku_dirs),
            tuple(providers),
        )

    def _rings(self, slot: KeySlot) -> list[KeyRing]:
        return [self.code, self.environment, self.directories, jku_keys(slot.jku, self.jku_dirs)]

    def master_key(self, slot: KeySlot) -> MasterKey | None:
        rings = [ring.master_keys for ring in self._rings(slot)]
        if slot.kid is not None:
            for key in (k for keys in rings for k in keys):
                if key.kid == slot.kid:
                    return key
        if len(self.code.master_keys) == 1:
            return self.code.master_keys[0]
        if slot.kid is None:
            return next((k for keys in rings for k in keys), None)
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
            return by_kid[:1]  # the earliest source wins, as for master keys
        explicit = trust.pinned_among(self.code.public_keys())
        if len(explicit) == 1:
            return explicit
        return every if slot.kid is None or trust.signers else []

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
