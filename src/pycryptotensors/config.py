"""Options for saving and loading, and the translation from the reference's ``config`` dictionary.

``config`` may be the reference's dict unchanged (``enc_key``, ``sign_key``, ``tensors``, ``chunk_size``,
``version``, ``policy``) or the typed objects below. Unknown options are refused rather than ignored: a typo
in a security setting must not silently fall back to a default.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .cipher.aead import COUNTER_LIMIT
from .errors import ConfigError, MissingKeyError
from .format.crypto_header import DEFAULT_POLICY
from .keys.jwk import MasterKey, SigningKey, VerifyKey, parse_jwk
from .keys.keyring import KeyRing
from .keys.sources import KeyProvider, KeySources, installed_providers
from .keys.trust import Trust
from .settings import Settings, load_settings

_SAVE_OPTIONS = {"enc_key", "sign_key", "tensors", "chunk_size", "version", "policy", "integrity", "key_service"}
_LOAD_OPTIONS = {
    "enc_key",
    "sign_key",
    "keys",
    "policy_input",
    "require_encryption",
    "trusted_signers",
    "key_dirs",
    "jku_dirs",
}
# Our writer's default chunk: half the reference's 2 MiB, so a small slice decrypts half as much, for a cost
# below 1% in full-load throughput (bench/bench_core.py). Readers take whatever size the header names.
WRITE_CHUNK_SIZE = 1024 * 1024
MAX_CHUNK_SIZE = 2**31 - 1024  # one AEAD call per chunk; cryptography caps a call below 2 GiB


@dataclass(frozen=True)
class SaveOptions:
    """How to encrypt a file. ``tensors=None`` encrypts every tensor."""

    master_key: MasterKey
    signing_key: SigningKey
    tensors: Collection[str] | None = None
    chunk_size: int = WRITE_CHUNK_SIZE
    version: str = "2"
    policy_local: str = DEFAULT_POLICY
    policy_remote: str = DEFAULT_POLICY
    integrity: bool = True  # signed digests of unencrypted tensors (our extension)
    key_service: str | None = None  # URL written as the master key's jku: where consumers obtain data keys

    def __post_init__(self) -> None:
        if self.version not in ("1", "2"):
            raise ConfigError(f"version must be '1' or '2', not {self.version!r}")
        if not isinstance(self.chunk_size, int) or not 0 < self.chunk_size <= MAX_CHUNK_SIZE:
            raise ConfigError(f"chunk_size must be an integer in 1..{MAX_CHUNK_SIZE}")

    def encrypts(self, name: str) -> bool:
        return self.tensors is None or name in self.tensors

    @property
    def max_tensor_bytes(self) -> int:
        return self.chunk_size * COUNTER_LIMIT if self.version == "2" else MAX_CHUNK_SIZE


@dataclass
class LoadOptions:
    """What a reader may use and must require. Keys are looked up in the order of docs/KEYS.md."""

    keyring: KeyRing = field(default_factory=KeyRing)  # keys passed in code: looked at first
    policy_input: Mapping[str, Any] = field(default_factory=dict)  # claims for the local policy
    require_encryption: bool = False  # refuse plain files (e.g. an encrypted file stripped of its crypto header)
    trusted_signers: Sequence[VerifyKey] = ()  # pinned publishers; empty: any configured signer key
    key_dirs: Sequence[str | os.PathLike[str]] = ()
    jku_dirs: Sequence[str | os.PathLike[str]] = ()  # where a file's file:// jku may point
    providers: Sequence[KeyProvider] | None = None  # None: the installed key providers
    use_settings: bool = True  # merge the consumer's settings file (pycryptotensors.settings)
    use_environment: bool = True  # read CRYPTOTENSOR_KEYS

    def resolve(self) -> tuple[KeySources, Trust]:
        """The key sources and trust settings in force, merged with the consumer's settings file."""
        settings = load_settings() if self.use_settings else Settings()
        trust = Trust(
            tuple(self.trusted_signers) or settings.trust.signers,
            self.require_encryption or settings.trust.require_encryption,
            settings.trust.rules,
        )
        providers = installed_providers() if self.providers is None else tuple(self.providers)
        sources = KeySources.build(
            self.keyring,
            [*self.key_dirs, *settings.key_dirs],
            [*self.jku_dirs, *settings.jku_dirs],
            providers,
            self.use_environment,
        )
        return sources, trust


