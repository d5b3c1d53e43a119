"""JSON Web Keys in both dialects: RFC 7517 (base64url, ``A256GCM``, ``OKP``/``Ed25519``/``EdDSA``) and the
reference's variant (standard base64, ``aes256gcm``, lowercase ``okp``/``ed25519``). We read both and write
RFC 7517 by default. Key objects never show their secret in ``repr``."""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import KeyFormatError, UnsupportedError
from ..format.algorithms import ALGORITHMS, Algorithm, algorithm


def _decode(value: Any, what: str) -> bytes:
    """Decode standard base64 or base64url, padded or not."""
    if not isinstance(value, str) or not value:
        raise KeyFormatError(f"{what} must be a non-empty base64 string")
    text = value.strip().replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise KeyFormatError(f"{what} is not valid base64") from None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64std(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def new_kid() -> str:
    return secrets.token_hex(8)


@dataclass(frozen=True, repr=False)
class MasterKey:
    """A symmetric key that wraps per-tensor data keys."""

    secret: bytes = field(compare=True)
    alg: Algorithm = ALGORITHMS["aes256gcm"]
    kid: str | None = None

    def __post_init__(self) -> None:
        if len(self.secret) != self.alg.key_size:
            raise KeyFormatError(
                f"{self.alg.name} master key must be {self.alg.key_size} bytes, not {len(self.secret)}"
            )

    def __repr__(self) -> str:
        return f"MasterKey(alg={self.alg.name!r}, kid={self.kid!r})"

    def to_jwk(self, dialect: str = "rfc") -> dict[str, str]:
        """The JWK form of this key, secret included (store it 0600).

        Args:
            dialect: ``"rfc"`` (RFC 7517/7518: ``kty`` ``oct``, ``alg`` ``A256GCM``, base64url) or
                ``"reference"`` (the reference library's variant: ``alg`` ``aes256gcm``, standard base64).

        Returns:
            The JWK as a dict of strings; ``kid`` is present when the key has one.
        """
        if dialect == "reference":
            jwk = {"kty": "oct", "alg": self.alg.name, "k": _b64std(self.secret)}
        else:
            jwk = {"kty": "oct", "alg": self.alg.jwk_name, "k": _b64url(self.secret)}
        if self.kid is not None:
            jwk["kid"] = self.kid
        return jwk


@dataclass(frozen=True, repr=False)
class VerifyKey:
    """The public half of a publisher's Ed25519 signing key."""

    public: Ed25519PublicKey
    kid: str | None = None

    def __repr__(self) -> str:
        return f"VerifyKey(kid={self.kid!r})"

    @property
    def raw(self) -> bytes:
        """The 32 raw bytes of the Ed25519 public key."""
        return self.public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def to_jwk(self, dialect: str = "rfc") -> dict[str, str]:
        """The JWK form of this public key.

        Args:
            dialect: ``"rfc"`` (RFC 8037: ``kty`` ``OKP``, ``crv`` ``Ed25519``, base64url) or ``"reference"``
                (the reference library's variant: ``kty`` ``okp``, ``alg`` ``ed25519``, standard base64).

        Returns:
            The JWK as a dict of strings; ``kid`` is present when the key has one.
        """
        if dialect == "reference":
            jwk = {"kty": "okp", "alg": "ed25519", "x": _b64std(self.raw)}
        else:
            jwk = {"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "x": _b64url(self.raw)}
        if self.kid is not None:
            jwk["kid"] = self.kid
        return jwk


@dataclass(frozen=True, repr=False)
class SigningKey:
    """An Ed25519 private key that signs headers."""

    private: Ed25519PrivateKey
    kid: str | None = None

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid!r})"

    @property
    def verify_key(self) -> VerifyKey:
        """The public half, with the same ``kid``: what consumers pin and verify headers with."""
        return VerifyKey(self.private.public_key(), self.kid)

    def to_jwk(self, dialect: str = "rfc") -> dict[str, str]:
        """The JWK form of this private key (``d`` and ``x``; store it 0600).

        Args:
            dialect: ``"rfc"`` (RFC 8037, base64url) or ``"reference"`` (the reference's variant).

        Returns:
            The JWK as a dict of strings; ``kid`` is present when the key has one.
        """
        seed = self.private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        jwk = self.verify_key.to_jwk(dialect)
        jwk["d"] = _b64std(seed) if dialect == "reference" else _b64url(seed)
        return jwk


