"""Starting the service: state directory, root key, admin token bootstrap, back end, uvicorn."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from .attestation import AttestationVerifier
from .service import ReleaseService
from .store import RootKey, SqliteStore, Store

ADMIN_TOKEN_FILE = "admin.token"


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


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text + "\n")


def open_store(config: ServeConfig) -> Store:
    """The configured back end; on first start, an admin token is made and written to state_dir (0600)."""
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if config.backend == "openbao":
        from .openbao import OpenBaoStore

        if not config.bao_url or not config.bao_token:
            raise ValueError("the openbao back end needs --bao-url and a token (--bao-token-file or BAO_TOKEN)")
        store: Store = OpenBaoStore(config.bao_url, config.bao_token, mount=config.bao_mount, prefix=config.bao_prefix)
    else:
        store = SqliteStore(
            config.state_dir / "keyservice.sqlite3", RootKey.load_or_create(config.state_dir / "root.key")
        )
    admin_file = config.state_dir / ADMIN_TOKEN_FILE
    if not admin_file.exists():
        token = "adm_" + secrets.token_urlsafe(32)
        store.set_admin(token)
        _write_private(admin_file, token)
    return store


def serve(config: ServeConfig) -> None:
    import uvicorn

    from .app import build_app

    app = build_app(ReleaseService(open_store(config), config.attestation))
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        ssl_certfile=config.tls_cert,
        ssl_keyfile=config.tls_key,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,  # idle keep-alive TLS connections must not hold a shutdown for 30 s
    )
