"""The publisher's side of the key service: an admin client for models, client tokens, grants, admin tokens
and the audit log (``pycryptotensors keyservice`` is its command line)."""

from __future__ import annotations

from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import httpx

from ..errors import KeyServiceError, KeyServiceUnreachableError
from ..keys.jwk import VerifyKey
from .provider import _error_for, _tls, normalize

URL_ENV = "PYCRYPTOTENSORS_KEYSERVICE_URL"
ADMIN_TOKEN_ENV = "PYCRYPTOTENSORS_ADMIN_TOKEN"

_T = TypeVar("_T")


class AdminClient:
    """The publisher's calls: register models, manage client tokens and grants, read the audit log.

    Every call raises :class:`~pycryptotensors.errors.KeyServiceUnreachableError` when the service cannot be
    reached, :class:`~pycryptotensors.errors.KeyServiceUnauthorizedError` when it does not accept the admin
    token, :class:`~pycryptotensors.errors.KeyServiceDeniedError` when it refuses the call (its ``reason``
    says why), and :class:`~pycryptotensors.errors.KeyServiceError` for an answer of the wrong shape.

    Args:
        url: The key service's base URL.
        admin_token: An admin token (``pycryptotensors serve`` prints the first one).
        timeout: Seconds per request.
        verify: TLS verification: True, False, or the path of a CA bundle.
    """

    def __init__(self, url: str, admin_token: str, *, timeout: float = 10.0, verify: bool | str = True) -> None:
        self.url = normalize(url)
        self._http = httpx.Client(
            timeout=timeout, verify=_tls(verify), headers={"Authorization": f"Bearer {admin_token}"}
        )

    def _call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        try:
            response = self._http.request(method, f"{self.url}{path}", json=body)
        except httpx.HTTPError as error:
            raise KeyServiceUnreachableError(f"key service {self.url} unreachable: {error}") from None
        if response.status_code >= 400:
            raise _error_for(response, self.url)
        return self._typed(response.json(), dict, path)

    def _typed(self, value: object, kind: type[_T], path: str) -> _T:
        """``value`` when it has the type the admin API promises for it; a clear error otherwise."""
        if not isinstance(value, kind):
            raise KeyServiceError(
                f"key service {self.url} answered {path} with a {type(value).__name__} where a {kind.__name__} "
                "was expected: is the URL a pycryptotensors key service of the same version?"
            )
        return value

    def _field(self, method: str, path: str, name: str, kind: type[_T], body: Any = None) -> _T:
        return self._typed(self._call(method, path, body).get(name), kind, path)

    def register_model(
        self,
        kid: str,
        publisher: VerifyKey,
        master_key: Any = None,
        model_id: str | None = None,
        alg: str = "aes256gcm",
        replace: bool = False,
    ) -> dict[str, Any]:
        """Register a model: its key id, the publisher's verification key and (sealed by the service) its
        master key.

        Args:
            kid: The master key's id (the files' ``enc.kid``).
            publisher: The publisher's verification key; the service releases keys only for headers it signed.
            master_key: The MasterKey; None lets the service generate one.
            model_id: A name for the model; ``kid`` when None.
            alg: The algorithm of a generated master key.
            replace: Replace an existing registration of ``kid``.

        Returns:
            The service's record of the model.
        """
        body = {
            "publisher_key": publisher.to_jwk(),
            "model_id": model_id or kid,
            "alg": alg,
            "replace": replace,
            "master_key": master_key.to_jwk() if master_key is not None else None,
        }
        return self._call("PUT", f"/v1/models/{quote(kid, safe='')}", body)

    def create_token(self, principal: str) -> str:
        """A new client token for ``principal`` (shown once: the service keeps only its hash).

        Args:
            principal: The client's name, used in grants and the audit log.

        Returns:
            The token.
        """
        return self._field("POST", "/v1/tokens", "token", str, {"principal": principal})

    def revoke_tokens(self, principal: str) -> int:
        """Revoke every token of a principal; the name travels in the body, so any name (``team/alice``, ``..``)
        works.

        Args:
            principal: The client's name.

        Returns:
            How many tokens were revoked.
        """
        return self._field("POST", "/v1/tokens/revoke", "revoked", int, {"principal": principal})

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        """Revoke one token.

        Args:
            token_id: The token's id (as :meth:`tokens` lists it).

        Returns:
            The principal it belonged to and the count revoked.
        """
        return self._call("POST", "/v1/tokens/revoke", {"token_id": token_id})

    def tokens(self) -> list[dict[str, Any]]:
        """Every client token, without the secrets.

        Returns:
            One record per token: id, principal, creation and revocation times.
        """
        return self._field("GET", "/v1/tokens", "tokens", list)

    def models(self) -> list[dict[str, Any]]:
        """The registered models.

        Returns:
            One record per model: kid, model id, algorithm (never the master key).
        """
        return self._field("GET", "/v1/models", "models", list)

    def grant(
        self, principal: str, kid: str, not_after: float | str | None = None, max_uses: int | None = None
    ) -> dict[str, Any]:
        """Allow ``principal`` to have the data keys of model ``kid`` released.

        Args:
            principal: The client's name.
            kid: The model's key id.
            not_after: When the grant expires: a unix time or an RFC 3339 date; None: never.
            max_uses: How many releases it allows; None: unlimited.

        Returns:
            The grant's record (with its id) and any warnings.
        """
        return self._call(
            "POST", "/v1/grants", {"principal": principal, "kid": kid, "not_after": not_after, "max_uses": max_uses}
        )

    def revoke_grant(self, grant_id: str) -> None:
        """Revoke a grant.

        Args:
            grant_id: The grant's id.
        """
        self._call("DELETE", f"/v1/grants/{quote(grant_id, safe='')}")

    def get_grant(self, grant_id: str) -> dict[str, Any]:
        """One grant.

        Args:
            grant_id: The grant's id.

        Returns:
            Its record: principal, kid, expiry, uses left, whether revoked.
        """
        return self._call("GET", f"/v1/grants/{quote(grant_id, safe='')}")

    def grants(self, principal: str | None = None, kid: str | None = None) -> list[dict[str, Any]]:
        """The grants, optionally only those of one principal and/or one model.

        Args:
            principal: Only this client's grants.
            kid: Only this model's grants.

        Returns:
            One record per grant.
        """
        query = urlencode({k: v for k, v in (("principal", principal), ("kid", kid)) if v is not None})
        return self._field("GET", f"/v1/grants?{query}", "grants", list)

    def create_admin(self, name: str) -> dict[str, Any]:
        """A new admin and its token (shown once).

        Args:
            name: The admin's name.

        Returns:
            The name and the token.
        """
        return self._call("POST", "/v1/admins", {"name": name})

    def rotate_admin(self) -> dict[str, Any]:
        """A new token for this admin; the one this client holds stops working.

        Returns:
            The admin's name and the new token.
        """
        return self._call("POST", "/v1/admins/rotate")

    def revoke_admin(self, name: str) -> dict[str, Any]:
        """Revoke an admin's tokens.

        Args:
            name: The admin's name.

        Returns:
            The name and the count of tokens revoked.
        """
        return self._call("POST", "/v1/admins/revoke", {"name": name})

    def admins(self) -> list[dict[str, Any]]:
        """The admins, without their tokens.

        Returns:
            One record per admin.
        """
        return self._field("GET", "/v1/admins", "admins", list)

    def audit(
        self, limit: int = 100, principal: str | None = None, kid: str | None = None, since: float | None = None
    ) -> list[dict[str, Any]]:
        """The audit log, newest first.

        Args:
            limit: At most this many records (the service caps it at 10,000).
            principal: Only records about this client (as principal, actor or target).
            kid: Only records about this model.
            since: Only records from this unix time on.

        Returns:
            One record per event: time, action, principal, kid, outcome and reason.
        """
        filters = {"limit": limit, "principal": principal, "kid": kid, "since": since}
        query = urlencode({k: v for k, v in filters.items() if v is not None})
        return self._field("GET", f"/v1/audit?{query}", "records", list)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
