"""The consumer's side of the key service: a key provider that obtains a file's data keys, and vouches for its
publisher, from the key service the file names (``jku``).

The provider answers a file only when its ``jku`` names a service in the consumer's allow-list: a URL is never
contacted just because a file names it. Data keys stay in memory; each request uses a fresh ephemeral key.
Transient failures (connection errors, 5xx, 429) are retried with exponential back-off; every refusal maps
to one clear exception (errors.py).
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import ssl
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import httpx

from .._log import logger
from ..errors import (
    ConfigError,
    CryptoTensorsError,
    KeyServiceDeniedError,
    KeyServiceError,
    KeyServiceNotAllowedError,
    KeyServiceUnauthorizedError,
    KeyServiceUnreachableError,
    RemotePolicyDeniedError,
)
from ..keys.jwk import VerifyKey, parse_jwk
from ..keys.sources import KeyRequest, ProvidedKeys
from .protocol import Ephemeral, b64d, publisher_request

TOKEN_ENV = "PYCRYPTOTENSORS_KEY_SERVICE_TOKEN"
# Evidence for one request: called with the request's binding (protocol.binding), it returns an attestation
# token whose nonce claim is that binding, or None. A callable taking no argument is accepted too (it cannot
# bind its evidence, so a service that checks attestation refuses what it returns).
Attestation = Callable[[str], str | None] | Callable[[], str | None]


def normalize(url: str) -> str:
    return url.rstrip("/")


def _tls(verify: bool | str) -> bool | ssl.SSLContext:
    """True (system CAs), False, or a CA bundle path turned into an SSL context (what httpx expects)."""
    return ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify


def _error_for(response: httpx.Response, url: str) -> KeyServiceError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    reason = str(body.get("error", "error"))
    message = f"key service {url} refused: {body.get('message', response.reason_phrase)}"
    if response.status_code == 401:
        return KeyServiceUnauthorizedError(message, reason)
    if reason == "policy_denied":
        return RemotePolicyDeniedError(message, reason)
    return KeyServiceDeniedError(message, reason)


class KeyServiceProvider:
    """A :class:`~pycryptotensors.keys.sources.KeyProvider` that obtains data keys from allowed key services.

    It answers only for files whose ``enc.jku`` names an allowed service, and never contacts another.

    Args:
        allowed: The key service URLs it may contact.
        token: The client token (``Authorization: Bearer``); None refuses every file that needs a service.
        timeout: Seconds per HTTP request.
        retries: Tries per request on a connection failure or a server error.
        backoff: Seconds before the first retry (doubled at each).
        verify: TLS verification: True, False, or the path of a CA bundle.
        attestation: Evidence for each request (see ``Attestation`` in this module), or None.
    """

    def __init__(
        self,
        allowed: Sequence[str],
        token: str | None,
        *,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.2,
        verify: bool | str = True,
        attestation: Attestation | None = None,
    ) -> None:
        self.allowed = {normalize(u) for u in allowed}
        self._token = token
        self.timeout, self.retries, self.backoff, self.verify = timeout, retries, backoff, verify
        self.attestation = attestation
        self._http: httpx.Client | None = None  # one connection pool (and TLS context) per provider

    def _client(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(timeout=self.timeout, verify=_tls(self.verify))
        return self._http

    def close(self) -> None:
        """Close the connection pool (a later request opens a new one)."""
        if self._http is not None:
            self._http.close()
            self._http = None

    def __repr__(self) -> str:
        return f"KeyServiceProvider(allowed={sorted(self.allowed)}, token={'set' if self._token else 'none'})"

    def _post(self, url: str, path: str, json_body: dict[str, Any]) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self._token}"}
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                response = self._client().post(f"{url}{path}", json=json_body, headers=headers)
            except httpx.HTTPError as error:
                last = error
                continue
            if response.status_code >= 500 or response.status_code == 429:
                last = RuntimeError(f"HTTP {response.status_code}")
                continue
            return response
        raise KeyServiceUnreachableError(f"key service {url} unreachable after {self.retries + 1} tries: {last}")

    def _service_for(self, request: KeyRequest) -> str | None:
        """The allowed key service the file names, or None when it names none (refusing any other)."""
        url = request.crypto.enc.jku
        if not url or not url.startswith(("http://", "https://")):
            return None
        url = normalize(url)
        if url not in self.allowed:
            logger.info("key service %s named by %s: not in the allow-list, not contacted", url, request.path)
            raise KeyServiceNotAllowedError(
                f"{request.path} names key service {url}, which is not in your allow-list; it was not contacted "
                "(if you trust it, add it to [key_service].allowed in your settings file)"
            )
        if not self._token:
            raise KeyServiceUnauthorizedError(
                f"{request.path} needs key service {url}, and no client token is configured for it "
                f"(set [key_service].token_file in your settings file, or {TOKEN_ENV})"
            )
        return url

    def _evidence(self, binding: str) -> str | None:
        if self.attestation is None:
            return None
        try:
            takes_binding = bool(inspect.signature(self.attestation).parameters)
        except (TypeError, ValueError):  # a builtin without a signature: assume the documented form
            takes_binding = True
        # inspect.signature decided which of the two Attestation forms this is
        if takes_binding:
            return cast(Callable[[str], str | None], self.attestation)(binding)
        return cast(Callable[[], str | None], self.attestation)()

    def provide(self, request: KeyRequest) -> ProvidedKeys | None:
        """The file's data keys, released by the key service its ``jku`` names (see KeyProvider.provide).

        Args:
            request: The file's path, header and the caller's claims.

        Returns:
            The data keys and the publisher's key, or None when the file names no ``http(s)`` key service.

        Raises:
            KeyServiceNotAllowedError: The service is not in ``allowed`` (it was not contacted).
            KeyServiceUnauthorizedError: No token, or the service does not accept it.
            KeyServiceUnreachableError: No answer after the retries, or a server error.
            KeyServiceDeniedError: The service refused (no grant, bad attestation ...);
                RemotePolicyDeniedError when the remote policy did.
            IntegrityError: The sealed answer does not open for this request.
        """
        url = self._service_for(request)
        if url is None:
            return None
        kid = request.crypto.enc.kid
        logger.info("master key for kid %r: asking key service %s for the data keys of %s", kid, url, request.path)
        ephemeral = Ephemeral()
        evidence = self._evidence(ephemeral.binding(request.header_bytes))
        body = ephemeral.request(request.header_bytes, dict(request.claims), evidence).to_json()
        response = self._post(url, "/v1/release", body)
        if response.status_code != 200:
            raise _error_for(response, url)
        payload = ephemeral.open(b64d(response.json().get("sealed"), "sealed"), request.header_bytes)
        data_keys = {name: b64d(value, "data key") for name, value in payload["data_keys"].items()}
        logger.info("key service %s released %d data key(s) for %s (kid %r)", url, len(data_keys), request.path, kid)
        return ProvidedKeys(verify_key=_publisher(payload, url), data_keys=data_keys)

    def vouch(self, request: KeyRequest) -> VerifyKey | None:
        """The publisher's key for this header, without a release (see KeyProvider.vouch).

        Args:
            request: The file's path and header.

        Returns:
            The key, or None when the file names no ``http(s)`` key service.

        Raises:
            KeyServiceError: As for :meth:`provide`; ``KeyServiceDeniedError`` for an invalid answer.
        """
        url = self._service_for(request)
        if url is None:
            return None
        logger.info("publisher key for kid %r: asking key service %s (%s)", request.crypto.sign.kid, url, request.path)
        response = self._post(url, "/v1/publisher-key", publisher_request(request.header_bytes))
        if response.status_code != 200:
            raise _error_for(response, url)
        try:
            payload = response.json()
        except ValueError:
            payload = None
        return _publisher(payload, url)


def _publisher(payload: Any, url: str) -> VerifyKey:
    try:
        key = parse_jwk(payload["publisher_key"])
    except (KeyError, TypeError, CryptoTensorsError):
        key = None
    if not isinstance(key, VerifyKey):
        raise KeyServiceDeniedError(f"key service {url} answered with an invalid publisher key", "bad_answer")
    return key


def from_settings() -> KeyServiceProvider | _Disabled:
    """The entry point factory: a provider configured by the ``[key_service]`` section of the settings.

    One provider (one connection pool) per configuration and process, however many files are loaded.

    Returns:
        The provider, or one that answers nothing when the settings have no ``[key_service]`` section.

    Raises:
        ConfigError: The settings file or its ``[key_service]`` section is invalid.
    """
    from ..settings import load_settings

    settings = load_settings()
    section = settings.raw.get("key_service")
    if not section:
        return _Disabled()
    return _provider_for(json.dumps(section, sort_keys=True), os.environ.get(TOKEN_ENV), str(settings.base))


@functools.lru_cache(maxsize=8)
def _provider_for(section_json: str, env_token: str | None, base: str) -> KeyServiceProvider:
    section = json.loads(section_json)
    if not isinstance(section, dict) or set(section) - {"allowed", "token_file", "timeout", "retries", "ca_file"}:
        raise ConfigError("settings: [key_service] takes allowed, token_file, timeout, retries, ca_file")
    token = env_token
    if token is None and section.get("token_file"):
        token = (Path(base) / Path(section["token_file"]).expanduser()).read_text(encoding="utf-8").strip()
    ca_file = section.get("ca_file")
    return KeyServiceProvider(
        section.get("allowed", []),
        token,
        timeout=float(section.get("timeout", 10)),
        retries=int(section.get("retries", 3)),
        verify=str(Path(base) / Path(ca_file).expanduser()) if ca_file else True,
    )


class _Disabled:
    """No key service configured: the provider has nothing to say about any file."""

    def provide(self, request: KeyRequest) -> None:
        return None

    def vouch(self, request: KeyRequest) -> None:
        return None
