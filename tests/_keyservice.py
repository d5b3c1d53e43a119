"""Helpers for the key service tests: a real ``pycryptotensors serve`` process on 127.0.0.1, the CLI in
subprocesses, publishing models in process, and keys / certificates made for the test."""

from __future__ import annotations

import base64
import datetime
import gc
import ipaddress
import json
import os
import ssl
import subprocess
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

import pycryptotensors as pc
import pycryptotensors.numpy as ct_np
from _command import CLI
from helpers import assert_same_tensors, free_port, run_cli
from pycryptotensors.keyservice.admin import AdminClient
from pycryptotensors.keyservice.provider import KeyServiceProvider


def closed_url() -> str:
    """A URL on a port nothing listens on."""
    return f"http://127.0.0.1:{free_port()}"


def cli(*args: Any, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The command, which must succeed unless ``check`` is False (tests/helpers.py: never a traceback)."""
    return run_cli(*args, check=check, env=env, timeout=60)


class Server:
    """``pycryptotensors serve --state DIR --port PORT [extra]`` in a subprocess."""

    def __init__(self, state: Path, *extra: Any, tls_ca: Path | None = None) -> None:
        self.state = state
        self.extra = [str(e) for e in extra]
        self.tls_ca = tls_ca
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls_ca else 'http'}://127.0.0.1:{self.port}"

    @property
    def admin_token_file(self) -> Path:
        return self.state / "admin.token"

    @property
    def admin_token(self) -> str:
        return self.admin_token_file.read_text().strip()

    @property
    def verify(self) -> Any:
        return str(self.tls_ca) if self.tls_ca else True

    def start(self, timeout: float = 20.0, port: int | None = None) -> Server:
        for _ in range(1 if port else 3):  # a free port may be taken between probing it and binding it
            self.port = port or free_port()
            log = open(self.state.parent / f"{self.state.name}-{self.port}.log", "wb")  # noqa: SIM115
            self.process = subprocess.Popen(
                [*CLI, "serve", "--state", str(self.state), "--port", str(self.port), *self.extra],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            log.close()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    break
                try:
                    ctx = ssl.create_default_context(cafile=str(self.tls_ca)) if self.tls_ca else True
                    if httpx.get(f"{self.url}/v1/health", timeout=1.0, verify=ctx).status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
            self.stop()
        logs = "\n".join(p.read_text(errors="replace") for p in self.state.parent.glob(f"{self.state.name}-*.log"))
        raise RuntimeError(f"pycryptotensors serve did not come up:\n{logs}")

    def stop(self) -> None:
        # Providers keep a pooled HTTP client with no close(); an idle TLS keep-alive connection of one still
        # waiting for garbage collection holds up uvicorn's graceful shutdown (for the SSL shutdown timeout).
        gc.collect()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    # --- the publisher's side

    def admin(self) -> AdminClient:
        return AdminClient(self.url, self.admin_token, verify=self.verify)

    def admin_cli(self, *args: Any, check: bool = True) -> subprocess.CompletedProcess[str]:
        tls = ["--ca-file", self.tls_ca] if self.tls_ca else []
        return cli(
            "keyservice", "--url", self.url, "--admin-token-file", self.admin_token_file, *tls, *args, check=check
        )

    def audit(self, limit: int = 10_000) -> list[dict[str, Any]]:
        """The audit log, through ``keyservice audit --json``."""
        return json.loads(self.admin_cli("audit", "--json", "--limit", limit).stdout)["records"]

    def token(self, principal: str) -> str:
        with closing(self.admin()) as admin:
            return admin.create_token(principal)

    def grant(self, principal: str, kid: str, until: Any = None, max_uses: int | None = None) -> dict[str, Any]:
        with closing(self.admin()) as admin:
            return admin.grant(principal, kid, until, max_uses)

    # --- the consumer's side

    def provider(self, token: str | None, **options: Any) -> KeyServiceProvider:
        options.setdefault("retries", 0)
        options.setdefault("timeout", 10.0)
        return KeyServiceProvider([self.url], token, verify=self.verify, **options)


def tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "embed.weight": rng.standard_normal((4, 3)).astype(np.float32),
        "layer.bias": np.arange(5, dtype=np.int64),
    }


@dataclass
class Published:
    path: Path
    kid: str
    tensors: dict[str, np.ndarray]
    master: pc.MasterKey
    signer: pc.SigningKey


def publish(
    server: Server | None,
    directory: Path,
    kid: str,
    *,
    remote_policy: str | None = None,
    signer: pc.SigningKey | None = None,
    registered_publisher: pc.VerifyKey | None = None,
    key_service: str | None = None,
    register: bool = True,
    metadata: dict[str, str] | None = None,
    seed: int = 0,
) -> Published:
    """Encrypt a small model naming ``key_service`` (default: the server) and register its master key there."""
    master = pc.generate_master_key(kid=kid)
    signer = signer or pc.generate_signing_key(kid=f"{kid}-publisher")
    values = tensors(seed)
    path = directory / f"{kid}.safetensors"
    config: dict[str, Any] = {
        "enc_key": master.to_jwk(),
        "sign_key": signer.to_jwk(),
        "key_service": key_service or (server.url if server else None),
    }
    if remote_policy is not None:
        config["policy"] = {"remote": remote_policy}
    ct_np.save_file(values, path, metadata=metadata, config=config)
    if register and server is not None:
        with closing(server.admin()) as admin:
            admin.register_model(kid, registered_publisher or signer.verify_key, master)
    return Published(path, kid, values, master, signer)


def load(published: Published | Path, provider: Any, claims: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    path = published.path if isinstance(published, Published) else published
    return ct_np.load_file(path, config=pc.LoadOptions(providers=[provider], policy_input=claims or {}))


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert_same_tensors(want, got)


def header_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    return data[8 : 8 + size]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def self_signed_cert(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A self-signed certificate for ``host`` (an IP address SAN) and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    os.chmod(key_path, 0o600)
    return cert_path, key_path
