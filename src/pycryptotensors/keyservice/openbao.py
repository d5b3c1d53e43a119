"""The key service's state in OpenBao / Vault (KV version 2), so that several stateless replicas behind a load
balancer share one source of truth. Nothing is cached in the process: every call reads or writes OpenBao.

Layout under ``{mount}/{prefix}`` (names chosen by callers, kids and principals, become one path segment each,
see :func:`segment`)::

    models/{kid}                      model_id, alg, master_key (base64), publisher_key (public JWK)
    tokens/{sha256(token)}            principal, created, revoked (the token itself is never stored)
    principals/{principal}            hashes: every token hash ever issued to the principal (for revoke_tokens)
    grants/{id}                       principal, kid, not_after, max_uses, uses, revoked
    grants-by/{principal}/{kid}       ids: the grants of that (principal, kid), oldest first
    admins/{sha256(token)}            name, created, revoked
    admin-names/{name}                hashes: every admin token hash issued under that name (for revoke_admin)
    audit/{time_ns}-{random}          one AuditRecord each, written once (check-and-set 0), never changed
    audit-agg/{sha256(key)}           name: the audit record counting failures of one (source, reason, minute)

Master keys are stored as base64 in KV v2, not sealed by us: OpenBao encrypts all storage under its barrier key
(unsealed only in the server's memory) and its ACL policies decide which tokens may read ``models/``. Give the
service a token whose policy allows only create/read/update on ``{mount}/data/{prefix}/*`` and list on
``{mount}/metadata/{prefix}/*`` (no delete: audit records stay append-only; pruning is an operator's job).
(The transit engine would keep the key out of the service's memory only if it also unwrapped the data keys,
which would need a key-wrapping format of OpenBao's, not the file's; so transit is not used.)

Every read-modify-write (index appends, revocations, counting a grant use) is optimistic: read the version,
change, write with ``cas=version``; on a conflict re-read and retry, a bounded number of times. That makes
``consume_grant`` atomic across replicas: two replicas can never both write uses=n+1 over version v.
"""

from __future__ import annotations

import base64
import hashlib
import random
import re
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

import hvac
import hvac.exceptions

from ..format.algorithms import algorithm
from ..keys.jwk import MasterKey, VerifyKey, parse_jwk
from .store import (
    TOKEN_ID_SIZE,
    AdminInfo,
    AuditRecord,
    Grant,
    Model,
    ModelInfo,
    TokenInfo,
    new_token,
    token_hash,
)

CAS_ATTEMPTS = 64  # a writer loses a round only when another one wins it, so this bounds waiting, not progress
AUDIT_READERS = 8  # audit_log reads one secret per record: a few in parallel hide the round trips

_PLAIN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}\Z")
Record = dict[str, Any]


class OpenBaoError(OSError):
    """OpenBao could not be reached, refused, or held something malformed. Messages name the operation and the
    path, never the token."""


class _ConflictError(Exception):
    """A check-and-set write lost against a concurrent writer (internal: always retried)."""


def segment(name: str) -> str:
    """One path segment for a caller-chosen name. Plain names stay readable for operators; anything else
    (``/``, ``..``, spaces, non-ASCII, very long) becomes ``~`` + base64url. Plain names never contain ``~``,
    so two names never share a path, and no name can reach outside its folder."""
    if _PLAIN.match(name):
        return name
    return "~" + base64.urlsafe_b64encode(name.encode()).rstrip(b"=").decode("ascii")


