"""The HTTP face of the key service (Starlette, served by uvicorn): JSON in, JSON out, and the only place where
reason codes become HTTP statuses.

    POST   /v1/release            client token   a file's data keys, sealed (protocol.py)
    POST   /v1/publisher-key      client token   the public key that verifies a header (no release)
    PUT    /v1/models/{kid}       admin token    register a model: publisher key, master key (or generate)
    GET    /v1/models             admin token    registered key ids (no key material)
    POST   /v1/tokens             admin token    create a client token for a principal (shown once)
    GET    /v1/tokens             admin token    token ids, principals, created, revoked (never a token)
    POST   /v1/tokens/revoke      admin token    {"principal": any name} or {"token_id": id}
    DELETE /v1/tokens/{principal} admin token    the same for a principal (names of the grammar only)
    POST   /v1/grants             admin token    grant a principal a key id, until a time, n times
    GET    /v1/grants             admin token    ?principal=&kid= filters
    GET    /v1/grants/{id}        admin token    one grant
    DELETE /v1/grants/{id}        admin token    revoke a grant at once
    POST   /v1/admins             admin token    another admin, by name (token shown once)
    GET    /v1/admins             admin token    admin names and token ids
    POST   /v1/admins/rotate      admin token    a new token for the caller; its older ones stop working
    POST   /v1/admins/revoke      admin token    {"name": ...}: every token of that admin
    GET    /v1/audit              admin token    ?limit=&principal=&kid=&since= (read only: no route changes it)
    GET    /v1/health, /healthz                  liveness;  GET /readyz: the back end answers

Order for every request: the failure limit of its source (and token) -> the bearer token (before a byte of the
body is read) -> the body, at most ``max_body`` bytes, within ``body_timeout`` seconds, JSON nested at most
``max_depth`` deep -> the decision (service.py, management.py), in a worker thread. Nothing here logs request
bodies, tokens or keys.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .limits import FailureLimiter
from .management import Management
from .refusal import RefusedError
from .service import ReleaseService

STATUS = {
    "unauthorized": 401,
    "bad_request": 400,
    "not_found": 404,
    "timeout": 408,
    "conflict": 409,
    "too_large": 413,
    "rate_limited": 429,
    "server_error": 500,
}  # every other reason (a release or policy refusal) is 403


@dataclass(frozen=True)
class Limits:
    max_body: int = 8 * 1024 * 1024  # bytes; a release carries the header, base64: room for ~50k tensors
    max_depth: int = 32  # JSON nesting
    body_timeout: float = 10.0  # seconds for the whole body once the headers are in
    failures_per_minute: float = 60.0  # per source address and per token; 0: no limit


def _bearer(request: Request) -> str | None:
    value = request.headers.get("authorization", "")
    return value[7:].strip() or None if value.lower().startswith("bearer ") else None


def _answer(refusal: RefusedError, retry_after: int = 0) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if refusal.reason == "rate_limited" and retry_after else None
    return JSONResponse(
        {"error": refusal.reason, "message": refusal.message},
        status_code=STATUS.get(refusal.reason, 403),
        headers=headers,
    )


def _too_deep(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


MAX_VALUES = 10_000  # JSON values in one body; a request of the protocol has a few dozen (keys are base64 strings)


def _parse(data: bytes, limits: Limits) -> Any:
    """JSON with at most about ``MAX_VALUES`` values, counted on the bytes before parsing (objects, arrays and
    commas: an over-count only when strings hold them), nested at most ``max_depth`` deep. Without the count, 8 MiB
    of ``["ab","ab",...`` is 1.7 million strings: 220 MiB and over a second of CPU for one request."""
    if data.count(b"[") + data.count(b"{") + data.count(b",") > MAX_VALUES:
        raise RefusedError("bad_request", f"the body's JSON has more than {MAX_VALUES} values")
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        raise RefusedError("bad_request", "the body is not valid JSON (or is nested too deep)") from None
    if _too_deep(value, limits.max_depth):
        raise RefusedError("bad_request", f"the body's JSON is nested deeper than {limits.max_depth} levels")
    return value


async def read_json(request: Request, limits: Limits, parsing: asyncio.Semaphore | None = None) -> Any:
    """The body as JSON (None when empty), or a refusal: too large (413), too slow (408), not JSON or too deep
    (400). The size is checked against Content-Length first and counted as it streams in. With ``parsing``, the
    JSON is parsed in a worker thread, as many at once as the semaphore allows: a large body does not stall the
    event loop (every other connection's timeouts), and parsed bodies do not pile up in memory."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limits.max_body):
        raise RefusedError("too_large", f"the body exceeds {limits.max_body} bytes")
    chunks: list[bytes] = []

    async def pull() -> None:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_body:
                raise RefusedError("too_large", f"the body exceeds {limits.max_body} bytes")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(pull(), limits.body_timeout)
    except TimeoutError:
        raise RefusedError("timeout", f"the body did not arrive within {limits.body_timeout:g} s") from None
    data = b"".join(chunks)
    del chunks[:]
    if not data:
        return None
    if parsing is None:
        return _parse(data, limits)
    async with parsing:
        return await run_in_threadpool(_parse, data, limits)


def build_app(service: ReleaseService, limits: Limits | None = None) -> Starlette:
    limits = limits or Limits()
    store = service.store
    manage = Management(store, service.clock)
    limiter = FailureLimiter(limits.failures_per_minute)
    parsing = asyncio.Semaphore(2)  # JSON bodies parsed at once (in worker threads)

    def valid_credential(token: str | None) -> bool:
        if not token:
            return False
        return store.principal_for(token) is not None or store.check_admin(token) is not None

    def guarded(action: str, handle: Callable[[Request, str | None, str | None], Awaitable[Any]]) -> Any:
        """The failure limit, then ``handle``; refusals become answers, and failures count against the limit."""

        async def endpoint(request: Request) -> JSONResponse:
            client = request.client.host if request.client else None
            token = _bearer(request)
            keys = limiter.keys(client, token)
            # A token that failed too often is refused outright; a source address that did is refused unless the
            # request carries a valid credential (so a flood from a shared address does not lock its users out).
            if not limiter.allowed(keys[1:]) or (
                not limiter.allowed(keys[:1]) and not await run_in_threadpool(valid_credential, token)
            ):
                refusal = await run_in_threadpool(
                    service.refused_early, client, action, "rate_limited", "too many failed requests; wait"
                )
                return _answer(refusal, limiter.retry_after())
            try:
                result = await handle(request, token, client)
            except RefusedError as refusal:
                limiter.failed(keys)
                return _answer(refusal)
            status = 201 if request.method in ("PUT", "POST") and action in CREATED else 200
            return JSONResponse(result, status_code=status)

        return endpoint

    def client_call(action: str, decide: Callable[[str, Any, str | None], dict[str, Any]]) -> Any:
        async def handle(request: Request, token: str | None, client: str | None) -> Any:
            principal = await run_in_threadpool(service.authenticate, token, client, action)
            try:
                body = await read_json(request, limits, parsing)
            except RefusedError as refusal:
                early = service.refused_early
                raise await run_in_threadpool(
                    early, client, action, refusal.reason, refusal.message, principal
                ) from None
            return await run_in_threadpool(decide, principal, body, client)

        return guarded(action, handle)

    def admin_call(action: str, decide: Callable[[str, Request, Any, str | None], Any], body: bool = True) -> Any:
        async def handle(request: Request, token: str | None, client: str | None) -> Any:
            actor = await run_in_threadpool(store.check_admin, token) if token else None
            if actor is None:
                raise await run_in_threadpool(
                    service.refused_early, client, action, "unauthorized", "admin token required"
                )
            try:
                payload = await read_json(request, limits, parsing) if body else None
            except RefusedError as refusal:
                early = service.refused_early
                raise await run_in_threadpool(early, client, action, refusal.reason, refusal.message, actor) from None

            def run() -> Any:
                try:
                    return decide(actor, request, payload, client)
                except RefusedError as refusal:
                    raise manage.refused(actor, action, refusal, client) from None

            return await run_in_threadpool(run)

        return guarded(action, handle)

    def query(request: Request, name: str) -> str | None:
        return request.query_params.get(name) or None

    def audit(actor: str, request: Request, payload: Any, client: str | None) -> Any:
        try:
            limit = int(request.query_params.get("limit", "100"))
            since = request.query_params.get("since")
            since_time = float(since) if since not in (None, "") else None
        except ValueError:
            raise RefusedError("bad_request", "limit must be an integer and since a unix time") from None
        records = store.audit_log(
            max(1, min(limit, 10_000)), query(request, "principal"), query(request, "kid"), since_time
        )
        return {"records": [r.__dict__ for r in records]}

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> JSONResponse:
        try:
            await run_in_threadpool(store.ping)
        except Exception as error:  # the back end is down: not ready, and no detail beyond its kind
            return JSONResponse({"status": "unavailable", "error": type(error).__name__}, status_code=503)
        return JSONResponse({"status": "ready"})

    m = manage
    routes = [
        Route("/v1/release", client_call("release", service.release), methods=["POST"]),
        Route("/v1/publisher-key", client_call("publisher-key", service.publisher_key), methods=["POST"]),
        Route(
            "/v1/models/{kid}",
            admin_call("register", lambda a, r, p, c: m.register(a, r.path_params["kid"], p, c)),
            methods=["PUT"],
        ),
        Route("/v1/models", admin_call("models.list", lambda a, r, p, c: {"models": m.models()}, False)),
        Route("/v1/tokens", admin_call("token.create", lambda a, r, p, c: m.create_token(a, p, c)), methods=["POST"]),
        Route("/v1/tokens", admin_call("tokens.list", lambda a, r, p, c: {"tokens": m.tokens()}, False)),
        Route(
            "/v1/tokens/revoke",
            admin_call("token.revoke", lambda a, r, p, c: m.revoke_tokens(a, p, c)),
            methods=["POST"],
        ),
        Route(
            "/v1/tokens/{principal}",
            admin_call(
                "token.revoke",
                lambda a, r, p, c: m.revoke_tokens(a, {"principal": r.path_params["principal"]}, c),
                False,
            ),
            methods=["DELETE"],
        ),
        Route("/v1/grants", admin_call("grant.create", lambda a, r, p, c: m.create_grant(a, p, c)), methods=["POST"]),
        Route(
            "/v1/grants",
            admin_call(
                "grants.list", lambda a, r, p, c: {"grants": m.grants(query(r, "principal"), query(r, "kid"))}, False
            ),
        ),
        Route(
            "/v1/grants/{grant_id}",
            admin_call("grant.show", lambda a, r, p, c: m.grant(r.path_params["grant_id"]), False),
        ),
        Route(
            "/v1/grants/{grant_id}",
            admin_call("grant.revoke", lambda a, r, p, c: m.revoke_grant(a, r.path_params["grant_id"], c), False),
            methods=["DELETE"],
        ),
        Route("/v1/admins", admin_call("admin.create", lambda a, r, p, c: m.create_admin(a, p, c)), methods=["POST"]),
        Route("/v1/admins", admin_call("admins.list", lambda a, r, p, c: {"admins": m.admins()}, False)),
        Route(
            "/v1/admins/rotate", admin_call("admin.rotate", lambda a, r, p, c: m.rotate_admin(a, c)), methods=["POST"]
        ),
        Route(
            "/v1/admins/revoke",
            admin_call("admin.revoke", lambda a, r, p, c: m.revoke_admin(a, p, c)),
            methods=["POST"],
        ),
        Route("/v1/audit", admin_call("audit", audit, False)),
        Route("/v1/health", health),
        Route("/healthz", health),
        Route("/readyz", ready),
    ]
    return Starlette(routes=routes)


CREATED = {"register", "token.create", "grant.create", "admin.create"}


class AccessLog:
    """ASGI middleware: one line per request on ``write`` (text or JSON lines): time, client address, method,
    path, status, duration. Never headers (Authorization), query strings or bodies."""

    def __init__(self, app: Any, write: Callable[[str], None], fmt: str = "text") -> None:
        self.app, self.write, self.fmt = app, write, fmt

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [0]

        async def sending(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            client = scope.get("client")
            entry = {
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "client": client[0] if client else None,
                "method": scope["method"],
                "path": scope["path"],
                "status": status[0] or 500,
                "ms": round((time.perf_counter() - started) * 1000, 1),
            }
            if self.fmt == "json":
                self.write(json.dumps(entry))
            else:
                self.write(
                    # The path is percent-decoded ('%0A' is a newline): escaped, so that a request is one line
                    # and cannot forge others.
                    f'{entry["time"]} {entry["client"]} "{entry["method"]} {json.dumps(entry["path"])[1:-1]}" '
                    f"{entry['status']} {entry['ms']}ms"
                )
