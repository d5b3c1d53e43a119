"""The exceptions pycryptotensors raises.

Every failure is one of these, so a caller can tell "the file is broken" from "the file was tampered with"
from "I lack the key" from "the publisher's policy says no" with one ``except`` clause each. They all derive
from :class:`CryptoTensorsError`; messages never contain key material.
"""

from __future__ import annotations


class CryptoTensorsError(Exception):
    """Base class of every error raised by pycryptotensors."""


class FormatError(CryptoTensorsError, ValueError):
    """The file (or byte string) is not a well-formed safetensors / CryptoTensors file.

    Raised for truncated files, headers that lie about sizes or offsets, bad JSON, bad base64, wrong field
    types, and anything else caught while validating the untrusted header, before any allocation.
    """


class UnsupportedError(FormatError):
    """Well-formed, but uses something this version does not support (format version, algorithm, dtype)."""


class IntegrityError(CryptoTensorsError):
    """Authentication failed: a signature, AEAD tag or digest does not match.

    The file was modified after it was written (or is being read with a header from another file). No bytes
    that failed authentication are ever returned.
    """


class SignatureError(IntegrityError):
    """The header signature does not verify under the trusted signer key."""


class NotEncryptedError(IntegrityError):
    """The caller required an encrypted, signed file and got a plain one (stripped crypto metadata?)."""


class KeyAccessError(CryptoTensorsError):
    """Base class of the key problems: a key is missing, wrong, or malformed."""


class MissingKeyError(KeyAccessError):
    """No key is available for a key id the file needs (master key or signature verification key)."""


class WrongKeyError(KeyAccessError):
    """A master key was found but it does not unwrap the file's data keys.

    Either the key is not the one the file was encrypted for, or the wrapped keys were tampered with.
    """


class KeyFormatError(KeyAccessError, ValueError):
    """A key (JWK) is malformed: wrong type, wrong length, bad encoding, unknown algorithm."""


class PolicyDeniedError(CryptoTensorsError):
    """The file's access policy did not allow this load (false, undefined, or an error while evaluating)."""


class ConfigError(CryptoTensorsError, ValueError):
    """The caller's configuration is invalid (unknown option, conflicting settings, bad value)."""


__all__ = [
    "ConfigError",
    "CryptoTensorsError",
    "FormatError",
    "IntegrityError",
    "KeyAccessError",
    "KeyFormatError",
    "MissingKeyError",
    "NotEncryptedError",
    "PolicyDeniedError",
    "SignatureError",
    "UnsupportedError",
    "WrongKeyError",
]
