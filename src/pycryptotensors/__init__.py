"""pycryptotensors: encrypted, signed safetensors files (the CryptoTensors format), loaded lazily.

The API mirrors safetensors: :func:`safe_open` here, and ``save_file`` / ``save`` / ``load_file`` /
``load`` in :mod:`pycryptotensors.numpy` and :mod:`pycryptotensors.torch`. Keys are
:class:`MasterKey` (wraps data keys) and :class:`SigningKey` / :class:`VerifyKey` (sign and verify headers).

Names are imported on first use (PEP 562): transparent mode imports this package in every process that
imports ``safetensors``, and a process that only ever opens plain files must not pay for numpy, the ciphers
and the key machinery.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_names
from .errors import (
    CipherError,
    ConfigError,
    CryptoTensorsError,
    DeviceError,
    FormatError,
    IntegrityError,
    KeyAccessError,
    KeyFormatError,
    KeyServiceDeniedError,
    KeyServiceError,
    KeyServiceNotAllowedError,
    KeyServiceUnauthorizedError,
    KeyServiceUnreachableError,
    ManifestError,
    MissingKeyError,
    NotEncryptedError,
    PolicyDeniedError,
    RemotePolicyDeniedError,
    RemoteSourceError,
    SharedTensorsError,
    SignatureError,
    TensorNotFoundError,
    UnsupportedError,
    WrongKeyError,
)

if TYPE_CHECKING:
    from .config import LoadOptions, SaveOptions
    from .format.crypto_header import CryptoHeader
    from .keys.jwk import MasterKey, SigningKey, VerifyKey, generate_master_key, generate_signing_key, parse_jwk
    from .keys.keyring import KeyRing
    from .reading.handle import safe_open

_LAZY = {
    "LoadOptions": ".config",
    "SaveOptions": ".config",
    "CryptoHeader": ".format.crypto_header",
    "MasterKey": ".keys.jwk",
    "SigningKey": ".keys.jwk",
    "VerifyKey": ".keys.jwk",
    "generate_master_key": ".keys.jwk",
    "generate_signing_key": ".keys.jwk",
    "parse_jwk": ".keys.jwk",
    "KeyRing": ".keys.keyring",
    "safe_open": ".reading.handle",
}


__getattr__, __dir__ = lazy_names(__name__, _LAZY)

__version__ = "0.1.0"

__all__ = [
    "CipherError",
    "ConfigError",
    "CryptoHeader",
    "CryptoTensorsError",
    "DeviceError",
    "FormatError",
    "IntegrityError",
    "KeyAccessError",
    "KeyFormatError",
    "KeyServiceDeniedError",
    "KeyServiceError",
    "KeyServiceNotAllowedError",
    "KeyServiceUnauthorizedError",
    "KeyServiceUnreachableError",
    "KeyRing",
    "LoadOptions",
    "ManifestError",
    "MasterKey",
    "MissingKeyError",
    "NotEncryptedError",
    "PolicyDeniedError",
    "RemotePolicyDeniedError",
    "RemoteSourceError",
    "SaveOptions",
    "SharedTensorsError",
    "SignatureError",
    "SigningKey",
    "TensorNotFoundError",
    "UnsupportedError",
    "VerifyKey",
    "WrongKeyError",
    "generate_master_key",
    "generate_signing_key",
    "parse_jwk",
    "safe_open",
]
