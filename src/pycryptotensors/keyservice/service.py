"""Release decisions, independent of HTTP: who asks, for which file, and whether the keys go out.

Order, every step refusing with a reason code and an audit record:
authenticate the client token (before the body is read, by the HTTP layer) -> validate the request and header
-> find the principal's grants for the header's key id (none: ``no_grant``, whether or not the key id is
registered, so a client cannot tell registered key ids from unknown ones) -> find the registered model ->
verify the header signature against the publisher key registered for it (never one the client sends) -> find
a usable grant -> verify attestation evidence, if any, and that it binds this request -> evaluate the file's
``remote`` policy -> count the grant use (atomically) -> unwrap the data keys and seal them to the client's
ephemeral key. The master key never leaves. A publisher-key request runs the steps up to the grant check and
answers with the registered public key. Failures before authentication are audited as one counted row per
source, action, reason and minute, so they cannot flood the log. HTTP statuses are the app's business.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..cipher.aead import unwrap_keys
from ..cipher.signature import verify_header
from ..errors import CryptoTensorsError, FormatError, SignatureError, WrongKeyError
from ..format.crypto_header import CryptoHeader, parse_crypto_header
from ..format.header import PREFIX_SIZE, parse_header
from ..policy.rego import evaluate_policy
from .attestation import AttestationError, AttestationVerifier
from .protocol import ReleaseRequest, b64e, header_digest, publisher_request_header, seal
from .refusal import MAX_KID, RefusedError, check_kid
from .store import AuditRecord, Grant, Model, Store

__all__ = ["Context", "RefusedError", "ReleaseService"]
AGGREGATE_WINDOW = 60.0  # seconds: failures before authentication are counted per source, reason and window


@dataclass
class Context:
    """What is known so far about a request, for the audit record."""

    client: str | None
    principal: str | None = None
    kid: str | None = None
    model_id: str | None = None
    header_sha256: str | None = None


@dataclass
class ReleaseService:
    store: Store
    attestation: AttestationVerifier | None = None
    clock: Callable[[], float] = field(default=time.time)

    def _audit(self, ctx: Context, decision: str, reason: str, action: str = "release") -> None:
        self.store.audit(
            AuditRecord(
                self.clock(),
                ctx.principal,
                ctx.kid,
                ctx.model_id,
                ctx.header_sha256,
                decision,
                reason,
                ctx.client,
                action,
                ctx.principal,
            )
        )

    def refused_early(
        self, client: str | None, action: str, reason: str, message: str, actor: str | None = None
    ) -> RefusedError:
        """A refusal before the request could be read (no or a bad token, a body too large or too deep, too
        many failures): audited as one counted row per source, actor, action, reason and minute."""
        now = self.clock()
        window = int(now // AGGREGATE_WINDOW)
        self.store.audit(
            AuditRecord(now, None, None, None, None, "deny", f"{reason}: {message}", client, action, actor),
            aggregate=f"{window}|{client}|{actor}|{action}|{reason}",
        )
        return RefusedError(reason, message)

    def authenticate(self, token: str | None, client: str | None, action: str) -> str:
        """The principal holding this client token, or a refusal (audited, aggregated)."""
        principal = self.store.principal_for(token) if token else None
        if principal is None:
            raise self.refused_early(
                client, action, "unauthorized", "no valid client token (missing, unknown or revoked)"
            )
        return principal

    def release(self, principal: str, body: Any, client: str | None = None) -> dict[str, Any]:
        """The data keys of a file, sealed to the client's ephemeral key; every decision is audited."""
        ctx = Context(client, principal)
        result = self._decided(ctx, lambda: self._release(principal, body, ctx), "release")
        self._audit(ctx, "allow", "released")
        return result

    def publisher_key(self, principal: str, body: Any, client: str | None = None) -> dict[str, Any]:
        """The registered publisher key that verifies a header, for a client holding a usable grant for it.

        Public, and no grant use is spent: a consumer that opens a file only to read its metadata costs no
        release. Refusals are audited; answers are not (they hand out nothing secret)."""
        ctx = Context(client, principal)

        def answer() -> dict[str, Any]:
            try:
                header_bytes = publisher_request_header(body)
            except CryptoTensorsError as error:
                raise RefusedError("bad_request", f"invalid request: {error}") from None
            model, _, grants = self._registered(principal, header_bytes, ctx)
            self._usable_grant(principal, model.kid, grants, self.clock())
            return {"kid": model.kid, "publisher_key": model.publisher.to_jwk()}

        return self._decided(ctx, answer, "publisher-key")

    def _decided(self, ctx: Context, decide: Callable[[], dict[str, Any]], action: str) -> dict[str, Any]:
        """Run a decision; a refusal (or a failure, which is refused with no detail) is audited and raised."""
        try:
            return decide()
        except RefusedError as refusal:
            self._audit(ctx, "deny", f"{refusal.reason}: {refusal.message}", action)
            raise
        except Exception as error:  # a bug or a back-end failure: still audited, and no detail to the client
            self._audit(ctx, "deny", f"server_error: {type(error).__name__}", action)
            raise RefusedError("server_error", "internal error") from error

    def _registered(self, principal: str, header_bytes: bytes, ctx: Context) -> tuple[Model, CryptoHeader, list[Grant]]:
        """The registered model whose publisher signed this header (never a key the client sends), and the
        principal's grants for it. Without a grant the answer is ``no_grant`` whether or not the key id is
        registered: a client learns nothing about key ids it was not granted."""
        ctx.header_sha256 = header_digest(header_bytes)
        try:
            header = parse_header(header_bytes, PREFIX_SIZE + len(header_bytes), None)
            crypto = parse_crypto_header(header)
        except CryptoTensorsError as error:
            raise RefusedError("bad_request", f"invalid request or header: {error}") from None
        if crypto is None:
            raise RefusedError("bad_request", "the header is not an encrypted CryptoTensors header")
        try:  # a key id no model can be registered under, kept out of the audit log (a forged line in its text view)
            if crypto.enc.kid:
                check_kid(crypto.enc.kid)
        except RefusedError:
            raise RefusedError("bad_request", "the header's key id is not a printable string of at most "
                               f"{MAX_KID} characters") from None  # fmt: skip
        ctx.kid = crypto.enc.kid
        grants = self.store.grants_for(principal, crypto.enc.kid) if crypto.enc.kid else []
        if not grants:
            raise RefusedError("no_grant", f"{principal} has no grant for key id {crypto.enc.kid!r}")
        model = self.store.get_model(crypto.enc.kid) if crypto.enc.kid else None
        if model is None:
            raise RefusedError("unknown_key", f"no model is registered for key id {crypto.enc.kid!r}")
        ctx.model_id = model.model_id
        try:
            verify_header(model.publisher.public, header, crypto.signature)
        except (SignatureError, FormatError):
            raise RefusedError(
                "bad_signature", "the header does not verify under the registered publisher key"
            ) from None
        return model, crypto, grants

    def _release(self, principal: str, body: Any, ctx: Context) -> dict[str, Any]:
        try:
            request = ReleaseRequest.from_json(body)
        except CryptoTensorsError as error:
            raise RefusedError("bad_request", f"invalid request or header: {error}") from None
        model, crypto, grants = self._registered(principal, request.header_bytes, ctx)

        now = self.clock()
        grant = self._usable_grant(principal, model.kid, grants, now)
        attested = self._attested(request)
        document = self._policy_input(principal, request, attested, model.kid, model.model_id, crypto, grant, now)
        decision = evaluate_policy(crypto.policy_remote, document)
        if not decision.allowed:
            raise RefusedError("policy_denied", f"the remote policy denied the release: {decision.reason}")
        wrapped = {name: (s.wrapped_key, s.key_iv, s.key_tag) for name, s in crypto.encrypted.items()}
        try:
            data_keys = unwrap_keys(crypto.cipher, model.master_key.secret, wrapped)
        except WrongKeyError:
            raise RefusedError("unwrap_failed", "the registered master key does not unwrap this file's keys") from None
        if not self.store.consume_grant(grant.id, now):  # counted last: only a release that can happen uses it
            raise RefusedError("grant_exhausted", "the grant was used up or revoked meanwhile")
        payload = {
            "kid": model.kid,
            "data_keys": {name: b64e(key) for name, key in data_keys.items()},
            "publisher_key": model.publisher.to_jwk(),
        }
        return {"sealed": b64e(seal(payload, request)), "kid": model.kid}

    def _attested(self, request: ReleaseRequest) -> dict[str, Any] | None:
        """The verified claims of the request's attestation evidence, which must bind this very request (its
        header, ephemeral key and nonce): a token captured from another request is refused."""
        if request.attestation is None:
            return None
        if self.attestation is None:
            raise RefusedError("attestation_invalid", "this service verifies no attestation evidence")
        try:
            claims = self.attestation.verify(request.attestation)
        except AttestationError as error:
            raise RefusedError("attestation_invalid", str(error)) from None
        claim = self.attestation.nonce_claim
        if claims.get(claim) != request.binding:
            raise RefusedError(
                "attestation_invalid",
                f"the attestation token's {claim!r} claim does not bind this request (a replayed or stale token; "
                "the client must ask for evidence naming the binding it is given)",
            )
        return claims

    @staticmethod
    def _usable_grant(principal: str, kid: str, grants: list[Grant], now: float) -> Grant:
        refusals = []
        for grant in grants:
            why = grant.refusal(now)
            if why is None:
                return grant
            refusals.append(why)
        reason = next(r for r in ("grant_exhausted", "grant_expired", "grant_revoked") if r in refusals)
        raise RefusedError(reason, f"{principal}'s grant for key id {kid!r} is {reason.split('_')[1]}")

    @staticmethod
    def _policy_input(
        principal: str,
        request: ReleaseRequest,
        attested: dict[str, Any] | None,
        kid: str,
        model_id: str,
        crypto: Any,
        grant: Grant,
        now: float,
    ) -> dict[str, Any]:
        return {
            "principal": principal,
            "claims": request.claims,
            "attestation": attested,
            "time": {
                "now_ns": int(now * 1e9),
                "rfc3339": datetime.datetime.fromtimestamp(now, datetime.UTC).isoformat(timespec="seconds"),
            },
            "model": {
                "kid": kid,
                "model_id": model_id,
                "encrypted_tensors": len(crypto.encrypted),
                "header_sha256": header_digest(request.header_bytes),
            },
            "grant": {"id": grant.id, "uses": grant.uses, "max_uses": grant.max_uses, "not_after": grant.not_after},
            # What this request is bound to: a policy can require attestation evidence to carry one of them.
            "request": {
                "nonce": b64e(request.nonce),
                "ephemeral_key": b64e(request.ephemeral_public),
                "binding": request.binding,
            },
        }
