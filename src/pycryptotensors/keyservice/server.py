"""Starting the service: state directory, root key, admin token bootstrap, back end, the listening socket,
uvicorn with header, body and idle timeouts and a connection limit, a start-up banner and an access log.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CryptoTensorsError
from ..keys.files import write_secret_file
from .app import AccessLog, Limits, build_app
from .attestation import AttestationVerifier
from .management import new_admin_token
from .service import ReleaseService
from .store import RootKey, SqliteStore, Store, private_file

ADMIN_TOKEN_FILE = "admin.token"
BOOTSTRAP_ADMIN = "admin"  # the name of the admin whose token serve writes to STATE/admin.token


class ServeError(CryptoTensorsError):
    """The service cannot start (the port is taken, the back end is unreachable): exit code 1."""


@dataclass(frozen=True)
class ServeConfig:
    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 8443
    tls_cert: str | None = None
    tls_key: str | None = None
    backend: str = "sqlite"  # or "openbao"
    bao_url: str | None = None
    bao_token: str | None = None
    bao_mount: str = "secret"
    bao_prefix: str = "pycryptotensors"
    attestation: AttestationVerifier | None = None
    limits: Limits = field(default_factory=Limits)
    header_timeout: float = 10.0  # seconds from connecting (or from the last answer) to a complete request head
    keep_alive: float = 5.0  # seconds an idle keep-alive connection is kept
    max_connections: int = 256  # beyond this many connections or requests in flight, 503
    access_log: str = "text"  # "text", "json" or "off"
    max_connections_per_source: int = 64  # one address beyond this many open connections: closed at once
    quiet: bool = False  # serve -q: the banner's warnings only


def prepare_state(state_dir: Path) -> None:
    """The state folder 0700, even when it already existed (made by hand, or by an older version 0755)."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(state_dir, 0o700)
    for name in (ADMIN_TOKEN_FILE, "root.key"):
        if (state_dir / name).exists():
            os.chmod(state_dir / name, 0o600)


def open_store(config: ServeConfig) -> Store:
    """The configured back end, with the bootstrap admin token in STATE/admin.token (0600).

    Only the token's hash is stored. When the file is missing, the bootstrap admin's older tokens are revoked
    and a new one is written: deleting the file and restarting replaces the admin token, it never keeps the old
    one valid. Other admins (``keyservice admin create``) are not touched."""
    prepare_state(config.state_dir)
    if config.backend == "openbao":
        from .openbao import OpenBaoStore

        if not config.bao_url or not config.bao_token:
            raise ValueError("the openbao back end needs --bao-url and a token (--bao-token-file or BAO_TOKEN)")
        store: Store = OpenBaoStore(config.bao_url, config.bao_token, mount=config.bao_mount, prefix=config.bao_prefix)
    else:
        private_file(config.state_dir / "keyservice.sqlite3")
        store = SqliteStore(
            config.state_dir / "keyservice.sqlite3", RootKey.load_or_create(config.state_dir / "root.key")
        )
    admin_file = config.state_dir / ADMIN_TOKEN_FILE
    if not admin_file.exists():
        store.revoke_admin(BOOTSTRAP_ADMIN)
        token = new_admin_token()
        store.set_admin(token, BOOTSTRAP_ADMIN)
        write_secret_file(admin_file, token + "\n")  # 0600, atomic, never through a symbolic link
    return store


