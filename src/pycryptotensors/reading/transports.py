"""The transports under :class:`~.remote.RemoteSource`: obstore for object stores, httpx for HTTP(S).

Each answers one range request with the object's size and version and the body as it arrives, and sorts
failures into retryable (:class:`TransientError`), "the object changed" (:class:`ChangedError`) and final
(:class:`~..errors.RemoteSourceError`). Error texts of the libraries pass through :func:`scrub` first.
"""

from __future__ import annotations

import functools
import os
import re
import threading
import warnings
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit, urlunsplit

from ..errors import FormatError, RemoteSourceError

if TYPE_CHECKING:
    from obstore import GetOptions

    from .remote import RemoteOptions


def redact(url: str) -> str:
    """The URL as it may appear in a message: no userinfo, no query string (presigned signatures), no fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


_URL_SECRETS = re.compile(r"(?P<url>[a-z][a-z0-9+.-]*://)(?:[^/@\s]*@)?(?P<rest>[^\s?#\"'<>]*)(?:[?#][^\s\"'<>]*)?")


def scrub(text: object, limit: int = 300) -> str:
    """A library's error text made safe for a message: URLs redacted, one line, bounded length."""
    line = next((part for part in str(text).splitlines() if part.strip()), "")
    line = _URL_SECRETS.sub(lambda m: m.group("url") + m.group("rest"), line)
    return line if len(line) <= limit else line[: limit - 3] + "..."


class TransientError(Exception):
    """A failure worth another try (reset, timeout, 5xx, short body); carries a safe description."""


class MissingObjectError(RemoteSourceError):
    """No object at that URL (HTTP 404, the store's NotFound): a remote model folder may lack optional files."""


class ChangedError(Exception):
    """The object's version is no longer the one pinned at open (412, or another ETag)."""


@dataclass
class Answer:
    """One range response: the object's size and version, and the body as it arrives."""

    size: int
    etag: str | None
    version_id: str | None  # S3 version id, when the bucket keeps versions
    pieces: Generator[Any, None, None]  # buffers (bytes or obstore Bytes); close() ends the request


class ObjectStoreTransport:
    """s3:// gs:// az:// through obstore; retries are ours (obstore's are off) so that a body cut short is
    retried like a failed request, and counts stay exact."""

    def __init__(self, url: str, options: RemoteOptions) -> None:
        try:
            import obstore
            from obstore.store import AzureStore, GCSStore, S3Store
        except ImportError:
            raise RemoteSourceError(missing_extra(url)) from None
        self._get, self._errors = obstore.get, obstore.exceptions
        parts = urlsplit(url)
        if not parts.netloc or not parts.path.strip("/"):
            raise RemoteSourceError(
                f"{redact(url)}: give a bucket and an object, e.g. {parts.scheme}://bucket/models/x.safetensors"
            )
        self.key = parts.path.lstrip("/")
        self.url = redact(url)
        self.store = make_store(url, options, (AzureStore, GCSStore, S3Store))

    def get(self, start: int, end: int, pin: tuple[str | None, str | None] | None) -> Answer:
        options: GetOptions = {"range": (start, end)}
        if pin is not None:
            etag, version = pin
            if etag:
                options["if_match"] = etag
            if version:
                options["version"] = version
        errors = self._errors
        try:
            result = self._get(self.store, self.key, options=options)
            meta = result.meta
        except errors.PreconditionError:
            raise ChangedError() from None
        except (FileNotFoundError, errors.NotFoundError) as error:
            raise MissingObjectError(f"{self.url}: not found ({scrub(error)}); check the URL") from None
        except (PermissionError, errors.PermissionDeniedError, errors.UnauthenticatedError) as error:
            raise RemoteSourceError(
                f"{self.url}: access refused ({scrub(error)}); check the credentials of the cloud's standard chain"
            ) from None
        except (errors.BaseError, OSError) as error:  # obstore's, or the OSError subclass it maps one to
            text = str(error)
            if re.search(r"status code: 4\d\d", text) and "429" not in text:
                raise RemoteSourceError(f"{self.url}: request refused: {scrub(error)}") from None
            raise TransientError(scrub(error)) from None
        if tuple(result.range) != (start, min(end, meta["size"])):
            raise RemoteSourceError(f"the server answered bytes {tuple(result.range)} for {(start, end)}")
        return Answer(meta["size"], meta.get("e_tag"), meta.get("version"), self._pieces(result))

    def _pieces(self, result: Any) -> Generator[Any, None, None]:
        try:
            yield from result.stream(min_chunk_size=256 * 1024)
        except (self._errors.BaseError, OSError) as error:
            raise TransientError(scrub(error)) from None

    def close(self) -> None:
        """The store is shared (see :func:`make_store`); obstore clients need no closing."""


_ENV_PREFIXES = ("AWS_", "GOOGLE_", "AZURE_")
_stores: dict[tuple[Any, ...], Any] = {}
_stores_lock = threading.Lock()


