"""pycryptotensors: encrypted, signed safetensors files (the CryptoTensors format), loaded lazily.

The API mirrors safetensors: :func:`safe_open` here, and ``save_file`` / ``save`` / ``load_file`` /
``load`` in :mod:`pycryptotensors.numpy` and :mod:`pycryptotensors.torch`. Keys are
:class:`MasterKey` (wraps data keys) and :class:`SigningKey` / :class:`VerifyKey` (sign and verify headers).
"""

from .config import LoadOptions, SaveOptions
from .errors import (
    ConfigError,
    CryptoTensorsError,
    FormatError,
    IntegrityError,
    KeyAccessError,
    KeyFormatError,
    KeyServiceDeniedError,
    KeyServiceError,
    KeyServiceNotAllowedError,
    KeyServiceUnauthorizedError,
    KeyServiceUnreachableError,
    MissingKeyError,
    NotEncryptedError,
    PolicyDeniedError,
    RemotePolicyDeniedError,
    SignatureError,
    UnsupportedError,
    WrongKeyError,
)
from .format.crypto_header import CryptoHeader
from .keys import KeyRing, MasterKey, SigningKey, VerifyKey, generate_master_key, generate_signing_key, parse_jwk
from .reading.handle import safe_open

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "CryptoHeader",
    "CryptoTensorsError",
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
    "MasterKey",
    "MissingKeyError",
    "NotEncryptedError",
    "PolicyDeniedError",
    "RemotePolicyDeniedError",
    "SaveOptions",
    "SignatureError",
    "SigningKey",
    "UnsupportedError",
    "VerifyKey",
    "WrongKeyError",
    "generate_master_key",
    "generate_signing_key",
    "parse_jwk",
    "safe_open",
]
