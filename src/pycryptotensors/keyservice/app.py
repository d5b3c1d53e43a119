"""The HTTP face of the key service (Starlette, served by uvicorn). JSON in, JSON out.

    POST   /v1/release            client token   a file's data keys, sealed (protocol.py)
    POST   /v1/publisher-key      client token   the public key that verifies a header (no release)
    PUT    /v1/models/{kid}       admin token    register a model: publisher key, master key (or generate)
    POST   /v1/tokens             admin token    create a client token for a principal (shown once)
    DELETE /v1/tokens/{principal} admin token    revoke every token of a principal
    POST   /v1/grants             admin token    grant a principal a key id, until a time, n times
    DELETE /v1/grants/{id}        admin token    revoke a grant at once
    GET    /v1/audit?limit=N      admin token    the latest audit records
    GET    /v1/health                            liveness

Handlers are plain functions: Starlette runs them in its thread pool, where each thread has its own store
connection. Nothing here logs request bodies, tokens or keys.
"""

from __future__ import annotations

import datetime
from dataclasses import asdict
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..cipher.aead import algorithm
from ..errors import CryptoTensorsError
from ..keys.jwk import MasterKey, SigningKey, VerifyKey, generate_master_key, parse_jwk
from .service import RefusedError, ReleaseService
from .store import Model


def _bearer(request: Request) -> str | None:
    value = request.headers.get("authorization", "")
    return value[7:].strip() if value.lower().startswith("bearer ") else None


def _error(status: int, reason: str, message: str) -> JSONResponse:
    return JSONResponse({"error": reason, "message": message}, status_code=status)


def _time(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    moment = datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if moment.tzinfo is None:  # a date without a zone means UTC, never the server's local time
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def build_app(service: ReleaseService) -> Starlette:
    store = service.store

    def admin_only(request: Request) -> JSONResponse | None:
        token = _bearer(request)
        if token is None or not store.check_admin(token):
            return _error(401, "unauthorized", "admin token required")
        return None

    async def body(request: Request) -> Any:
        try:
            return await request.json()
        except ValueError:
            return None

    def client_call(decide: Any) -> Any:
        """An endpoint for clients: the service decides (in a worker thread), refusals become error answers."""

        async def endpoint(request: Request) -> JSONResponse:
            payload = await body(request)
            client = request.client.host if request.client else None
            try:
                result = await _in_thread(decide, _bearer(request), payload, client)
            except RefusedError as refusal:
                return _error(refusal.status, refusal.reason, refusal.message)
            return JSONResponse(result)

        return endpoint

    def put_model(request: Request, payload: Any) -> JSONResponse:
        kid = request.path_params["kid"]
        if not isinstance(payload, dict) or "publisher_key" not in payload:
            return _error(400, "bad_request", "publisher_key (a public JWK) is required")
        if payload.get("replace") is not True and store.get_model(kid) is not None:
            # Replacing a master key strands every file encrypted under the old one: only on explicit request.
            return _error(409, "conflict", f"key id {kid!r} is already registered (use replace to overwrite)")
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
            return _error(400, "bad_request", str(error))
        store.put_model(Model(kid, str(payload.get("model_id", kid)), master, publisher))
        answer: dict[str, Any] = {"kid": kid, "model_id": str(payload.get("model_id", kid))}
        if generated is not None:
            answer["master_key"] = generated  # shown once, for the publisher to encrypt with
        return JSONResponse(answer, status_code=201)

    def post_token(request: Request, payload: Any) -> JSONResponse:
        principal = payload.get("principal") if isinstance(payload, dict) else None
        if not isinstance(principal, str) or not principal:
            return _error(400, "bad_request", "principal is required")
        return JSONResponse({"principal": principal, "token": store.add_token(principal)}, status_code=201)

    def delete_tokens(request: Request, payload: Any) -> JSONResponse:
        return JSONResponse({"revoked": store.revoke_tokens(request.path_params["principal"])})

    def post_grant(request: Request, payload: Any) -> JSONResponse:
        if (
            not isinstance(payload, dict)
            or not isinstance(payload.get("principal"), str)
            or not isinstance(payload.get("kid"), str)
        ):
            return _error(400, "bad_request", "principal and kid are required")
        max_uses = payload.get("max_uses")
        if max_uses is not None and (not isinstance(max_uses, int) or max_uses < 0):
            return _error(400, "bad_request", "max_uses must be a non-negative integer")
        try:
            not_after = _time(payload.get("not_after"))
        except ValueError:
            return _error(400, "bad_request", "not_after must be a unix time or an ISO 8601 date")
        grant = store.add_grant(payload["principal"], payload["kid"], not_after, max_uses)
        return JSONResponse(asdict(grant), status_code=201)

    def delete_grant(request: Request, payload: Any) -> JSONResponse:
        if not store.revoke_grant(request.path_params["grant_id"]):
            return _error(404, "not_found", "no such active grant")
        return JSONResponse({"revoked": request.path_params["grant_id"]})

    def get_audit(request: Request, payload: Any) -> JSONResponse:
        try:
            limit = int(request.query_params.get("limit", "100"))
        except ValueError:
            return _error(400, "bad_request", "limit must be an integer")
        return JSONResponse({"records": [asdict(r) for r in store.audit_log(max(1, min(limit, 10_000)))]})

    def admin(handler: Any) -> Any:
        async def endpoint(request: Request) -> JSONResponse:
            payload = await body(request)

            def run() -> JSONResponse:
                return admin_only(request) or handler(request, payload)

            return await _in_thread(run)

        return endpoint

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/v1/release", client_call(service.release), methods=["POST"]),
            Route("/v1/publisher-key", client_call(service.publisher_key), methods=["POST"]),
            Route("/v1/models/{kid}", admin(put_model), methods=["PUT"]),
            Route("/v1/tokens", admin(post_token), methods=["POST"]),
            Route("/v1/tokens/{principal}", admin(delete_tokens), methods=["DELETE"]),
            Route("/v1/grants", admin(post_grant), methods=["POST"]),
            Route("/v1/grants/{grant_id}", admin(delete_grant), methods=["DELETE"]),
            Route("/v1/audit", admin(get_audit), methods=["GET"]),
            Route("/v1/health", health, methods=["GET"]),
        ]
    )


async def _in_thread(fn: Any, *args: Any) -> Any:
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args)
