"""The key-release protocol, shared by client and service.

A client asks for a file's data keys with its exact signed header, its claims, optional attestation evidence,
a fresh nonce and an ephemeral X25519 public key. The service answers with the data keys sealed to that
ephemeral key with HPKE (RFC 9180, base mode: X25519, HKDF-SHA256, AES-256-GCM, from ``cryptography``). The
HPKE ``info`` binds the answer to this header, this ephemeral key and this nonce, so a sealed answer opens
only for the request that asked for it: replayed to another client (another ephemeral key) it fails.

A client that only needs to verify a header (to read a file's metadata, as transformers does before it loads)
asks for the publisher's public key instead: no data key leaves the service and no grant use is spent.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from ..errors import FormatError, IntegrityError

VERSION = "pycryptotensors/key-release/v1"
PUBLISHER_VERSION = "pycryptotensors/publisher-key/v1"
SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
NONCE_SIZE = 16


def b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64d(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise FormatError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise FormatError(f"{what} is not valid base64") from None


def header_digest(header_bytes: bytes) -> str:
    return hashlib.sha256(header_bytes).hexdigest()


def _info(header_bytes: bytes, ephemeral_public: bytes, nonce: bytes) -> bytes:
    return b"|".join([VERSION.encode(), hashlib.sha256(header_bytes).digest(), ephemeral_public, nonce])


def binding(header_bytes: bytes, ephemeral_public: bytes, nonce: bytes) -> str:
    """What attestation evidence must name to be good for one request only: base64url (no padding) of
    SHA-256 over the HPKE info (version, header digest, ephemeral key, nonce). The client hands it to its
    evidence callable, which asks the attestation service for a token whose ``nonce`` claim is this value; the
    service refuses a token that names another request, so a captured token cannot be replayed."""
    digest = hashlib.sha256(_info(header_bytes, ephemeral_public, nonce)).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _raw_public(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class ReleaseRequest:
    header_bytes: bytes
    ephemeral_public: bytes  # raw X25519
    nonce: bytes
    claims: dict[str, Any]
    attestation: str | None = None

    @property
    def binding(self) -> str:
        return binding(self.header_bytes, self.ephemeral_public, self.nonce)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "header": b64e(self.header_bytes),
            "ephemeral_key": b64e(self.ephemeral_public),
            "nonce": b64e(self.nonce),
            "claims": self.claims,
            "attestation": self.attestation,
        }

    @classmethod
    def from_json(cls, body: Any) -> ReleaseRequest:
        if not isinstance(body, dict) or body.get("version") != VERSION:
            raise FormatError(f"not a {VERSION} request")
        claims = body.get("claims") or {}
        attestation = body.get("attestation")
        if not isinstance(claims, dict) or (attestation is not None and not isinstance(attestation, str)):
            raise FormatError("claims must be an object and attestation a string")
        ephemeral, nonce = b64d(body.get("ephemeral_key"), "ephemeral_key"), b64d(body.get("nonce"), "nonce")
        if len(ephemeral) != 32 or len(nonce) != NONCE_SIZE:
            raise FormatError("ephemeral_key must be 32 bytes and nonce 16")
        return cls(b64d(body.get("header"), "header"), ephemeral, nonce, claims, attestation)


def publisher_request(header_bytes: bytes) -> dict[str, Any]:
    """A request for the public key that verifies this header (no data keys)."""
    return {"version": PUBLISHER_VERSION, "header": b64e(header_bytes)}


def publisher_request_header(body: Any) -> bytes:
    if not isinstance(body, dict) or body.get("version") != PUBLISHER_VERSION:
        raise FormatError(f"not a {PUBLISHER_VERSION} request")
    return b64d(body.get("header"), "header")


class Ephemeral:
    """The client's one-request key pair; its private half never leaves the process."""

    def __init__(self) -> None:
        self._private = X25519PrivateKey.generate()
        self.public = _raw_public(self._private.public_key())
        self.nonce = os.urandom(NONCE_SIZE)

    def binding(self, header_bytes: bytes) -> str:
        return binding(header_bytes, self.public, self.nonce)

    def request(self, header_bytes: bytes, claims: dict[str, Any], attestation: str | None) -> ReleaseRequest:
        return ReleaseRequest(header_bytes, self.public, self.nonce, claims, attestation)

    def open(self, sealed: bytes, header_bytes: bytes) -> dict[str, Any]:
        try:
            plaintext = SUITE.decrypt(sealed, self._private, info=_info(header_bytes, self.public, self.nonce))
        except (InvalidTag, ValueError):
            raise IntegrityError(
                "the key service's sealed answer does not open for this request (replayed, or tampered with)"
            ) from None
        answer = json.loads(plaintext)
        if not isinstance(answer, dict):  # authentic, so a protocol mismatch rather than an attack
            raise FormatError("the key service's sealed answer is not a JSON object: is it the same version?")
        return answer


def seal(payload: dict[str, Any], request: ReleaseRequest) -> bytes:
    """Encrypt ``payload`` to the request's ephemeral key, bound to its header and nonce (service side)."""
    recipient = X25519PublicKey.from_public_bytes(request.ephemeral_public)
    info = _info(request.header_bytes, request.ephemeral_public, request.nonce)
    return SUITE.encrypt(json.dumps(payload).encode(), recipient, info=info)