def generate_master_key(alg: str = "aes256gcm", kid: str | None = None) -> MasterKey:
    """A new random master key.

    Args:
        alg: The AEAD that wraps data keys and encrypts tensors: ``"aes256gcm"`` (default),
            ``"aes128gcm"`` or ``"chacha20poly1305"`` (RFC names such as ``"A256GCM"`` are accepted too).
        kid: Its key id; a random 16-hex-digit id when None.

    Returns:
        The key, from the operating system's random source.

    Raises:
        UnsupportedError: ``alg`` is not one of the supported algorithms.
    """
    chosen = algorithm(alg)
    return MasterKey(secrets.token_bytes(chosen.key_size), chosen, kid if kid is not None else new_kid())


def generate_signing_key(kid: str | None = None) -> SigningKey:
    """A new random Ed25519 signing key.

    Args:
        kid: Its key id (its public half gets the same); a random 16-hex-digit id when None.

    Returns:
        The private key; ``.verify_key`` is the public half to give consumers.
    """
    return SigningKey(Ed25519PrivateKey.generate(), kid if kid is not None else new_kid())


def parse_jwk(jwk: Any) -> MasterKey | SigningKey | VerifyKey:
    """Read one JWK in either dialect (RFC 7517 or the reference library's).

    Args:
        jwk: A JWK as a dict (``kty`` ``oct``: a master key; ``OKP`` with ``d``: a signing key; ``OKP``
            without ``d``: a verification key), or a key object, returned as it is.

    Returns:
        The key: a MasterKey, a SigningKey (private OKP key) or a VerifyKey (public one).

    Raises:
        KeyFormatError: Not a dict, unknown ``kty`` / ``alg`` / ``crv``, bad base64, wrong length, a
            ``kid`` that is not a string, or ``x`` that does not match ``d``.
    """
    if isinstance(jwk, MasterKey | SigningKey | VerifyKey):
        return jwk
    if not isinstance(jwk, dict):
        raise KeyFormatError("a key must be a JWK object")
    kty = jwk.get("kty")
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise KeyFormatError("kid must be a string")
    if not isinstance(kty, str):
        raise KeyFormatError("JWK has no kty")
    if kty.lower() == "oct":
        alg = jwk.get("alg", "aes256gcm")
        try:
            chosen = algorithm(alg) if isinstance(alg, str) else None
        except UnsupportedError:
            chosen = None
        if chosen is None:
            raise KeyFormatError(f"unsupported master key algorithm {alg!r}")
        return MasterKey(_decode(jwk.get("k"), "k"), chosen, kid)
    if kty.lower() == "okp":
        alg, crv = str(jwk.get("alg", "EdDSA")).lower(), str(jwk.get("crv", "Ed25519")).lower()
        if alg not in ("eddsa", "ed25519") or crv != "ed25519":
            raise KeyFormatError(f"unsupported signing key (alg {alg!r}, crv {crv!r}); only Ed25519 is supported")
        if "d" in jwk:
            seed = _decode(jwk["d"], "d")
            if len(seed) != 32:
                raise KeyFormatError("Ed25519 private key must be 32 bytes")
            private = Ed25519PrivateKey.from_private_bytes(seed)
            if "x" in jwk and _decode(jwk["x"], "x") != SigningKey(private).verify_key.raw:
                raise KeyFormatError("Ed25519 JWK: x does not match d")
            return SigningKey(private, kid)
        x = _decode(jwk.get("x"), "x")
        if len(x) != 32:
            raise KeyFormatError("Ed25519 public key must be 32 bytes")
        return VerifyKey(Ed25519PublicKey.from_public_bytes(x), kid)
    raise KeyFormatError(f"unsupported key type {kty!r}")
