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
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import KeyFormatError
from ..format.algorithms import Algorithm, algorithm
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
    """One audit row. ``action`` says what was asked (``release``, ``publisher-key``, ``register``, ``replace``,
    ``token.create``, ``token.revoke``, ``grant.create``, ``grant.revoke``, ``admin.create``, ``admin.rotate``,
    ``admin.revoke``, ``request``); ``actor`` who asked (a principal, an admin's name, or None before
    authentication); ``target`` what it concerned (a principal, a grant id, an admin's name). ``count`` is above 1
    only on an aggregated row: failures before authentication are counted per source, reason and minute."""

    time: float
    principal: str | None
    kid: str | None
    model_id: str | None
    header_sha256: str | None
    decision: str  # "allow" or "deny"
    reason: str
    client: str | None
    action: str = "release"
    actor: str | None = None
    target: str | None = None
    count: int = 1

    def matches(self, principal: str | None, kid: str | None, since: float | None) -> bool:
        """The audit filters: a principal matches as the client, the actor or the target of a record."""
        return (
            (principal is None or principal in (self.principal, self.actor, self.target))
            and (kid is None or self.kid == kid)
            and (since is None or self.time >= since)
        )


@dataclass(frozen=True)
class ModelInfo:
    kid: str
    model_id: str
    created: float


@dataclass(frozen=True)
class TokenInfo:
    """A client token as listed: its id (a prefix of its hash, enough to revoke it), never the token."""

    id: str
    principal: str
    created: float
    revoked: float | None


@dataclass(frozen=True)
class AdminInfo:
    id: str
    name: str
    created: float
    revoked: float | None


TOKEN_ID_SIZE = 16  # hex digits of the token hash that name a token (64 bits: unique in practice, and not a secret)


def token_id(token: str) -> str:
    return token_hash(token)[:TOKEN_ID_SIZE]


class ModelStore(Protocol):
    def put_model(self, model: Model) -> None: ...
    def get_model(self, kid: str) -> Model | None: ...
    def list_models(self) -> list[ModelInfo]: ...


class TokenStore(Protocol):
    def add_token(self, principal: str) -> str: ...
    def principal_for(self, token: str) -> str | None: ...
    def revoke_tokens(self, principal: str) -> int: ...
    def revoke_token(self, token_id: str) -> str | None:
        """Revoke one token by its id; the principal it belonged to, or None when no active token has it."""
        ...

    def list_tokens(self) -> list[TokenInfo]: ...


class GrantStore(Protocol):
    def add_grant(self, principal: str, kid: str, not_after: float | None, max_uses: int | None) -> Grant: ...
    def grants_for(self, principal: str, kid: str) -> list[Grant]: ...
    def get_grant(self, grant_id: str) -> Grant | None: ...
    def list_grants(self) -> list[Grant]: ...
    def revoke_grant(self, grant_id: str) -> bool: ...
    def consume_grant(self, grant_id: str, now: float) -> bool: ...


class AdminStore(Protocol):
    def set_admin(self, token: str, name: str = "admin") -> None: ...
    def check_admin(self, token: str) -> str | None:
        """The name of the active admin holding this token, or None."""
        ...

    def revoke_admin(self, name: str) -> int:
        """Revoke every active token of the named admin; how many."""
        ...

    def list_admins(self) -> list[AdminInfo]: ...


class AuditStore(Protocol):
    def audit(self, record: AuditRecord, aggregate: str | None = None) -> None:
        """Append a record; with ``aggregate``, add one to the count of the row with that key instead (made by
        the first record with it). Nothing else ever changes or removes a record."""
        ...

    def audit_log(
        self, limit: int, principal: str | None = None, kid: str | None = None, since: float | None = None
    ) -> list[AuditRecord]: ...


