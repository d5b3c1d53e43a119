"""Attestation evidence: a JWT issued by an attestation service, checked against that service's keys.

Confidential-computing attestation services (Azure Attestation, Intel Trust Authority, ...) hand a workload
a signed JWT whose claims describe the TEE (type, measurement, debug flag). The key service verifies the
signature against the issuer's configured JWKS, the issuer, the audience (required) and the expiry; the
service then checks that the token's nonce claim binds this very request (protocol.binding) and hands the
claims to the remote policy as ``input.attestation``. The interface is one method, so other evidence formats
can be added without touching the release logic.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jwt

from .refusal import ServiceError

ALGORITHMS = ["ES256", "ES384", "RS256", "PS256", "EdDSA"]


class AttestationError(ServiceError):
    reason = "attestation_invalid"


class AttestationVerifier(Protocol):
    @property
    def nonce_claim(self) -> str:
        """The claim that must equal the request's binding (see protocol.binding); read-only."""
        ...

    def verify(self, evidence: str) -> dict[str, Any]:
        """The verified claims, or AttestationError."""
        ...


@dataclass(frozen=True)
class JwtAttestationVerifier:
    issuer: str
    jwks: dict[str, Any]  # the attestation service's public keys (a JWK Set)
    audience: str  # required: a token minted for another relying party must not be accepted here
    leeway: float = 30.0
    nonce_claim: str = "nonce"

    def __post_init__(self) -> None:
        if not self.issuer or not self.audience:
            raise ValueError(
                "attestation needs an issuer and an audience (--attestation-issuer, --attestation-audience)"
            )

    @classmethod
    def from_files(
        cls, issuer: str, jwks_path: str, audience: str, nonce_claim: str = "nonce"
    ) -> JwtAttestationVerifier:
        return cls(issuer, json.loads(Path(jwks_path).read_text(encoding="utf-8")), audience, nonce_claim=nonce_claim)

    def verify(self, evidence: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(evidence)
            keys = jwt.PyJWKSet.from_dict(self.jwks).keys
        except (jwt.PyJWTError, ValueError, KeyError) as error:
            raise AttestationError(f"attestation token rejected: {error}") from None
        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:
            raise AttestationError(f"attestation token uses an unaccepted algorithm {algorithm!r}")
        # Only keys of the token's algorithm (and of its kid, if it names one) are tried: a key of another type
        # must never be fed to another algorithm's verifier.
        candidates = [k for k in keys if k.algorithm_name == algorithm and header.get("kid") in (None, k.key_id)]
        if not candidates:
            raise AttestationError("attestation token signed by a key the issuer does not list")
        last: Exception | None = None
        for key in candidates:
            try:
                return jwt.decode(
                    evidence,
                    key=key.key,
                    algorithms=[algorithm],
                    issuer=self.issuer,
                    audience=self.audience,
                    leeway=self.leeway,
                    options={"require": ["exp", "iat", "iss", "aud"]},
                )
            except jwt.InvalidSignatureError as error:
                last = error
            except (jwt.PyJWTError, ValueError, TypeError) as error:
                raise AttestationError(f"attestation token rejected: {error}") from None
        raise AttestationError(f"attestation token does not verify: {last}")
