"""The publisher's decisions: register models, issue and revoke client tokens, grant and revoke access, manage
admin tokens, list what is there. Every change is audited with its actor (the admin's name), action, target
and outcome, never a secret; reading lists changes nothing and is not audited. Nothing here can change the
audit log. HTTP statuses are the app's business (reason codes only here).
"""

from __future__ import annotations

import datetime
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import CryptoTensorsError
from ..format.algorithms import algorithm
from ..keys.jwk import MasterKey, SigningKey, VerifyKey, generate_master_key, parse_jwk
from .refusal import RefusedError, check_kid, check_name
from .store import AuditRecord, Grant, Model, Store

ADMIN_PREFIX = "adm_"


def new_admin_token() -> str:
    return ADMIN_PREFIX + secrets.token_urlsafe(32)


def parse_time(value: Any) -> float | None:
    """A unix time or an ISO 8601 date (a date without a zone means UTC, never the server's local time)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("not a time")
    if isinstance(value, int | float):
        return float(value)
    moment = datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def grant_json(grant: Grant) -> dict[str, Any]:
    return asdict(grant)


@dataclass
class Management:
    store: Store
    clock: Callable[[], float] = field(default=time.time)

    def _audit(
        self, actor: str, action: str, target: str | None, reason: str, client: str | None, kid: str | None = None
    ) -> None:
        record = AuditRecord(self.clock(), None, kid, None, None, "allow", reason, client, action, actor, target)
        self.store.audit(record)

    def refused(
        self, actor: str, action: str, refusal: RefusedError, client: str | None, kid: str | None = None
    ) -> RefusedError:
        """Audit a refused admin request (by an authenticated admin) and hand the refusal back to raise."""
        record = AuditRecord(
            self.clock(), None, kid, None, None, "deny", f"{refusal.reason}: {refusal.message}", client, action, actor
        )
        self.store.audit(record)
        return refusal

    # -- models

    def register(self, actor: str, kid: str, payload: Any, client: str | None) -> dict[str, Any]:
        kid = check_kid(kid)
        if not isinstance(payload, dict) or "publisher_key" not in payload:
            raise RefusedError("bad_request", "publisher_key (a public JWK) is required")
        replace = payload.get("replace") is True
        existing = self.store.get_model(kid) is not None
        if existing and not replace:
            # Replacing a master key strands every file encrypted under the old one: only on explicit request.
            raise RefusedError("conflict", f"key id {kid!r} is already registered (use replace to overwrite)")
        try:
            publisher = parse_jwk(payload["publisher_key"])
            publisher = publisher.verify_key if isinstance(publisher, SigningKey) else publisher
            if not isinstance(publisher, VerifyKey):
                raise ValueError("publisher_key must be an Ed25519 public key")
            if payload.get("master_key") is not None:
                master = parse_jwk(payload["master_key"])
                if not isinstance(master, MasterKey):
                    raise ValueError("master_key must be a symmetric (oct) key")
                master = MasterKey(master.secret, master.alg, kid)
                generated = None
            else:
                master = generate_master_key(algorithm(payload.get("alg", "aes256gcm")).name, kid)
                generated = master.to_jwk()
        except (CryptoTensorsError, ValueError) as error:
            raise RefusedError("bad_request", str(error)) from None
        model_id = str(payload.get("model_id", kid))
        self.store.put_model(Model(kid, model_id, master, publisher))
        action, done = ("replace", "replaced") if existing else ("register", "registered")
        self._audit(actor, action, kid, f"{done} key id {kid} (model {model_id})", client, kid)
        answer: dict[str, Any] = {"kid": kid, "model_id": model_id}
        if generated is not None:
            answer["master_key"] = generated  # shown once, for the publisher to encrypt with
        return answer

    def models(self) -> list[dict[str, Any]]:
        return [asdict(m) for m in self.store.list_models()]

    # -- client tokens

    def create_token(self, actor: str, payload: Any, client: str | None) -> dict[str, Any]:
        principal = check_name(payload.get("principal") if isinstance(payload, dict) else None, "principal")
        token = self.store.add_token(principal)
        self._audit(actor, "token.create", principal, "token created", client)
        return {"principal": principal, "token": token}

    def revoke_tokens(self, actor: str, payload: Any, client: str | None) -> dict[str, Any]:
        """Revoke every token of a principal (any name, even one made before the grammar) or one token by id."""
        principal = payload.get("principal") if isinstance(payload, dict) else None
        token_id = payload.get("token_id") if isinstance(payload, dict) else None
        if isinstance(token_id, str) and principal is None:
            owner = self.store.revoke_token(token_id)
            if owner is None:
                raise RefusedError("not_found", f"no active token with id {token_id!r}")
            self._audit(actor, "token.revoke", owner, f"token {token_id} revoked", client)
            return {"principal": owner, "revoked": 1, "token_id": token_id}
        if not isinstance(principal, str) or not principal or token_id is not None:
            raise RefusedError("bad_request", "give either principal or token_id")
        count = self.store.revoke_tokens(principal)
        self._audit(actor, "token.revoke", principal, f"{count} token(s) revoked", client)
        return {"principal": principal, "revoked": count}

    def tokens(self) -> list[dict[str, Any]]:
        return [asdict(t) for t in self.store.list_tokens()]

    # -- grants

    def create_grant(self, actor: str, payload: Any, client: str | None) -> dict[str, Any]:
        if not isinstance(payload, dict):
            raise RefusedError("bad_request", "principal and kid are required")
        principal = check_name(payload.get("principal"), "principal")
        kid = check_kid(payload.get("kid"))
        max_uses = payload.get("max_uses")
        if max_uses is not None and (not isinstance(max_uses, int) or isinstance(max_uses, bool) or max_uses < 1):
            # zero uses would release nothing: refused, so that a typo cannot pass for a grant
            raise RefusedError("bad_request", "max_uses must be a positive integer (omit it for no limit)")
        try:
            not_after = parse_time(payload.get("not_after"))
        except (ValueError, TypeError):
            raise RefusedError("bad_request", "not_after must be a unix time or an ISO 8601 date") from None
        warnings = []
        if self.store.get_model(kid) is None:
            warnings.append(f"key id {kid!r} is not registered (yet): the grant releases nothing until it is")
        if not_after is not None and not_after <= self.clock():
            warnings.append("the grant's expiry is in the past: it releases nothing")
        grant = self.store.add_grant(principal, kid, not_after, max_uses)
        self._audit(actor, "grant.create", principal, f"grant {grant.id} created", client, kid)
        return {**grant_json(grant), "warnings": warnings}

    def revoke_grant(self, actor: str, grant_id: str, client: str | None) -> dict[str, Any]:
        grant = self.store.get_grant(grant_id)
        if grant is None or not self.store.revoke_grant(grant_id):
            raise RefusedError("not_found", "no such active grant")
        self._audit(actor, "grant.revoke", grant.principal, f"grant {grant_id} revoked", client, grant.kid)
        return {"revoked": grant_id}

    def grant(self, grant_id: str) -> dict[str, Any]:
        grant = self.store.get_grant(grant_id)
        if grant is None:
            raise RefusedError("not_found", f"no grant with id {grant_id!r}")
        return grant_json(grant)

    def grants(self, principal: str | None = None, kid: str | None = None) -> list[dict[str, Any]]:
        return [
            grant_json(g)
            for g in self.store.list_grants()
            if (principal is None or g.principal == principal) and (kid is None or g.kid == kid)
        ]

    # -- admins

    def create_admin(self, actor: str, payload: Any, client: str | None) -> dict[str, Any]:
        name = check_name(payload.get("name") if isinstance(payload, dict) else None, "admin name")
        token = new_admin_token()
        self.store.set_admin(token, name)
        self._audit(actor, "admin.create", name, "admin token created", client)
        return {"name": name, "token": token}

    def rotate_admin(self, actor: str, client: str | None) -> dict[str, Any]:
        """A new token for the calling admin; every older token of that name stops working at once."""
        self.store.revoke_admin(actor)
        token = new_admin_token()
        self.store.set_admin(token, actor)
        self._audit(actor, "admin.rotate", actor, "admin token rotated", client)
        return {"name": actor, "token": token}

    def revoke_admin(self, actor: str, payload: Any, client: str | None) -> dict[str, Any]:
        name = payload.get("name") if isinstance(payload, dict) else None
        if not isinstance(name, str) or not name:
            raise RefusedError("bad_request", "name is required")
        count = self.store.revoke_admin(name)
        if not count:
            raise RefusedError("not_found", f"no active admin token named {name!r}")
        self._audit(actor, "admin.revoke", name, f"{count} admin token(s) revoked", client)
        return {"name": name, "revoked": count}

    def admins(self) -> list[dict[str, Any]]:
        return [asdict(a) for a in self.store.list_admins()]