def guarded_protocol(header_timeout: float, per_source: int | None = None) -> type:
    """uvicorn's h11 protocol with a deadline for the request head: a connection that has not sent a complete
    request line and headers within ``header_timeout`` seconds of connecting (or of its last answer) is closed.
    uvicorn itself only times out idle keep-alive connections, so half-sent requests would stay open.

    ``per_source``: at most this many open connections per client address; more are closed on arrival, so
    that one address cannot hold every slot of ``--max-connections`` (and answer 503 to everyone else)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    open_by_source: dict[str, int] = {}  # one event loop: no lock needed

    class HeaderDeadline(H11Protocol):
        _deadline: Any = None
        _source: str | None = None

        def _arm(self) -> None:
            if self._deadline is None:
                self._deadline = self.loop.call_later(header_timeout, self._expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if per_source is not None:
                peer = transport.get_extra_info("peername")
                self._source = str(peer[0]) if peer else "?"
                open_by_source[self._source] = open_by_source.get(self._source, 0) + 1
                if open_by_source[self._source] > per_source:
                    transport.close()
                    return
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self.cycle is None or self.cycle.response_complete:
                self._arm()  # between requests: the next head must arrive in time too
            super().data_received(data)
            if self.cycle is not None and not self.cycle.response_complete:
                self._disarm()  # a request head is in; the app bounds the body (app.Limits.body_timeout)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._source is not None:
                left = open_by_source.get(self._source, 1) - 1
                if left > 0:
                    open_by_source[self._source] = left
                else:
                    open_by_source.pop(self._source, None)
                self._source = None
            super().connection_lost(exc)

    return HeaderDeadline


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything else starts, so that a taken port is one clear error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise ServeError(
                f"{host}:{port} is already in use (another key service?): stop it, or choose another --port"
            ) from None
        raise ServeError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def banner(config: ServeConfig, port: int) -> list[str]:
    """What an operator needs to see at start: where, how, with which state and admin token (never a secret)."""
    scheme = "https" if config.tls_cert else "http"
    host = f"[{config.host}]" if ":" in config.host else config.host
    state = (
        f"openbao {config.bao_url} (mount {config.bao_mount!r}, prefix {config.bao_prefix!r}); local files in "
        f"{config.state_dir}"
        if config.backend == "openbao"
        else f"sqlite {config.state_dir / 'keyservice.sqlite3'}"
    )
    attestation = getattr(config.attestation, "issuer", None)
    lines = [
        f"pycryptotensors key service on {scheme}://{host}:{port} ({'TLS' if config.tls_cert else 'plain HTTP'})",
        f"  state:        {state}",
        f"  admin token:  {config.state_dir / ADMIN_TOKEN_FILE} (0600; name {BOOTSTRAP_ADMIN!r})",
        f"  attestation:  {f'issuer {attestation}' if attestation else 'off'}",
        f"  limits:       body {config.limits.max_body} bytes, JSON depth {config.limits.max_depth}, header timeout "
        f"{config.header_timeout:g} s, body timeout {config.limits.body_timeout:g} s, keep-alive "
        f"{config.keep_alive:g} s, {config.max_connections} connections "
        f"({config.max_connections_per_source} per source), "
        f"{config.limits.failures_per_minute:g} failures/min per source and token",
        f"  access log:   {config.access_log} (stderr)",
    ]
    if not config.tls_cert and not is_loopback(config.host):
        lines.append(
            f"warning: serving plain HTTP on {config.host}, beyond loopback: client and admin tokens cross the "
            "network in clear; give --tls-cert and --tls-key (or put a TLS proxy in front and listen on 127.0.0.1)"
        )
    return lines


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def serve(config: ServeConfig) -> None:
    import uvicorn

    sock = listen(config.host, config.port)
    try:
        app: Any = build_app(ReleaseService(open_store(config), config.attestation), config.limits)
    except BaseException:
        sock.close()
        raise
    if config.access_log != "off":
        app = AccessLog(app, _stderr, config.access_log)
    for line in banner(config, sock.getsockname()[1]):
        if not config.quiet or line.startswith("warning"):
            _stderr(line)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            ssl_certfile=config.tls_cert,
            ssl_keyfile=config.tls_key,
            # the per-source cap applies only below the global one (with equal caps the global 503 decides)
            http=guarded_protocol(
                config.header_timeout,
                config.max_connections_per_source
                if config.max_connections_per_source < config.max_connections
                else None,
            ),
            timeout_keep_alive=int(max(1, config.keep_alive)),
            limit_concurrency=config.max_connections,
            # uvicorn's default trusts X-Forwarded-For from 127.0.0.1: any local process, or a proxy on loopback
            # passing a client's header through, could pick the source address of the limits and the audit log.
            proxy_headers=False,
            h11_max_incomplete_event_size=16 * 1024,  # request line and headers: a release needs well under 1 KiB
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,  # idle keep-alive TLS connections must not hold a shutdown for 30 s
        )
    )
    server.run(sockets=[sock])