class Store(ModelStore, TokenStore, GrantStore, AdminStore, AuditStore, Protocol):
    """Everything the service keeps. ``ping`` raises when the back end cannot answer (``/readyz``)."""

    def ping(self) -> None: ...


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
CREATE TABLE IF NOT EXISTS admin_tokens (hash TEXT PRIMARY KEY, name TEXT NOT NULL, created REAL NOT NULL,
    revoked REAL);
CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, principal TEXT,
    kid TEXT, model_id TEXT, header_sha256 TEXT, decision TEXT NOT NULL, reason TEXT NOT NULL, client TEXT);
CREATE INDEX IF NOT EXISTS grants_by_principal ON grants (principal, kid);
"""
# Columns added after the first release: an existing database gains them on start.
_AUDIT_COLUMNS = {
    "action": "TEXT NOT NULL DEFAULT 'release'",
    "actor": "TEXT",
    "target": "TEXT",
    "count": "INTEGER NOT NULL DEFAULT 1",
    "aggregate": "TEXT",
}
_AUDIT_FIELDS = "time, principal, kid, model_id, header_sha256, decision, reason, client, action, actor, target, count"
_GRANT_FIELDS = "id, principal, kid, not_after, max_uses, uses, revoked"


def private_file(path: str | os.PathLike[str]) -> None:
    """Create ``path`` 0600 if it does not exist, and make it 0600 if it does (a database made by an older
    version, or under a loose umask, must not stay readable by other users)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