def make_store(url: str, options: RemoteOptions, classes: tuple[Any, Any, Any]) -> Any:
    """The obstore store of an ``s3://`` / ``gs://`` / ``az://`` URL's bucket or container, shared by every
    file of that bucket the process opens while the back-end's environment is unchanged: its connections
    (and TLS sessions) are reused from one shard to the next, and its credentials refresh themselves."""
    parts = urlsplit(url)
    environment = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)))
    key = (parts.scheme, parts.netloc, options.timeout, environment, os.environ.get("HOME"))
    with _stores_lock:
        store = _stores.get(key)
    if store is None:
        store = _new_store(url, options, classes)
        with _stores_lock:
            if len(_stores) > 64:  # bounded: an environment that keeps changing must not grow it forever
                _stores.clear()
            store = _stores.setdefault(key, store)
    return store


def _new_store(url: str, options: RemoteOptions, classes: tuple[Any, Any, Any]) -> Any:
    """A store with the cloud's standard credential chain, our timeouts, obstore's own retries off (ours
    count every try)."""
    from datetime import timedelta

    azure, gcs, s3 = classes
    parts = urlsplit(url)
    timeout = f"{options.timeout}s"
    client: dict[str, Any] = {"timeout": timeout, "connect_timeout": timeout}
    endpoint = _endpoint(parts.scheme)
    if endpoint.startswith("http://"):
        client["allow_http"] = True  # an endpoint the user set to plain HTTP (a local emulator or test server)
        warnings.warn(
            f"{parts.scheme}:// endpoint {redact(endpoint)} is plain HTTP: not encrypted in transit", stacklevel=5
        )
    retry = {"max_retries": 0, "retry_timeout": timedelta(seconds=options.timeout), "backoff": {}}
    store_class = {"s3": s3, "gs": gcs, "az": azure}[parts.scheme]
    try:
        provider = _aws_profile_credentials() if parts.scheme == "s3" else None
        extra = {"credential_provider": provider} if provider is not None else {}
        return store_class(parts.netloc, client_options=client, retry_config=retry, **extra)
    except Exception as error:
        raise RemoteSourceError(f"{redact(url)}: cannot set up the client: {scrub(error)}") from None


def _endpoint(scheme: str) -> str:
    """The endpoint a user set for the back-end (each library's own variable), or ''; Azure's emulator
    (``AZURE_STORAGE_USE_EMULATOR``, Azurite) listens on plain HTTP on 127.0.0.1 unless an endpoint is set."""
    env = os.environ.get
    if scheme == "s3":
        return env("AWS_ENDPOINT_URL_S3") or env("AWS_ENDPOINT_URL") or ""
    if scheme == "gs":
        return env("GOOGLE_BASE_URL") or ""
    endpoint = env("AZURE_STORAGE_ENDPOINT") or env("AZURE_ENDPOINT") or ""
    if not endpoint and env("AZURE_STORAGE_USE_EMULATOR", "").lower() in ("1", "true"):
        endpoint = "http://127.0.0.1:10000"
    return endpoint


def list_folder(url: str, options: RemoteOptions) -> dict[str, int] | None:
    """Every object under a folder URL of an object store (relative name -> size); None for HTTP(S) and the
    Hub, which have no listing (there the signed manifest says what the folder holds)."""
    parts = urlsplit(url)
    if parts.scheme not in ("s3", "gs", "az"):
        return None
    try:
        import obstore
        from obstore.store import AzureStore, GCSStore, S3Store
    except ImportError:
        raise RemoteSourceError(missing_extra(url)) from None
    if not parts.netloc:
        raise RemoteSourceError(f"{redact(url)}: give a bucket, e.g. {parts.scheme}://bucket/models/llama-enc/")
    store = make_store(url, options, (AzureStore, GCSStore, S3Store))
    prefix = parts.path.strip("/")
    prefix = prefix + "/" if prefix else ""
    found: dict[str, int] = {}
    try:
        for batch in obstore.list(store, prefix or None, chunk_size=1000):
            for item in batch:
                name = str(item["path"])[len(prefix) :]
                if name:
                    found[name] = int(item["size"])
    except (PermissionError, obstore.exceptions.PermissionDeniedError, obstore.exceptions.UnauthenticatedError) as e:
        raise RemoteSourceError(
            f"{redact(url)}: listing refused ({scrub(e)}); check the credentials of the cloud's standard chain"
        ) from None
    except (obstore.exceptions.BaseError, OSError) as error:
        raise RemoteSourceError(f"{redact(url)}: cannot list the folder ({scrub(error)})") from None
    return found


def _aws_profile_credentials() -> Any:
    """AWS profiles, SSO and the shared credentials / config files, which object_store does not read, through
    boto3's chain: only when there is such a file or ``AWS_PROFILE`` and no key in the environment (object_store
    reads keys, web identity, container and instance credentials itself, without boto3's slow probes)."""
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        return None
    files = [os.environ.get("AWS_SHARED_CREDENTIALS_FILE"), os.environ.get("AWS_CONFIG_FILE")]
    files += [os.path.expanduser("~/.aws/credentials"), os.path.expanduser("~/.aws/config")]
    if not os.environ.get("AWS_PROFILE") and not any(f and os.path.isfile(f) for f in files):
        return None
    try:
        import boto3
        from obstore.auth.boto3 import Boto3CredentialProvider
    except ImportError:
        return None
    session = boto3.Session()
    return Boto3CredentialProvider(session) if session.get_credentials() is not None else None


