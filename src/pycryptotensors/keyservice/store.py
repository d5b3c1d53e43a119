"""The service's state: registered models (master keys encrypted at rest), client tokens (only their hashes),
grants, and the audit log. ``SqliteStore`` is the embedded default (one file, no setup); ``OpenBaoStore``
(:mod:`.openbao`) keeps everything in OpenBao / Vault so that several stateless replicas can share it.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..cipher.aead import Algorithm, algorithm
from ..keys.jwk import MasterKey, VerifyKey, parse_jwk

TOKEN_PREFIX = "ctk_"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """Tokens carry 256 random bits, so a plain SHA-256 is a safe verifier (no password stretching needed)."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Model:
    kid: str
    model_id: str
    master_key: MasterKey
    publisher: VerifyKey


@dataclass(frozen=True)
class Grant:
    id: str
    principal: str
    kid: str
    not_after: float | None  # unix time; None: no expiry
    max_uses: int | None  # None: unlimited
    uses: int
    revoked: bool

    def refusal(self, now: float) -> str | None:
        """Why this grant cannot be used now, or None when it can."""
        if self.revoked:
            return "grant_revoked"
        if self.not_after is not None and now >= self.not_after:
            return "grant_expired"
        if self.max_uses is not None and self.uses >= self.max_uses:
            return "grant_exhausted"
        return None


@dataclass(frozen=True)
class AuditRecord:
    time: float
    principal: str | None
    kid: str | None
    model_id: str | None
    header_sha256: str | None
    decision: str  # "allow" or "deny"
    reason: str
    client: str | None


class Store(Protocol):
    def put_model(self, model: Model) -> None: ...
    def get_model(self, kid: str) -> Model | None: ...
    def add_token(self, principal: str) -> str: ...
    def principal_for(self, token: str) -> str | None: ...
    def revoke_tokens(self, principal: str) -> int: ...
    def add_grant(self, principal: str, kid: str, not_after: float | None, max_uses: int | None) -> Grant: ...
    def grants_for(self, principal: str, kid: str) -> list[Grant]: ...
    def revoke_grant(self, grant_id: str) -> bool: ...
    def consume_grant(self, grant_id: str, now: float) -> bool: ...
    def set_admin(self, token: str) -> None: ...
    def check_admin(self, token: str) -> bool: ...
    def audit(self, record: AuditRecord) -> None: ...
    def audit_log(self, limit: int) -> list[AuditRecord]: ...


class RootKey:
    """Encrypts master keys at rest (AES-256-GCM, the key id as associated data)."""

    def __init__(self, secret: bytes) -> None:
        self._aead = AESGCM(secret)

    @classmethod
    def load_or_create(cls, path: Path) -> RootKey:
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(AESGCM.generate_key(256))
        secret = path.read_bytes()
        if len(secret) != 32:
            raise ValueError(f"{path}: a root key is 32 bytes")
        return cls(secret)

    def seal(self, kid: str, secret: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, secret, kid.encode())

    def open(self, kid: str, sealed: bytes) -> bytes:
        return self._aead.decrypt(sealed[:12], sealed[12:], kid.encode())


