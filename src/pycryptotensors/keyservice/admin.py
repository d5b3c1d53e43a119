"""The publisher's side of the key service: an admin client for models, client tokens, grants, admin tokens
and the audit log (``pycryptotensors keyservice`` is its command line)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

import httpx

from ..errors import KeyServiceUnreachableError
from ..keys.jwk import VerifyKey
from .provider import _error_for, _tls, normalize

URL_ENV = "PYCRYPTOTENSORS_KEYSERVICE_URL"
ADMIN_TOKEN_ENV = "PYCRYPTOTENSORS_ADMIN_TOKEN"


class AdminClient:
    """The publisher's calls: register models, manage client tokens and grants, read the audit log."""

    def __init__(self, url: str, admin_token: str, *, timeout: float = 10.0, verify: bool | str = True) -> None:
        self.url = normalize(url)
        self._http = httpx.Client(
            timeout=timeout, verify=_tls(verify), headers={"Authorization": f"Bearer {admin_token}"}
        )

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            response = self._http.request(method, f"{self.url}{path}", json=body)
        except httpx.HTTPError as error:
            raise KeyServiceUnreachableError(f"key service {self.url} unreachable: {error}") from None
        if response.status_code >= 400:
            raise _error_for(response, self.url)
        return response.json()

    def register_model(
        self,
        kid: str,
        publisher: VerifyKey,
        master_key: Any = None,
        model_id: str | None = None,
        alg: str = "aes256gcm",
        replace: bool = False,
    ) -> dict[str, Any]:
        body = {
            "publisher_key": publisher.to_jwk(),
            "model_id": model_id or kid,
            "alg": alg,
            "replace": replace,
            "master_key": master_key.to_jwk() if master_key is not None else None,
        }
        return self._call("PUT", f"/v1/models/{quote(kid, safe='')}", body)

    def create_token(self, principal: str) -> str:
        return self._call("POST", "/v1/tokens", {"principal": principal})["token"]

    def revoke_tokens(self, principal: str) -> int:
        """Every token of a principal; the name travels in the body, so any name (``team/alice``, ``..``) works."""
        return self._call("POST", "/v1/tokens/revoke", {"principal": principal})["revoked"]

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        return self._call("POST", "/v1/tokens/revoke", {"token_id": token_id})

    def tokens(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/tokens")["tokens"]

    def models(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/models")["models"]

    def grant(
        self, principal: str, kid: str, not_after: float | str | None = None, max_uses: int | None = None
    ) -> dict[str, Any]:
        return self._call(
            "POST", "/v1/grants", {"principal": principal, "kid": kid, "not_after": not_after, "max_uses": max_uses}
        )

    def revoke_grant(self, grant_id: str) -> None:
        self._call("DELETE", f"/v1/grants/{quote(grant_id, safe='')}")

    def get_grant(self, grant_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/grants/{quote(grant_id, safe='')}")

    def grants(self, principal: str | None = None, kid: str | None = None) -> list[dict[str, Any]]:
        query = urlencode({k: v for k, v in (("principal", principal), ("kid", kid)) if v is not None})
        return self._call("GET", f"/v1/grants?{query}")["grants"]

    def create_admin(self, name: str) -> dict[str, Any]:
        return self._call("POST", "/v1/admins", {"name": name})

    def rotate_admin(self) -> dict[str, Any]:
        """A new token for this admin; the one this client holds stops working."""
        return self._call("POST", "/v1/admins/rotate")

    def revoke_admin(self, name: str) -> dict[str, Any]:
        return self._call("POST", "/v1/admins/revoke", {"name": name})

    def admins(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/admins")["admins"]

    def audit(
        self, limit: int = 100, principal: str | None = None, kid: str | None = None, since: float | None = None
    ) -> list[dict[str, Any]]:
        filters = {"limit": limit, "principal": principal, "kid": kid, "since": since}
        query = urlencode({k: v for k, v in filters.items() if v is not None})
        return self._call("GET", f"/v1/audit?{query}")["records"]

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
