"""``serve`` (run the key service) and ``keyservice`` (the publisher's administration of it)."""

from __future__ import annotations

import argparse
import datetime
import os
from pathlib import Path

from ..keys.files import write_key_file
from ..keys.jwk import MasterKey, SigningKey, VerifyKey, parse_jwk
from .common import add_output_options, emit, one_key

SERVE_HELP = """\
Run the key service: consumers obtain a file's data keys here, after the service authenticates them, verifies
the file's header against the publisher key registered for it, checks their grant and evaluates the file's
remote policy. Master keys never leave it. State lives in STATE (SQLite, master keys encrypted under
STATE/root.key) or in OpenBao / Vault (--backend openbao) for several stateless replicas. On first start an
admin token is written to STATE/admin.token (0600): the publisher's 'keyservice' commands need it.

examples:
  pycryptotensors serve --state /var/lib/ct-keys --port 8443 --tls-cert cert.pem --tls-key key.pem
  BAO_TOKEN=... pycryptotensors serve --state ./ks --backend openbao --bao-url http://127.0.0.1:8200
"""

ADMIN_HELP = """\
Administer a key service (publisher side). The admin token comes from --admin-token-file or
PYCRYPTOTENSORS_ADMIN_TOKEN.

  register --kid KID --publisher-key P.pub.jwk --master-key M.jwk   register a model's master key
  register --kid KID --publisher-key P.pub.jwk --generate M.jwk      let the service make it (saved once)
  token create PRINCIPAL [--out FILE]                                 a client credential (shown once)
  token revoke PRINCIPAL                                              revoke all of a principal's tokens
  grant PRINCIPAL KID [--until 2027-01-01] [--max-uses N]             allow a principal a key id
  revoke-grant GRANT_ID                                               revoke a grant at once
  audit [--limit N]                                                   who got which key, when, and why

example:
  pycryptotensors keyservice --url https://keys.example:8443 --admin-token-file ks/admin.token \\
      grant alice acme-2026 --until 2027-01-01 --max-uses 100
"""


def run_serve(args: argparse.Namespace) -> int:
    from ..keyservice.attestation import JwtAttestationVerifier
    from ..keyservice.server import ServeConfig, serve

    attestation = None
    if args.attestation_jwks:
        attestation = JwtAttestationVerifier.from_files(
            args.attestation_issuer, args.attestation_jwks, args.attestation_audience
        )
    bao_token = Path(args.bao_token_file).read_text().strip() if args.bao_token_file else os.environ.get("BAO_TOKEN")
    serve(
        ServeConfig(
            Path(args.state),
            args.host,
            args.port,
            args.tls_cert,
            args.tls_key,
            args.backend,
            args.bao_url,
            bao_token,
            args.bao_mount,
            args.bao_prefix,
            attestation,
        )
    )
    return 0


def _client(args: argparse.Namespace):
    from ..keyservice.client import AdminClient

    token = os.environ.get("PYCRYPTOTENSORS_ADMIN_TOKEN")
    if args.admin_token_file:
        token = Path(args.admin_token_file).read_text(encoding="utf-8").strip()
    if not token:
        raise ValueError("an admin token is needed: --admin-token-file or PYCRYPTOTENSORS_ADMIN_TOKEN")
    return AdminClient(args.url, token, verify=args.ca_file or True)


