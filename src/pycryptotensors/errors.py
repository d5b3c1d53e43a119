"""The exceptions pycryptotensors raises.

Every failure is one of these, so a caller can tell "the file is broken" from "the file was tampered with"
from "I lack the key" from "the publisher's policy says no" with one ``except`` clause each. They all derive
from :class:`CryptoTensorsError`; messages never contain key material.
"""

from __future__ import annotations


class CryptoTensorsError(Exception):
    """Base class of every error raised by pycryptotensors."""

    #: the file the error is about, when the code that knows it set it (the command line names it on the error
    #: line); ``None`` otherwise
    path: str | None = None


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


class ManifestError(IntegrityError):
    """A model folder does not match its signed manifest (``model.sig``): a file missing, added or changed, a
    shard from another release, an index entry leaving the folder; or it has no manifest where the consumer's
    trust settings require one (docs/SECURITY.md, "Whole models")."""


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


class KeyServiceError(KeyAccessError):
    """The key service did not release the file's data keys. ``reason`` is the service's reason code."""

    reason = "error"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class KeyServiceUnreachableError(KeyServiceError):
    """The key service could not be reached (after retries), or answered with a server error."""

    reason = "unreachable"


class KeyServiceNotAllowedError(KeyServiceError):
    """The file names a key service that is not in the consumer's allow-list; it was not contacted."""

    reason = "not_allowed"


class KeyServiceUnauthorizedError(KeyServiceError):
    """The service did not accept our credential: none configured, unknown, or revoked."""

    reason = "unauthorized"


class KeyServiceDeniedError(KeyServiceError):
    """The service refused the release: no grant, grant revoked / expired / used up, unknown key id, a
    header that does not verify under the registered publisher key, or invalid attestation evidence."""


class RemotePolicyDeniedError(KeyServiceDeniedError, PolicyDeniedError):
    """The file's remote policy, evaluated by the key service, did not allow the release."""

    reason = "policy_denied"


class CipherError(CryptoTensorsError):
    """The ``cryptography`` library refused an operation for a reason other than a failed tag.

    Not a verdict on the file: an installed ``cryptography`` release that behaves differently, or an
    environment it does not support. The message names the operation and the library's reason.
    """


class ConfigError(CryptoTensorsError, ValueError):
    """The caller's configuration is invalid (unknown option, conflicting settings, bad value)."""


class RemoteSourceError(CryptoTensorsError):
    """A remote file (``s3://``, ``gs://``, ``az://``, ``hf://``, ``https://``) could not be read: unreachable
    after the retries, access refused, not found, a server that ignores range requests, or the remote extra
    not installed. The message names the URL without credentials or query string. (An object replaced while
    it is read is an :class:`IntegrityError`.)"""


# Last, because importing safetensors runs transparent mode's hook, which imports the classes above.
from safetensors import SafetensorError  # noqa: E402


class TensorNotFoundError(CryptoTensorsError, SafetensorError, KeyError):
    """The file has no tensor of that name. Also a ``safetensors.SafetensorError`` (what safetensors raises
    for plain files, so one ``except`` serves both) and a ``KeyError`` (what a dict lookup raises)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class SharedTensorsError(UnsupportedError, RuntimeError):
    """Tensors given to ``save`` share memory; raised where (and as) ``safetensors.torch`` raises its
    ``RuntimeError``. Save each tensor once (``clone()`` the others)."""


class DeviceError(ConfigError, RuntimeError):
    """The device asked for is not available here (e.g. ``cuda:0`` without a GPU); the same for plain and
    encrypted files. A ``RuntimeError`` too, like torch's own refusal."""


__all__ = [
    "CipherError",
    "ConfigError",
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
    "ManifestError",
    "MissingKeyError",
    "NotEncryptedError",
    "PolicyDeniedError",
    "RemoteSourceError",
    "RemotePolicyDeniedError",
    "SharedTensorsError",
    "SignatureError",
    "TensorNotFoundError",
    "UnsupportedError",
    "WrongKeyError",
]
