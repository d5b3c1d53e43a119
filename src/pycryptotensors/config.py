"""Options for saving and loading, and the translation from the reference's ``config`` dictionary.

``config`` may be the reference's dict unchanged (``enc_key``, ``sign_key``, ``enc_kid``, ``sign_kid``,
``enc_jku``, ``sign_jku``, ``tensors``, ``chunk_size``, ``version``, ``policy``; JWK fields under its aliases ``key`` /
``public`` / ``private``), its ``SerializeCryptoConfig`` / ``DeserializeCryptoConfig`` objects, or the typed
objects below. Unknown options are refused rather than ignored: a typo
in a security setting must not silently fall back to a default.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeAlias

from .errors import ConfigError, MissingKeyError
from .format.algorithms import COUNTER_LIMIT
from .format.crypto_header import DEFAULT_POLICY
from .keys.jwk import MasterKey, SigningKey, VerifyKey, parse_jwk
from .keys.keyring import KeyRing
from .keys.sources import KeyProvider

_SAVE_OPTIONS = {
    "enc_key",
    "sign_key",
    "tensors",
    "chunk_size",
    "version",
    "policy",
    "integrity",
    "key_service",
    "enc_kid",  # the reference's: the master key's kid (written in the header; picks a CRYPTOTENSOR_KEYS key)
    "sign_kid",  # the same for the signing key
    "enc_jku",  # the reference's name for key_service: the URL written as the master key's jku
    "sign_jku",  # the reference's: the URL written as the signing key's jku (where its public key can be found)
}
# The reference's JWK field aliases (its serde names): key = k, public = x, private = d.
_JWK_ALIASES = {"key": "k", "public": "x", "private": "d"}
_REFERENCE_CONFIGS = ("SerializeCryptoConfig", "DeserializeCryptoConfig")
# Device names as safetensors accepts them (plus ``cpu:N``, which torch accepts); ints mean ``cuda:N``.
_DEVICE = re.compile(r"(cpu|cuda|mps|npu|xpu|xla|mlu|musa|hpu|meta)(?::(\d+))?")
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
    signer_jku: str | None = None  # URL written as the signing key's jku: where consumers may find its public key

    def __post_init__(self) -> None:
        if self.version not in ("1", "2"):
            raise ConfigError(f"version must be '1' or '2', not {self.version!r}")
        if not isinstance(self.chunk_size, int) or not 0 < self.chunk_size <= MAX_CHUNK_SIZE:
            raise ConfigError(f"chunk_size must be an integer in 1..{MAX_CHUNK_SIZE}")
        for option, url in (("key_service / enc_jku", self.key_service), ("sign_jku", self.signer_jku)):
            if url is not None and (not isinstance(url, str) or not url):
                raise ConfigError(f"{option} must be a non-empty URL string")

    def encrypts(self, name: str) -> bool:
        """Whether the tensor ``name`` is encrypted under these options (``tensors`` None: every tensor)."""
        return self.tensors is None or name in self.tensors

    @property
    def max_tensor_bytes(self) -> int:
        """The largest tensor these options can encrypt: 2**32 chunks in version 2, one AEAD call in version 1."""
        return self.chunk_size * COUNTER_LIMIT if self.version == "2" else MAX_CHUNK_SIZE


@dataclass
class LoadOptions:
    """What a reader may use and must require. Keys are looked up in the order of docs/KEYS.md.

    Plain data: :func:`pycryptotensors.keys.access.resolve` merges it with the settings file and the
    environment when a file is opened."""

    keyring: KeyRing = field(default_factory=KeyRing)  # keys passed in code: looked at first
    policy_input: Mapping[str, Any] = field(default_factory=dict)  # claims for the local policy
    require_encryption: bool = False  # refuse plain files (e.g. an encrypted file stripped of its crypto header)
    trusted_signers: Sequence[VerifyKey] = ()  # pinned publishers; empty: any configured signer key
    key_dirs: Sequence[str | os.PathLike[str]] = ()
    jku_dirs: Sequence[str | os.PathLike[str]] = ()  # where a file's file:// jku may point
    providers: Sequence[KeyProvider] | None = None  # None: the installed key providers
    use_settings: bool = True  # merge the consumer's settings file (pycryptotensors.settings)
    use_environment: bool = True  # read CRYPTOTENSOR_KEYS


#: What every load function accepts as ``config``: the typed options, a key ring, the reference's dict (or its
#: ``DeserializeCryptoConfig``), or nothing (keys from the environment and the settings file).
LoadConfig: TypeAlias = "LoadOptions | KeyRing | Mapping[str, Any] | None"
#: What every save function accepts as ``config``.
SaveConfig: TypeAlias = "SaveOptions | Mapping[str, Any] | None"


def device_name(device: Any) -> str:
    """One spelling for a device, used by every entry point and for plain and encrypted files alike.

    ``0`` and ``"cuda:0"`` are ``"cuda:0"``, a ``torch.device`` is its string, ``"cpu:0"`` is ``"cpu"``;
    anything else raises :class:`ConfigError` before a file is opened (safetensors raises its own error or
    torch's ``RuntimeError`` depending on the file, which is what this removes).
    """
    if isinstance(device, bool):
        raise ConfigError(f"invalid device {device!r}: use 'cpu', 'cuda:N' or a device index")
    if isinstance(device, int):
        if device < 0:
            raise ConfigError(f"invalid device {device!r}: a device index is 0 or more")
        return f"cuda:{device}"
    if not isinstance(device, str) and type(device).__name__ == "device" and hasattr(device, "type"):
        device = str(device)  # torch.device, without importing torch
    if not isinstance(device, str) or (match := _DEVICE.fullmatch(device.strip())) is None:
        raise ConfigError(f"invalid device {device!r}: use 'cpu', 'cuda', 'cuda:N', 'mps', 'xpu:N', ... or an index")
    kind, index = match.groups()
    return kind if kind == "cpu" or index is None else f"{kind}:{int(index)}"


def reference_config(config: Any) -> Any:
    """The reference's ``SerializeCryptoConfig`` / ``DeserializeCryptoConfig`` as its plain dict.

    Recognised by name and shape (``to_dict``), so the reference need not be installed."""
    if type(config).__name__ in _REFERENCE_CONFIGS and callable(getattr(config, "to_dict", None)):
        return dict(config.to_dict())
    return config


def jwk_fields(key: Any) -> Any:
    """A JWK with the reference's field aliases (``key``, ``public``, ``private``) renamed to ``k``, ``x``, ``d``."""
    if not isinstance(key, Mapping) or not set(key) & set(_JWK_ALIASES):
        return key
    jwk = dict(key)
    for alias, name in _JWK_ALIASES.items():
        if alias in jwk:
            value = jwk.pop(alias)
            if name in jwk and jwk[name] != value:
                raise ConfigError(f"JWK has both {name!r} and its alias {alias!r}, with different values")
            jwk[name] = value
    return jwk


def _with_kid(key: Any, kid: Any, option: str) -> Any:
    """``key`` carrying the kid named by ``enc_kid`` / ``sign_kid`` (a key's own, different kid is a conflict)."""
    if kid is None:
        return key
    if not isinstance(kid, str) or not kid:
        raise ConfigError(f"{option} must be a non-empty string")
    if key.kid is not None and key.kid != kid:
        raise ConfigError(f"{option}={kid!r} conflicts with the key's own kid {key.kid!r}")
    return replace(key, kid=kid)


def _pick(keys: Sequence[Any], kid: Any, what: str, hint: str) -> Any:
    """The one key of CRYPTOTENSOR_KEYS to save with: the only one, or the one ``kid`` names."""
    if kid is not None:
        keys = [k for k in keys if k.kid == kid]
    if len(keys) != 1:
        named = f" with kid {kid!r}" if kid is not None else ""
        raise MissingKeyError(f"saving needs one {what}{named}: {hint}")
    return keys[0]


def _check_options(config: Mapping[str, Any], allowed: set[str], what: str) -> None:
    unknown = set(config) - allowed
    if unknown:
        raise ConfigError(f"unknown {what} option(s): {', '.join(sorted(unknown))}")


def save_options(config: SaveOptions | Mapping[str, Any] | None) -> SaveOptions:
    """Options for a save; keys missing from ``config`` come from ``CRYPTOTENSOR_KEYS``."""
    config = reference_config(config)
    if isinstance(config, SaveOptions):
        return config
    config = dict(config or {})
    _check_options(config, _SAVE_OPTIONS, "save")
    if "enc_jku" in config and "key_service" in config and config["enc_jku"] != config["key_service"]:
        raise ConfigError("enc_jku and key_service name the same thing; give one of them")
    env = KeyRing.from_env()
    master = parse_jwk(jwk_fields(config["enc_key"])) if "enc_key" in config else None
    signer = parse_jwk(jwk_fields(config["sign_key"])) if "sign_key" in config else None
    if master is None:
        hint = "pass config={'enc_key': ...} or set CRYPTOTENSOR_KEYS"
        master = _pick(env.master_keys, config.get("enc_kid"), "master key", hint)
    if signer is None:
        hint = "pass config={'sign_key': ...} or set CRYPTOTENSOR_KEYS"
        signer = _pick(env.signing_keys, config.get("sign_kid"), "private signing key", hint)
    master = _with_kid(master, config.get("enc_kid"), "enc_kid")
    signer = _with_kid(signer, config.get("sign_kid"), "sign_kid")
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
        key_service=config.get("key_service", config.get("enc_jku")),
        signer_jku=config.get("sign_jku"),
    )