class OpenBaoStore:
    """A :class:`~.store.Store` on OpenBao KV v2. One hvac client per thread (requests sessions are not meant to
    be shared across threads; the app runs handlers in a thread pool)."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        mount: str = "secret",
        prefix: str = "pycryptotensors",
        timeout: float = 10.0,
        verify: bool | str = True,
    ) -> None:
        self.url, self.mount, self.prefix = url.rstrip("/"), mount.strip("/"), prefix.strip("/")
        self.timeout, self.verify = timeout, verify
        self._token = token
        self._local = threading.local()
        self._audit_lock = threading.Lock()
        self._last_ns = 0
        # Fail at start, not at the first request, when the address, token or mount is wrong.
        self._list(self.prefix)

    def __repr__(self) -> str:
        return f"OpenBaoStore(url={self.url!r}, mount={self.mount!r}, prefix={self.prefix!r})"

    # -- KV v2 primitives -------------------------------------------------------------------------------------

    def _kv(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            client = hvac.Client(
                url=self.url,
                token=self._token,
                # hvac hands timeout to requests, which takes float seconds; types-hvac annotates it int
                timeout=self.timeout,  # type: ignore[arg-type]
                verify=self.verify,
            )
            self._local.client = client
        return client.secrets.kv.v2

    def _call(self, what: str, action: Callable[[Any], Any]) -> Any:
        """One hvac call: a missing secret is None, a lost check-and-set _ConflictError, the rest OpenBaoError."""
        try:
            return action(self._kv())
        except hvac.exceptions.InvalidPath as error:
            if not error.errors:  # a plain 404: nothing stored there (with errors: no such mount or route)
                return None
            problem = f"not found ({error})"
        except hvac.exceptions.InvalidRequest as error:
            if "did not match the current version" in str(error):
                raise _ConflictError from None
            problem = f"invalid request ({error})"
        except hvac.exceptions.Forbidden as error:
            problem = f"permission denied; check the token and its policy ({error})"
        except hvac.exceptions.VaultError as error:
            problem = f"{type(error).__name__} ({error})"
        except OSError as error:  # requests' errors (connection refused, timeouts, TLS) are OSErrors
            problem = f"unreachable ({type(error).__name__}: {error})"
        message = f"OpenBao {self.url}, mount {self.mount!r}: {what} failed: {problem}"
        raise OpenBaoError(message.replace(self._token, "<token>") if self._token else message) from None

    def _path(self, *parts: str) -> str:
        return "/".join((self.prefix, *parts))

    def _read(self, path: str) -> tuple[Record | None, int]:
        """The secret at ``path`` and its version (0: there is none, which is what cas=0 expects). A version an
        operator deleted (``bao kv delete``) reads as None with its real version, so a write can follow it."""
        answer = self._call(
            f"read {path}",
            lambda kv: kv.read_secret_version(path=path, mount_point=self.mount, raise_on_deleted_version=False),
        )
        if answer is None:
            return None, 0
        return answer["data"]["data"], int(answer["data"]["metadata"]["version"])

    def _write(self, path: str, data: Record, cas: int | None = None) -> None:
        self._call(
            f"write {path}",
            lambda kv: kv.create_or_update_secret(path=path, secret=data, cas=cas, mount_point=self.mount),
        )

    def _list(self, path: str) -> list[str]:
        answer = self._call(f"list {path}", lambda kv: kv.list_secrets(path=path, mount_point=self.mount))
        return [] if answer is None else list(answer["data"]["keys"])

    def _update(self, path: str, change: Callable[[Record | None], Record | None]) -> bool:
        """Read, ``change`` (None: leave it as it is), write with check-and-set; retry when someone else wrote in
        between. Returns whether this call wrote."""
        for attempt in range(CAS_ATTEMPTS):
            data, version = self._read(path)
            new = change(data)
            if new is None:
                return False
            try:
                self._write(path, new, cas=version)
                return True
            except _ConflictError:
                time.sleep(random.uniform(0, 0.001 * min(attempt + 1, 20)))  # jitter: spread the next round
        raise OpenBaoError(f"OpenBao {self.url}: {path} changed under us {CAS_ATTEMPTS} times in a row; giving up")

    def _append(self, path: str, field: str, item: str) -> None:
        self._update(path, lambda data: {field: [*(data or {}).get(field, []), item]})

    # -- admins -----------------------------------------------------------------------------------------------

    def ping(self) -> None:
        self._list(self.prefix)

    def set_admin(self, token: str, name: str = "admin") -> None:
        digest = token_hash(token)
        self._append(self._path("admin-names", segment(name)), "hashes", digest)
        record = {"name": name, "created": time.time(), "revoked": None}
        self._update(self._path("admins", digest), lambda data: None if data else record)

    def check_admin(self, token: str) -> str | None:
        data = self._read(self._path("admins", token_hash(token)))[0]
        if data is None or data.get("revoked") is not None:
            return None
        return str(data.get("name", "admin"))  # records of the first release carry no name

    def revoke_admin(self, name: str) -> int:
        index, _ = self._read(self._path("admin-names", segment(name)))
        now = time.time()

        def revoke(data: Record | None) -> Record | None:
            return None if data is None or data.get("revoked") is not None else {**data, "revoked": now}

        return sum(self._update(self._path("admins", digest), revoke) for digest in (index or {}).get("hashes", []))

    def list_admins(self) -> list[AdminInfo]:
        found = self._read_all("admins")
        return sorted(
            (
                AdminInfo(
                    digest[:TOKEN_ID_SIZE], str(d.get("name", "admin")), float(d.get("created", 0)), d.get("revoked")
                )
                for digest, d in found
            ),
            key=lambda a: a.created,
        )

    def _read_all(self, folder: str) -> list[tuple[str, Record]]:
        """Every record directly under ``folder`` (names without a trailing /), read a few at a time."""
        names = [n for n in self._list(self._path(folder)) if not n.endswith("/")]
        with ThreadPoolExecutor(max_workers=AUDIT_READERS) as pool:
            found = list(pool.map(lambda name: self._read(self._path(folder, name))[0], names))
        return [(name, data) for name, data in zip(names, found, strict=True) if data is not None]

    # -- models -----------------------------------------------------------------------------------------------

    def put_model(self, model: Model) -> None:
        record = {
            "kid": model.kid,
            "model_id": model.model_id,
            "alg": model.master_key.alg.name,
            "master_key": base64.b64encode(model.master_key.secret).decode("ascii"),
            "publisher_key": model.publisher.to_jwk(),
            "created": time.time(),
        }
        self._update(self._path("models", segment(model.kid)), lambda _: record)  # replaces, as SqliteStore does

    def get_model(self, kid: str) -> Model | None:
        path = self._path("models", segment(kid))
        data, _ = self._read(path)
        if data is None:
            return None
        try:
            master = MasterKey(base64.b64decode(data["master_key"], validate=True), algorithm(data["alg"]), kid)
            publisher = parse_jwk(data["publisher_key"])
            if not isinstance(publisher, VerifyKey):
                raise ValueError("publisher_key is not a public key")
            return Model(kid, str(data["model_id"]), master, publisher)
        except (KeyError, TypeError, ValueError) as error:  # KeyFormatError and UnsupportedError are ValueErrors
            raise OpenBaoError(f"OpenBao {self.url}: {path} is not a valid model record ({error})") from None

    def list_models(self) -> list[ModelInfo]:
        found = self._read_all("models")
        return sorted(
            (ModelInfo(str(d["kid"]), str(d["model_id"]), float(d.get("created", 0))) for _, d in found),
            key=lambda m: m.kid,
        )

    # -- client tokens ----------------------------------------------------------------------------------------

    def add_token(self, principal: str) -> str:
        token = new_token()
        digest = token_hash(token)
        # Index first: a crash in between leaves a dangling index entry (harmless), never an unrevocable token.
        self._append(self._path("principals", segment(principal)), "hashes", digest)
        record = {"principal": principal, "created": time.time(), "revoked": None}
        self._write(self._path("tokens", digest), record, cas=0)
        return token

    def principal_for(self, token: str) -> str | None:
        data, _ = self._read(self._path("tokens", token_hash(token)))
        if data is None or data.get("revoked") is not None:
            return None
        return str(data["principal"])

    def revoke_tokens(self, principal: str) -> int:
        index, _ = self._read(self._path("principals", segment(principal)))
        now = time.time()

        def revoke(data: Record | None) -> Record | None:
            return None if data is None or data.get("revoked") is not None else {**data, "revoked": now}

        return sum(self._update(self._path("tokens", digest), revoke) for digest in (index or {}).get("hashes", []))

    def revoke_token(self, token_id: str) -> str | None:
        if len(token_id) != TOKEN_ID_SIZE or not all(c in "0123456789abcdef" for c in token_id):
            return None
        digest = next((n for n in self._list(self._path("tokens")) if n.startswith(token_id)), None)
        if digest is None:
            return None
        now = time.time()
        revoked: list[str] = []

        def revoke(data: Record | None) -> Record | None:
            if data is None or data.get("revoked") is not None:
                return None
            revoked.append(str(data["principal"]))
            return {**data, "revoked": now}

        self._update(self._path("tokens", digest), revoke)
        return revoked[-1] if revoked else None

    def list_tokens(self) -> list[TokenInfo]:
        found = self._read_all("tokens")
        return sorted(
            (
                TokenInfo(digest[:TOKEN_ID_SIZE], str(d["principal"]), float(d["created"]), d.get("revoked"))
                for digest, d in found
            ),
            key=lambda t: t.created,
        )

    # -- grants -----------------------------------------------------------------------------------------------

    @staticmethod
    def _grant(grant_id: str, data: Record) -> Grant:
        not_after = data.get("not_after")
        return Grant(
            grant_id,
            str(data["principal"]),
            str(data["kid"]),
            None if not_after is None else float(not_after),
            data.get("max_uses"),
            int(data["uses"]),
            data.get("revoked") is not None,
        )

    def add_grant(self, principal: str, kid: str, not_after: float | None, max_uses: int | None) -> Grant:
        grant = Grant(secrets.token_hex(8), principal, kid, not_after, max_uses, 0, False)
        record = {"principal": principal, "kid": kid, "not_after": not_after, "max_uses": max_uses, "uses": 0}
        self._append(self._path("grants-by", segment(principal), segment(kid)), "ids", grant.id)
        self._write(self._path("grants", grant.id), {**record, "revoked": None}, cas=0)
        return grant

    def grants_for(self, principal: str, kid: str) -> list[Grant]:
        index, _ = self._read(self._path("grants-by", segment(principal), segment(kid)))
        grants = []
        for grant_id in (index or {}).get("ids", []):
            data, _ = self._read(self._path("grants", grant_id))
            if data is not None:
                grants.append(self._grant(grant_id, data))
        return grants

    def get_grant(self, grant_id: str) -> Grant | None:
        data, _ = self._read(self._path("grants", segment(grant_id)))
        return None if data is None else self._grant(grant_id, data)

    def list_grants(self) -> list[Grant]:
        return [self._grant(grant_id, data) for grant_id, data in self._read_all("grants")]

    def revoke_grant(self, grant_id: str) -> bool:
        now = time.time()
        return self._update(
            self._path("grants", segment(grant_id)),
            lambda data: None if data is None or data.get("revoked") is not None else {**data, "revoked": now},
        )

    def consume_grant(self, grant_id: str, now: float) -> bool:
        """Count one use if the grant is usable at ``now``: the check and the increment are one check-and-set
        write, so a grant with max_uses=n releases keys exactly n times however many replicas race for it."""

        def use(data: Record | None) -> Record | None:
            if data is None or self._grant(grant_id, data).refusal(now) is not None:
                return None
            return {**data, "uses": int(data["uses"]) + 1}

        return self._update(self._path("grants", segment(grant_id)), use)

    # -- audit ------------------------------------------------------------------------------------------------

    def audit(self, record: AuditRecord, aggregate: str | None = None) -> None:
        """Append one record; the name sorts by write time (strictly increasing within this process) and the
        random tail keeps names from two replicas apart. cas=0: an existing record is never overwritten. An
        aggregated record is found through ``audit-agg/{hash of its key}`` (written once, check-and-set 0) and
        counted up with a check-and-set update, so that replicas share one row per key."""
        if aggregate is None:
            self._write(self._path("audit", self._audit_name()), asdict(record), cas=0)
            return

        def count(data: Record | None) -> Record:
            if data is None:
                return asdict(record)
            return {**data, "count": int(data.get("count", 1)) + 1, "time": record.time}

        index_path = self._path("audit-agg", hashlib.sha256(aggregate.encode()).hexdigest()[:32])
        for _ in range(CAS_ATTEMPTS):
            index, version = self._read(index_path)
            if index is not None:
                name = str(index["name"])
            else:
                name = self._audit_name()
                try:
                    self._write(index_path, {"name": name}, cas=version)
                except _ConflictError:  # another replica made the row first: count on it
                    continue
            self._update(self._path("audit", name), count)
            return
        raise OpenBaoError(f"OpenBao {self.url}: {index_path} changed under us {CAS_ATTEMPTS} times in a row")

    def _audit_name(self) -> str:
        with self._audit_lock:
            self._last_ns = max(time.time_ns(), self._last_ns + 1)
            stamp = self._last_ns
        return f"{stamp:020d}-{secrets.token_hex(6)}"

    def audit_log(
        self, limit: int, principal: str | None = None, kid: str | None = None, since: float | None = None
    ) -> list[AuditRecord]:
        """The newest ``limit`` matching records, oldest first (across replicas, ordered by their clocks)."""
        if limit <= 0:
            return []
        names = sorted(self._list(self._path("audit")), reverse=True)
        if since is not None:  # names start with the time of their first write; aggregates count on for a minute
            floor = int((since - 60) * 10**9)
            names = [n for n in names if int(n.split("-", 1)[0]) >= floor]
        picked: list[AuditRecord] = []
        batch = limit if principal is None and kid is None else max(limit, 256)
        with ThreadPoolExecutor(max_workers=AUDIT_READERS) as pool:
            for start in range(0, len(names), batch):
                chunk = names[start : start + batch]
                found = pool.map(lambda name: self._read(self._path("audit", name))[0], chunk)
                records = [AuditRecord(**data) for data in found if data is not None]
                picked += [r for r in records if r.matches(principal, kid, since)]
                if len(picked) >= limit:
                    break
        return list(reversed(picked[:limit]))