def _check_options(config: Mapping[str, Any], allowed: set[str], what: str) -> None:
    unknown = set(config) - allowed
    if unknown:
        raise ConfigError(f"unknown {what} option(s): {', '.join(sorted(unknown))}")


def save_options(config: SaveOptions | Mapping[str, Any] | None) -> SaveOptions:
    """Options for a save; keys missing from ``config`` come from ``CRYPTOTENSOR_KEYS``."""
    if isinstance(config, SaveOptions):
        return config
    config = dict(config or {})
    _check_options(config, _SAVE_OPTIONS, "save")
    env = KeyRing.from_env()
    master = parse_jwk(config["enc_key"]) if "enc_key" in config else None
    signer = parse_jwk(config["sign_key"]) if "sign_key" in config else None
    if master is None:
        if len(env.master_keys) != 1:
            raise MissingKeyError("saving needs one master key: pass config={'enc_key': ...} or set CRYPTOTENSOR_KEYS")
        master = env.master_keys[0]
    if signer is None:
        if len(env.signing_keys) != 1:
            raise MissingKeyError("saving needs one private signing key: config={'sign_key': ...}")
        signer = env.signing_keys[0]
    if not isinstance(master, MasterKey):
        raise ConfigError("enc_key must be a symmetric (oct) key")
    if not isinstance(signer, SigningKey):
        raise ConfigError("sign_key must be an Ed25519 private key (with 'd')")
    policy = config.get("policy") or {}
    if not isinstance(policy, Mapping) or set(policy) - {"local", "remote"}:
        raise ConfigError("policy must be a mapping with the keys 'local' and/or 'remote'")
    tensors = config.get("tensors")
    if tensors is not None and (isinstance(tensors, str) or not all(isinstance(t, str) for t in tensors)):
        raise ConfigError("tensors must be a list of tensor names")
    return SaveOptions(
        master_key=master,
        signing_key=signer,
        tensors=None if tensors is None else frozenset(tensors),
        chunk_size=config.get("chunk_size", WRITE_CHUNK_SIZE),
        version=str(config.get("version", "2")),
        policy_local=policy.get("local", DEFAULT_POLICY),
        policy_remote=policy.get("remote", DEFAULT_POLICY),
        integrity=bool(config.get("integrity", True)),
        key_service=config.get("key_service"),
    )


def load_options(config: LoadOptions | KeyRing | Mapping[str, Any] | None) -> LoadOptions:
    """Options for a load from the reference's dict (plus our keys), a KeyRing, or LoadOptions."""
    if isinstance(config, LoadOptions):
        return config
    if isinstance(config, KeyRing):
        return LoadOptions(config)
    config = dict(config or {})
    _check_options(config, _LOAD_OPTIONS | _SAVE_OPTIONS, "load")
    ring = KeyRing()
    for option in ("enc_key", "sign_key"):
        if option in config:
            ring.add(config[option])
    for key in config.get("keys", ()):
        ring.add(key)
    signers = [parse_jwk(k) for k in config.get("trusted_signers", ())]
    pinned = [k.verify_key if isinstance(k, SigningKey) else k for k in signers]
    if not all(isinstance(k, VerifyKey) for k in pinned):
        raise ConfigError("trusted_signers must be Ed25519 public keys")
    return LoadOptions(
        keyring=ring,
        policy_input=dict(config.get("policy_input", {})),
        require_encryption=bool(config.get("require_encryption", False)),
        trusted_signers=pinned,  # type: ignore[arg-type]
        key_dirs=list(config.get("key_dirs", ())),
        jku_dirs=list(config.get("jku_dirs", ())),
    )