def run_admin(args: argparse.Namespace) -> int:
    client = _client(args)
    try:
        if args.action == "register":
            publisher = parse_jwk(one_key(args.publisher_key, (VerifyKey, SigningKey), "publisher key").to_jwk())
            publisher = publisher.verify_key if isinstance(publisher, SigningKey) else publisher
            master = one_key(args.master_key, MasterKey, "master key") if args.master_key else None
            if master is None and not args.generate:
                raise ValueError("give --master-key FILE, or --generate FILE to let the service make one")
            answer = client.register_model(args.kid, publisher, master, args.model_id, replace=args.replace)
            if "master_key" in answer:
                write_key_file(args.generate, parse_jwk(answer.pop("master_key")))  # 0600
                answer["master_key_file"] = args.generate
            emit(args, answer, f"registered key id {args.kid} (model {answer['model_id']})")
        elif args.action == "token":
            if args.token_action == "create":
                token = client.create_token(args.principal)
                if args.out:
                    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                    with os.fdopen(fd, "w") as f:
                        f.write(token + "\n")
                    emit(
                        args,
                        {"principal": args.principal, "token_file": args.out},
                        f"token for {args.principal} written to {args.out} (0600)",
                    )
                else:
                    emit(args, {"principal": args.principal, "token": token}, token)
            else:
                count = client.revoke_tokens(args.principal)
                emit(
                    args,
                    {"principal": args.principal, "revoked": count},
                    f"revoked {count} token(s) of {args.principal}",
                )
        elif args.action == "grant":
            grant = client.grant(args.principal, args.kid, args.until, args.max_uses)
            emit(args, grant, f"grant {grant['id']}: {args.principal} may obtain {args.kid}")
        elif args.action == "revoke-grant":
            client.revoke_grant(args.grant_id)
            emit(args, {"revoked": args.grant_id}, f"revoked grant {args.grant_id}")
        else:
            records = client.audit(args.limit)
            lines = [
                f"{datetime.datetime.fromtimestamp(r['time'], datetime.UTC):%Y-%m-%d %H:%M:%S}  {r['decision']:<5}  "
                f"{r['principal'] or '-':<12} {r['kid'] or '-':<14} {r['reason']}"
                for r in records
            ]
            emit(args, {"records": records}, "\n".join(lines) or "(no records)")
    finally:
        client.close()
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    serve = commands.add_parser("serve", help="run the key service", description=SERVE_HELP, formatter_class=fmt)
    serve.add_argument("--state", required=True, metavar="DIR", help="state directory (created 0700)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8443)
    serve.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate")
    serve.add_argument("--tls-key", metavar="PEM", help="... and this private key")
    serve.add_argument("--backend", choices=["sqlite", "openbao"], default="sqlite")
    serve.add_argument("--bao-url", help="OpenBao / Vault address (openbao back end)")
    serve.add_argument("--bao-token-file", metavar="FILE", help="OpenBao token (default: BAO_TOKEN)")
    serve.add_argument("--bao-mount", default="secret", help="KV v2 mount (default secret)")
    serve.add_argument("--bao-prefix", default="pycryptotensors", help="path prefix inside the mount")
    serve.add_argument("--attestation-jwks", metavar="FILE", help="public keys of a trusted attestation service")
    serve.add_argument("--attestation-issuer", help="the attestation tokens' expected issuer (iss)")
    serve.add_argument("--attestation-audience", help="the attestation tokens' expected audience (aud)")
    serve.set_defaults(run=run_serve)

    admin = commands.add_parser(
        "keyservice",
        help="administer a key service: models, tokens, grants, audit",
        description=ADMIN_HELP,
        formatter_class=fmt,
    )
    admin.add_argument("--url", required=True, help="the key service's base URL")
    admin.add_argument("--admin-token-file", metavar="FILE", help="file holding the admin token")
    admin.add_argument("--ca-file", metavar="PEM", help="CA bundle to verify the service's TLS certificate")
    add_output_options(admin)
    actions = admin.add_subparsers(dest="action", metavar="ACTION", required=True)
    base = "pycryptotensors keyservice --url https://keys.example:8443 --admin-token-file ks/admin.token"

    def action(name: str, summary: str, example: str) -> argparse.ArgumentParser:
        return actions.add_parser(
            name, help=summary, formatter_class=fmt, description=f"{summary}.\n\nexample:\n  {base} \\\n      {example}"
        )

    reg = action(
        "register",
        "register a model's master key and publisher key",
        "register --kid acme-2026 --publisher-key acme.pub.jwk --master-key acme-2026.jwk",
    )
    reg.add_argument("--kid", required=True, help="the key id files name in __crypto_keys__.enc.kid")
    reg.add_argument("--publisher-key", required=True, metavar="FILE", help="the publisher's public signing key")
    reg.add_argument("--master-key", metavar="FILE", help="push this master key")
    reg.add_argument("--generate", metavar="FILE", help="let the service make the master key; save it here (0600)")
    reg.add_argument("--model-id", help="a name for the model (default: the kid)")
    reg.add_argument(
        "--replace",
        action="store_true",
        help="overwrite an existing registration (files under the old master key stop loading)",
    )
    tok = action("token", "create or revoke client tokens", "token create alice --out alice.token")
    tok.add_argument("token_action", choices=["create", "revoke"])
    tok.add_argument("principal")
    tok.add_argument("--out", metavar="FILE", help="write the new token to FILE (0600) instead of printing it")
    gra = action("grant", "grant a principal a key id", "grant alice acme-2026 --until 2027-01-01 --max-uses 100")
    gra.add_argument("principal")
    gra.add_argument("kid")
    gra.add_argument("--until", help="expiry, ISO 8601 (e.g. 2027-01-01T00:00:00+00:00)")
    gra.add_argument("--max-uses", type=int, help="how many releases")
    rev = action("revoke-grant", "revoke a grant at once", "revoke-grant 9f2c61d0a1b2c3d4")
    rev.add_argument("grant_id")
    aud = action("audit", "show the audit log: who obtained which key, when, and why", "audit --limit 20 --json")
    aud.add_argument("--limit", type=int, default=100)
    for action in (reg, tok, gra, rev, aud):  # --json may also follow the action
        action.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    admin.set_defaults(run=run_admin)