class HttpTransport:
    """https:// (and http://, hf://) through httpx: Range and If-Match headers, the body streamed."""

    def __init__(self, url: str, options: RemoteOptions, headers: dict[str, str] | None = None) -> None:
        import httpx

        self._httpx = httpx
        self.url = url
        limits = httpx.Limits(max_connections=options.concurrency + 2, max_keepalive_connections=options.concurrency)
        self.client = httpx.Client(
            timeout=options.timeout,
            limits=limits,
            follow_redirects=True,
            headers=headers or {},
            trust_env=True,
            verify=_ssl_context(),
        )

    def get(self, start: int, end: int, pin: tuple[str | None, str | None] | None) -> Answer:
        httpx = self._httpx
        headers = {"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"}
        if pin is not None and pin[0]:
            headers["If-Match"] = pin[0]
        try:
            request = self.client.build_request("GET", self.url, headers=headers)
            response = self.client.send(request, stream=True)
        except httpx.TransportError as error:
            raise TransientError(f"{type(error).__name__}: {scrub(error)}") from None
        status = response.status_code
        if status != 206:
            response.close()
            if status == 412:
                raise ChangedError()
            if status >= 500 or status == 429:
                raise TransientError(f"HTTP {status}")
            if status == 200:
                raise RemoteSourceError(
                    f"{redact(self.url)}: the server ignored the Range header (HTTP 200); serve the file from a "
                    "server that supports range requests, or download it first"
                )
            if status == 404:
                raise MissingObjectError(f"{redact(self.url)}: not found (HTTP 404); check the URL")
            if status == 416:
                raise FormatError(f"{redact(self.url)}: the object is shorter than its header says (HTTP 416)")
            raise RemoteSourceError(f"{redact(self.url)}: HTTP {status}; check the URL and your access to it")
        size = _content_range(response.headers.get("content-range", ""), start, end)
        if size is None:
            response.close()
            raise RemoteSourceError(
                f"{redact(self.url)}: the server answered another range than asked "
                f"({scrub(response.headers.get('content-range', 'none'))})"
            )
        return Answer(size, response.headers.get("etag"), None, self._pieces(response))

    def _pieces(self, response: Any) -> Generator[bytes, None, None]:
        try:
            yield from response.iter_raw(256 * 1024)
        except self._httpx.TransportError as error:
            raise TransientError(f"{type(error).__name__}: {scrub(error)}") from None
        finally:
            response.close()

    def close(self) -> None:
        self.client.close()


@functools.cache
def _ssl_context() -> Any:
    """One TLS context for every client of the process: loading the CA bundle costs ~150 ms, which a new
    context per opened file paid on every open (httpx's default; SSL_CERT_FILE / SSL_CERT_DIR still apply)."""
    import httpx

    return httpx.create_ssl_context(trust_env=True)


def _content_range(value: str, start: int, end: int) -> int | None:
    """The total size from ``bytes a-b/total`` when the range is the one asked (clipped at the end)."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+)\s*", value)
    if not match:
        return None
    first, last, total = (int(g) for g in match.groups())
    if first != start or last != min(end, total) - 1:
        return None
    return total


def hf_url(url: str) -> tuple[str, dict[str, str]]:
    """``hf://[datasets/|spaces/]org/repo[@revision]/path`` as the Hub's resolve URL, with the Hub's headers
    (the token from HF_TOKEN or ``huggingface-cli login``; sent to the Hub only: httpx drops it on a redirect
    to another host)."""
    rest = url[len("hf://") :]
    kind = ""
    for prefix in ("datasets/", "spaces/"):
        if rest.startswith(prefix):
            kind, rest = prefix, rest[len(prefix) :]
    parts = rest.split("/")
    if len(parts) < 3:
        raise RemoteSourceError(f"{url}: use hf://org/repo[@revision]/file.safetensors")
    repo, revision = parts[1].partition("@")[0], parts[1].partition("@")[2] or "main"
    try:
        from huggingface_hub import constants
        from huggingface_hub.utils import build_hf_headers

        endpoint, headers = constants.ENDPOINT, build_hf_headers()
    except ImportError:
        endpoint, headers = os.environ.get("HF_ENDPOINT", "https://huggingface.co"), {}
        if os.environ.get("HF_TOKEN"):
            headers = {"authorization": f"Bearer {os.environ['HF_TOKEN']}"}
    path = "/".join(parts[2:])
    return f"{endpoint}/{kind}{parts[0]}/{repo}/resolve/{quote(revision, safe='')}/{path}", headers


def missing_extra(url: str) -> str:
    return f"reading {redact(url)} needs the remote extra: pip install 'pycryptotensors[remote]'"