_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (kid TEXT PRIMARY KEY, model_id TEXT NOT NULL, alg TEXT NOT NULL,
    sealed_master BLOB NOT NULL, publisher_jwk TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (hash TEXT PRIMARY KEY, principal TEXT NOT NULL, created REAL NOT NULL,
    revoked REAL);
CREATE TABLE IF NOT EXISTS grants (id TEXT PRIMARY KEY, principal TEXT NOT NULL, kid TEXT NOT NULL,
    not_after REAL, max_uses INTEGER, uses INTEGER NOT NULL DEFAULT 0, revoked REAL);
CREATE TABLE IF NOT EXISTS admins (hash TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, principal TEXT,
    kid TEXT, model_id TEXT, header_sha256 TEXT, decision TEXT NOT NULL, reason TEXT NOT NULL, client TEXT);
CREATE INDEX IF NOT EXISTS grants_by_principal ON grants (principal, kid);
"""


class SqliteStore:
    """One SQLite file (WAL mode), one connection per thread; grant use counting is a single atomic UPDATE."""

    def __init__(self, path: str | os.PathLike[str], root_key: RootKey) -> None:
        self.path = os.fspath(path)
        self.root_key = root_key
        self._local = threading.local()
        with self._db() as db:
            db.executescript(_SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    def set_admin(self, token: str) -> None:
        self._db().execute("INSERT OR IGNORE INTO admins (hash) VALUES (?)", (token_hash(token),))

    def check_admin(self, token: str) -> bool:
        row = self._db().execute("SELECT 1 FROM admins WHERE hash = ?", (token_hash(token),)).fetchone()
        return row is not None

    def put_model(self, model: Model) -> None:
        sealed = self.root_key.seal(model.kid, model.master_key.secret)
        self._db().execute(
            "INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?, ?)",
            (
                model.kid,
                model.model_id,
                model.master_key.alg.name,
                sealed,
                _dumps(model.publisher.to_jwk()),
                time.time(),
            ),
        )

    def get_model(self, kid: str) -> Model | None:
        row = (
            self._db()
            .execute("SELECT model_id, alg, sealed_master, publisher_jwk FROM models WHERE kid = ?", (kid,))
            .fetchone()
        )
        if row is None:
            return None
        model_id, alg, sealed, publisher = row
        chosen: Algorithm = algorithm(alg)
        master = MasterKey(self.root_key.open(kid, sealed), chosen, kid)
        return Model(kid, model_id, master, parse_jwk(_loads(publisher)))  # type: ignore[arg-type]

    def add_token(self, principal: str) -> str:
        token = new_token()
        self._db().execute("INSERT INTO tokens VALUES (?, ?, ?, NULL)", (token_hash(token), principal, time.time()))
        return token

    def principal_for(self, token: str) -> str | None:
        row = (
            self._db()
            .execute("SELECT principal FROM tokens WHERE hash = ? AND revoked IS NULL", (token_hash(token),))
            .fetchone()
        )
        return row[0] if row else None

    def revoke_tokens(self, principal: str) -> int:
        cursor = self._db().execute(
            "UPDATE tokens SET revoked = ? WHERE principal = ? AND revoked IS NULL", (time.time(), principal)
        )
        return cursor.rowcount

    def add_grant(self, principal: str, kid: str, not_after: float | None, max_uses: int | None) -> Grant:
        grant = Grant(secrets.token_hex(8), principal, kid, not_after, max_uses, 0, False)
        self._db().execute(
            "INSERT INTO grants VALUES (?, ?, ?, ?, ?, 0, NULL)", (grant.id, principal, kid, not_after, max_uses)
        )
        return grant

    def grants_for(self, principal: str, kid: str) -> list[Grant]:
        rows = (
            self._db()
            .execute(
                "SELECT id, principal, kid, not_after, max_uses, uses, revoked FROM grants"
                " WHERE principal = ? AND kid = ?",
                (principal, kid),
            )
            .fetchall()
        )
        return [Grant(r[0], r[1], r[2], r[3], r[4], r[5], r[6] is not None) for r in rows]

    def revoke_grant(self, grant_id: str) -> bool:
        cursor = self._db().execute(
            "UPDATE grants SET revoked = ? WHERE id = ? AND revoked IS NULL", (time.time(), grant_id)
        )
        return cursor.rowcount == 1

    def consume_grant(self, grant_id: str, now: float) -> bool:
        cursor = self._db().execute(
            "UPDATE grants SET uses = uses + 1 WHERE id = ? AND revoked IS NULL"
            " AND (not_after IS NULL OR not_after > ?) AND (max_uses IS NULL OR uses < max_uses)",
            (grant_id, now),
        )
        return cursor.rowcount == 1

    def audit(self, record: AuditRecord) -> None:
        self._db().execute(
            "INSERT INTO audit (time, principal, kid, model_id, header_sha256, decision, reason, client)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.time,
                record.principal,
                record.kid,
                record.model_id,
                record.header_sha256,
                record.decision,
                record.reason,
                record.client,
            ),
        )

    def audit_log(self, limit: int) -> list[AuditRecord]:
        rows = (
            self._db()
            .execute(
                "SELECT time, principal, kid, model_id, header_sha256, decision, reason, client FROM audit"
                " ORDER BY id DESC LIMIT ?",
                (limit,),
            )
            .fetchall()
        )
        return [AuditRecord(*row) for row in reversed(rows)]


def _dumps(value: object) -> str:
    return json.dumps(value, sort_keys=True)


def _loads(text: str) -> object:
    return json.loads(text)