class SqliteStore:
    """One SQLite file (WAL mode, 0600), one connection per thread; grant use counting is one atomic UPDATE."""

    def __init__(self, path: str | os.PathLike[str], root_key: RootKey) -> None:
        self.path = os.fspath(path)
        self.root_key = root_key
        self._local = threading.local()
        private_file(self.path)
        for suffix in ("-wal", "-shm"):  # SQLite gives these the database's mode when it makes them
            if os.path.exists(self.path + suffix):
                os.chmod(self.path + suffix, 0o600)
        db = self._db()
        db.executescript(_SCHEMA)
        present = {row[1] for row in db.execute("PRAGMA table_info(audit)")}
        for column, kind in _AUDIT_COLUMNS.items():
            if column not in present:
                db.execute(f"ALTER TABLE audit ADD COLUMN {column} {kind}")
        db.execute("CREATE UNIQUE INDEX IF NOT EXISTS audit_aggregate ON audit (aggregate)")
        # admin tokens of the first release (no name): they become the bootstrap admin's
        db.execute("INSERT OR IGNORE INTO admin_tokens SELECT hash, 'admin', 0, NULL FROM admins")
        db.execute("DELETE FROM admins")

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    def ping(self) -> None:
        self._db().execute("SELECT 1 FROM models LIMIT 1").fetchall()

    # -- admins

    def set_admin(self, token: str, name: str = "admin") -> None:
        self._db().execute(
            "INSERT OR IGNORE INTO admin_tokens VALUES (?, ?, ?, NULL)", (token_hash(token), name, time.time())
        )

    def check_admin(self, token: str) -> str | None:
        row = (
            self._db()
            .execute("SELECT name FROM admin_tokens WHERE hash = ? AND revoked IS NULL", (token_hash(token),))
            .fetchone()
        )
        return row[0] if row else None

    def revoke_admin(self, name: str) -> int:
        cursor = self._db().execute(
            "UPDATE admin_tokens SET revoked = ? WHERE name = ? AND revoked IS NULL", (time.time(), name)
        )
        return cursor.rowcount

    def list_admins(self) -> list[AdminInfo]:
        rows = self._db().execute("SELECT hash, name, created, revoked FROM admin_tokens ORDER BY created").fetchall()
        return [AdminInfo(h[:TOKEN_ID_SIZE], name, created, revoked) for h, name, created, revoked in rows]

    # -- models

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
        publisher_key = parse_jwk(_loads(publisher))
        if not isinstance(publisher_key, VerifyKey):  # register_model stores VerifyKey.to_jwk(); else: damage
            raise KeyFormatError(f"the key store's publisher key for {kid!r} is not a public Ed25519 key")
        return Model(kid, model_id, master, publisher_key)

    def list_models(self) -> list[ModelInfo]:
        rows = self._db().execute("SELECT kid, model_id, created FROM models ORDER BY kid").fetchall()
        return [ModelInfo(*row) for row in rows]

    # -- client tokens

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

    def revoke_token(self, token_id: str) -> str | None:
        if len(token_id) != TOKEN_ID_SIZE:
            return None
        db = self._db()
        row = db.execute(
            "SELECT hash, principal FROM tokens WHERE substr(hash, 1, ?) = ? AND revoked IS NULL",
            (TOKEN_ID_SIZE, token_id),
        ).fetchone()
        if row is None:
            return None
        db.execute("UPDATE tokens SET revoked = ? WHERE hash = ? AND revoked IS NULL", (time.time(), row[0]))
        principal: str = row[1]
        return principal

    def list_tokens(self) -> list[TokenInfo]:
        rows = self._db().execute("SELECT hash, principal, created, revoked FROM tokens ORDER BY created").fetchall()
        return [TokenInfo(h[:TOKEN_ID_SIZE], principal, created, revoked) for h, principal, created, revoked in rows]

    # -- grants

    def add_grant(self, principal: str, kid: str, not_after: float | None, max_uses: int | None) -> Grant:
        grant = Grant(secrets.token_hex(8), principal, kid, not_after, max_uses, 0, False)
        self._db().execute(
            "INSERT INTO grants VALUES (?, ?, ?, ?, ?, 0, NULL)", (grant.id, principal, kid, not_after, max_uses)
        )
        return grant

    @staticmethod
    def _grant(row: tuple[Any, ...]) -> Grant:
        return Grant(row[0], row[1], row[2], row[3], row[4], row[5], row[6] is not None)

    def grants_for(self, principal: str, kid: str) -> list[Grant]:
        rows = (
            self._db()
            .execute(
                f"SELECT {_GRANT_FIELDS} FROM grants WHERE principal = ? AND kid = ? ORDER BY rowid", (principal, kid)
            )
            .fetchall()
        )
        return [self._grant(r) for r in rows]

    def get_grant(self, grant_id: str) -> Grant | None:
        row = self._db().execute(f"SELECT {_GRANT_FIELDS} FROM grants WHERE id = ?", (grant_id,)).fetchone()
        return self._grant(row) if row else None

    def list_grants(self) -> list[Grant]:
        return [self._grant(r) for r in self._db().execute(f"SELECT {_GRANT_FIELDS} FROM grants ORDER BY rowid")]

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

    # -- audit

    def audit(self, record: AuditRecord, aggregate: str | None = None) -> None:
        values = astuple(record)
        self._db().execute(
            f"INSERT INTO audit ({_AUDIT_FIELDS}, aggregate) VALUES ({', '.join('?' * (len(values) + 1))})"
            " ON CONFLICT (aggregate) DO UPDATE SET count = count + 1, time = excluded.time",
            (*values, aggregate),
        )

    def audit_log(
        self, limit: int, principal: str | None = None, kid: str | None = None, since: float | None = None
    ) -> list[AuditRecord]:
        where: list[str] = ["1"]
        params: list[str | float] = []
        if principal is not None:
            where.append("(principal = ? OR actor = ? OR target = ?)")
            params += [principal] * 3
        if kid is not None:
            where.append("kid = ?")
            params.append(kid)
        if since is not None:
            where.append("time >= ?")
            params.append(since)
        rows = (
            self._db()
            .execute(
                f"SELECT {_AUDIT_FIELDS} FROM audit WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?",
                (*params, max(limit, 0)),
            )
            .fetchall()
        )
        return [AuditRecord(*row) for row in reversed(rows)]


def _dumps(value: object) -> str:
    return json.dumps(value, sort_keys=True)


def _loads(text: str) -> object:
    return json.loads(text)