def load_options(config: LoadOptions | KeyRing | Mapping[str, Any] | None) -> LoadOptions:
    """Options for a load from the reference's dict (plus our keys), a KeyRing, or LoadOptions."""
    config = reference_config(config)
    if isinstance(config, LoadOptions):
        return config
    if isinstance(config, KeyRing):
        return LoadOptions(config)
    config = dict(config or {})
    _check_options(config, _LOAD_OPTIONS | _SAVE_OPTIONS, "load")
    ring = KeyRing()
    for option in ("enc_key", "sign_key"):
        if option in config:
            ring.add(jwk_fields(config[option]))
    for key in config.get("keys", ()):
        ring.add(jwk_fields(key))
    signers = [parse_jwk(jwk_fields(k)) for k in config.get("trusted_signers", ())]
    pinned: list[VerifyKey] = []
    for key in signers:
        key = key.verify_key if isinstance(key, SigningKey) else key
        if not isinstance(key, VerifyKey):
            raise ConfigError("trusted_signers must be Ed25519 public keys")
        pinned.append(key)
    return LoadOptions(
        keyring=ring,
        policy_input=dict(config.get("policy_input", {})),
        require_encryption=bool(config.get("require_encryption", False)),
        trusted_signers=pinned,
        key_dirs=list(config.get("key_dirs", ())),
        jku_dirs=list(config.get("jku_dirs", ())),
    )
