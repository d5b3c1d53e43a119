"""``serve`` (run the key service) and ``keyservice`` (the publisher's administration of it)."""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import re
from pathlib import Path
from typing import Any

from ..errors import ConfigError, CryptoTensorsError
from ..keys.files import write_key_file, write_secret_file
from ..keys.jwk import MasterKey, SigningKey, VerifyKey, parse_jwk
from .common import add_output_options, emit, one_key, refuse_existing, warn

URL_ENV = "PYCRYPTOTENSORS_KEYSERVICE_URL"
ADMIN_TOKEN_ENV = "PYCRYPTOTENSORS_ADMIN_TOKEN"
NAME_GRAMMAR = r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}"  # as keyservice.refusal (not imported: it needs no extra)

SERVE_HELP = """\
Run the key service: consumers obtain a file's data keys here, after the service authenticates them, verifies
the file's header against the publisher key registered for it, checks their grant and evaluates the file's
remote policy. Master keys never leave it. State lives in STATE (SQLite, master keys encrypted under
STATE/root.key) or in OpenBao / Vault (--backend openbao) for several stateless replicas. On first start an
admin token is written to STATE/admin.token (0600): the publisher's 'keyservice' commands need it. Delete the
file and restart to replace it (the old one stops working). A banner on stderr says where it listens, and an
access log (no tokens, no bodies) follows. Needs the [server] extra: pip install 'pycryptotensors[server]'.

exit codes: 0 stopped, 1 cannot start (port in use, back end unreachable), 2 invalid options.

examples:
  pycryptotensors serve --state /var/lib/ct-keys --port 8443 --tls-cert cert.pem --tls-key key.pem
  BAO_TOKEN=... pycryptotensors serve --state ./ks --backend openbao --bao-url http://127.0.0.1:8200
"""

ADMIN_HELP = f"""\
Administer a key service (publisher side). The URL comes from --url or {URL_ENV}, the admin token from
--admin-token-file or {ADMIN_TOKEN_ENV}.

  register --kid KID --publisher-key P.pub.jwk --master-key M.jwk   register a model's master key
  register --kid KID --publisher-key P.pub.jwk --generate M.jwk      let the service make it (saved once)
  models list                                                         registered key ids
  token create PRINCIPAL [--out FILE]                                 a client credential (shown once)
  token revoke PRINCIPAL | token revoke --id TOKEN_ID                 revoke a principal's tokens, or one
  tokens list                                                         token ids and principals (never tokens)
  grant PRINCIPAL KID [--until 2027-01-01] [--max-uses N]             allow a principal a key id
  grant show GRANT_ID | grants list [--principal P] [--kid K]         inspect grants
  revoke-grant GRANT_ID                                               revoke a grant at once
  admin create NAME --out FILE | admin rotate | admin revoke NAME     admin tokens (each audited by name)
  admins list
  audit [--limit N] [--principal P] [--kid K] [--since DATE]          who did what, when, and why

Principal and admin names: letters, digits, '.', '_', '@', '-' (first a letter or digit), at most 128.

example:
  pycryptotensors keyservice --url https://keys.example:8443 --admin-token-file ks/admin.token \\
      grant alice acme-2026 --until 2027-01-01 --max-uses 100
"""


class MissingExtraError(CryptoTensorsError):
    """An optional dependency group is not installed (exit code 1)."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions as written, and each option's default in its help (when it has one)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def need_extra(*modules: str) -> None:
    missing = []
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise MissingExtraError(
            f"the key service needs the [server] extra (missing: {', '.join(missing)}); "
            "install it with: pip install 'pycryptotensors[server]'"
        )


def moment(text: str | None, option: str) -> float | None:
    """An ISO 8601 date or time (UTC when no zone is given) or a unix time; anything else, such as 'tomorrow',
    is a usage error (exit 2), found before the service is contacted."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        value = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"{option} {text!r} is not an ISO 8601 date (e.g. 2027-01-01 or 2027-01-01T00:00:00+00:00) or a unix time"
        ) from None
    return (value if value.tzinfo else value.replace(tzinfo=datetime.UTC)).timestamp()


def name(text: str, what: str) -> str:
    """A new principal or admin name must match the service's grammar (checked here too, for exit code 2)."""
    if not re.fullmatch(NAME_GRAMMAR, text):
        raise ConfigError(f"{what} {text!r} must match {NAME_GRAMMAR} (letters, digits, '.', '_', '@', '-')")
    return text


def positive(text: str | None, option: str) -> int | None:
    """A count of at least 1: ``--max-uses 0`` is refused (exit 2), as a grant of no use releases nothing."""
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{option} {text!r} is not a positive integer (a grant of 0 uses releases nothing)")
    return value


def run_serve(args: argparse.Namespace) -> int:
    need_extra("starlette", "uvicorn", "jwt", *(["hvac"] if args.backend == "openbao" else []))
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ConfigError("give both --tls-cert and --tls-key, or neither")
    for option in ("max_connections", "max_connections_per_source"):
        if getattr(args, option) < 1:
            raise ConfigError(f"--{option.replace('_', '-')} must be at least 1")
    attestation_options = (args.attestation_jwks, args.attestation_issuer, args.attestation_audience)
    if any(attestation_options) and not all(attestation_options):
        raise ConfigError(
            "attestation needs --attestation-jwks, --attestation-issuer and --attestation-audience together "
            "(without an audience, a token minted for any other service would be accepted)"
        )
    from ..keyservice.app import Limits
    from ..keyservice.attestation import JwtAttestationVerifier
    from ..keyservice.server import ServeConfig, serve

    attestation = None
    if args.attestation_jwks:
        attestation = JwtAttestationVerifier.from_files(
            args.attestation_issuer, args.attestation_jwks, args.attestation_audience, args.attestation_nonce_claim
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
            Limits(args.max_body, args.max_json_depth, args.body_timeout, args.failures_per_minute),
            args.header_timeout,
            args.keep_alive,
            args.max_connections,
            args.access_log or ("off" if args.quiet else "text"),
            max_connections_per_source=args.max_connections_per_source,
            quiet=args.quiet,
        )
    )
    return 0


def _client(args: argparse.Namespace) -> Any:
    from ..keyservice.admin import AdminClient

    url = args.url or os.environ.get(URL_ENV)
    if not url:
        raise ConfigError(f"the key service's URL is needed: --url URL or {URL_ENV}")
    token = os.environ.get(ADMIN_TOKEN_ENV)
    if args.admin_token_file:
        token = Path(args.admin_token_file).read_text(encoding="utf-8").strip()
    if not token:
        raise ConfigError(f"an admin token is needed: --admin-token-file FILE or {ADMIN_TOKEN_ENV}")
    return AdminClient(url, token, verify=args.ca_file or True)


def _write_secret(path: str, text: str) -> None:
    """A token file, through the one secret writer: 0600, atomic, never through a symbolic link."""
    write_secret_file(path, text + "\n")


def _when(value: float | None) -> str:
    return "-" if value is None else f"{datetime.datetime.fromtimestamp(value, datetime.UTC):%Y-%m-%d %H:%M:%S}"


def _shown(value: Any) -> str:
    """A value from the service for one line of text: control and other unprintable characters escaped, so that
    a name or key id (a client's header, a principal made before the name grammar) cannot forge lines."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(value))


def _table(rows: list[list[Any]], empty: str) -> str:
    if not rows:
        return empty
    rows = [[_shown(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def _grant_text(g: dict[str, Any]) -> str:
    uses = f"{g['uses']}/{g['max_uses'] if g['max_uses'] is not None else 'unlimited'}"
    state = "revoked" if g["revoked"] else "active"
    who = f"{_shown(g['principal'])} -> {_shown(g['kid'])}"
    return f"grant {_shown(g['id'])}: {who}, until {_when(g['not_after'])}, uses {uses}, {state}"


def _token(args: argparse.Namespace, client: Any) -> None:
    if args.token_action == "list":
        tokens = client.tokens()
        rows = [["ID", "PRINCIPAL", "CREATED", "REVOKED"]] * bool(tokens) + [
            [t["id"], t["principal"], _when(t["created"]), _when(t["revoked"])] for t in tokens
        ]
        emit(args, {"tokens": tokens}, _table(rows, "(no tokens)"), data=True)
    elif args.token_action == "create":
        if not args.principal:
            raise ConfigError("token create needs a PRINCIPAL")
        if args.out:
            refuse_existing(Path(args.out), args.force)  # before the service makes a token
        token = client.create_token(name(args.principal, "principal"))
        if args.out:
            _write_secret(args.out, token)
            emit(
                args,
                {"principal": args.principal, "token_file": args.out},
                f"token for {args.principal} written to {args.out} (0600)",
            )
        else:
            emit(args, {"principal": args.principal, "token": token}, token, data=True)
    else:
        if bool(args.principal) == bool(args.id):
            raise ConfigError("token revoke needs a PRINCIPAL or --id TOKEN_ID (one of them)")
        if args.id:
            answer = client.revoke_token(args.id)
            emit(args, answer, f"revoked token {args.id} of {answer['principal']}")
        else:
            count = client.revoke_tokens(args.principal)
            emit(args, {"principal": args.principal, "revoked": count}, f"revoked {count} token(s) of {args.principal}")


def _grant(args: argparse.Namespace, client: Any) -> None:
    words = list(args.words)
    if words[:1] == ["show"] and len(words) == 2:
        grant = client.get_grant(words[1])
        emit(args, grant, _grant_text(grant), data=True)
        return
    if words[:1] == ["list"] and len(words) == 1:
        _grants(args, client)
        return
    if words[:1] == ["create"]:
        words = words[1:]
    if len(words) != 2:
        raise ConfigError("usage: grant PRINCIPAL KID [--until DATE] [--max-uses N] | grant show ID | grant list")
    principal, kid = name(words[0], "principal"), words[1]
    grant = client.grant(principal, kid, moment(args.until, "--until"), positive(args.max_uses, "--max-uses"))
    for warning in grant.get("warnings", []):
        warn(warning)
    emit(args, grant, f"grant {grant['id']}: {principal} may obtain {kid}")


def _grants(args: argparse.Namespace, client: Any) -> None:
    grants = client.grants(getattr(args, "principal", None), getattr(args, "kid", None))
    emit(args, {"grants": grants}, "\n".join(_grant_text(g) for g in grants) or "(no grants)", data=True)


def _admin(args: argparse.Namespace, client: Any) -> None:
    if args.admin_action == "list":
        admins = client.admins()
        rows = [["NAME", "TOKEN ID", "CREATED", "REVOKED"]] * bool(admins) + [
            [a["name"], a["id"], _when(a["created"]), _when(a["revoked"])] for a in admins
        ]
        emit(args, {"admins": admins}, _table(rows, "(no admins)"), data=True)
    elif args.admin_action == "create":
        if not args.name or not args.out:
            raise ConfigError("admin create needs a NAME and --out FILE (the token is shown only once)")
        answer = client.create_admin(name(args.name, "admin name"))
        _write_secret(args.out, answer["token"])
        emit(args, {"name": args.name, "token_file": args.out}, f"admin token for {args.name} written to {args.out}")
    elif args.admin_action == "rotate":
        out = args.out or args.admin_token_file
        if not out:
            raise ConfigError("admin rotate needs --out FILE (or --admin-token-file, which it then replaces)")
        answer = client.rotate_admin()
        _write_secret(out, answer["token"])
        emit(args, {"name": answer["name"], "token_file": out}, f"new admin token for {answer['name']} in {out}")
    else:
        if not args.name:
            raise ConfigError("admin revoke needs a NAME")
        answer = client.revoke_admin(args.name)
        emit(args, answer, f"revoked {answer['revoked']} admin token(s) of {args.name}")


def _audit(args: argparse.Namespace, client: Any) -> None:
    records = client.audit(args.limit, args.principal, args.kid, moment(args.since, "--since"))
    lines = []
    for r in records:
        who = _shown(r.get("actor") or r["principal"] or "-")
        count = f" (x{r['count']})" if r.get("count", 1) > 1 else ""
        lines.append(
            f"{_when(r['time'])}  {_shown(r['decision']):<5}  {_shown(r.get('action', 'release')):<13} {who:<12} "
            f"{_shown(r['kid'] or '-'):<14} {_shown(r['client'] or '-'):<15} {_shown(r['reason'])}{count}"
        )
    emit(args, {"records": records}, "\n".join(lines) or "(no records)", data=True)


def run_admin(args: argparse.Namespace) -> int:
    client = _client(args)
    try:
        if args.action == "register":
            publisher = parse_jwk(one_key(args.publisher_key, (VerifyKey, SigningKey), "publisher key").to_jwk())
            publisher = publisher.verify_key if isinstance(publisher, SigningKey) else publisher
            master = one_key(args.master_key, MasterKey, "master key") if args.master_key else None
            if master is None and not args.generate:
                raise ConfigError("give --master-key FILE, or --generate FILE to let the service make one")
            answer = client.register_model(args.kid, publisher, master, args.model_id, replace=args.replace)
            if "master_key" in answer:
                write_key_file(args.generate, parse_jwk(answer.pop("master_key")))  # 0600
                answer["master_key_file"] = args.generate
            emit(args, answer, f"registered key id {args.kid} (model {answer['model_id']})")
        elif args.action == "models":
            models = client.models()
            rows = [["KID", "MODEL", "REGISTERED"]] * bool(models) + [
                [m["kid"], m["model_id"], _when(m["created"])] for m in models
            ]
            emit(args, {"models": models}, _table(rows, "(no models)"), data=True)
        elif args.action == "token":
            _token(args, client)
        elif args.action == "tokens":
            args.token_action = "list"
            _token(args, client)
        elif args.action == "grant":
            _grant(args, client)
        elif args.action == "grants":
            _grants(args, client)
        elif args.action == "revoke-grant":
            client.revoke_grant(args.grant_id)
            emit(args, {"revoked": args.grant_id}, f"revoked grant {args.grant_id}")
        elif args.action in ("admin", "admins"):
            if args.action == "admins":
                args.admin_action = "list"
            _admin(args, client)
        else:
            _audit(args, client)
    finally:
        client.close()
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fmt = HelpFormatter
    serve = commands.add_parser("serve", help="run the key service", description=SERVE_HELP, formatter_class=fmt)
    serve.add_argument("--state", required=True, metavar="DIR", help="state directory (made or set 0700)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8443, help="port to listen on")
    serve.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate")
    serve.add_argument("--tls-key", metavar="PEM", help="... and this private key")
    serve.add_argument("--backend", choices=["sqlite", "openbao"], default="sqlite", help="where state lives")
    serve.add_argument("--bao-url", help="OpenBao / Vault address (openbao back end)")
    serve.add_argument("--bao-token-file", metavar="FILE", help="OpenBao token (default: BAO_TOKEN)")
    serve.add_argument("--bao-mount", default="secret", help="KV v2 mount")
    serve.add_argument("--bao-prefix", default="pycryptotensors", help="path prefix inside the mount")
    serve.add_argument("--attestation-jwks", metavar="FILE", help="public keys of a trusted attestation service")
    serve.add_argument("--attestation-issuer", help="the attestation tokens' expected issuer (iss)")
    serve.add_argument(
        "--attestation-audience", help="the tokens' expected audience (aud); required with --attestation-jwks"
    )
    serve.add_argument(
        "--attestation-nonce-claim", default="nonce", help="the claim that must carry the request's binding"
    )
    serve.add_argument(
        "--max-body", type=int, default=8 * 1024 * 1024, metavar="BYTES", help="largest request body (413 beyond)"
    )
    serve.add_argument("--max-json-depth", type=int, default=32, metavar="N", help="deepest JSON nesting (400 beyond)")
    serve.add_argument(
        "--header-timeout", type=float, default=10.0, metavar="S", help="seconds for a request head to arrive"
    )
    serve.add_argument(
        "--body-timeout", type=float, default=10.0, metavar="S", help="seconds for a request body to arrive"
    )
    serve.add_argument("--keep-alive", type=float, default=5.0, metavar="S", help="seconds an idle connection is kept")
    serve.add_argument("--max-connections", type=int, default=256, metavar="N", help="connections at once (503 beyond)")
    serve.add_argument(
        "--max-connections-per-source",
        type=int,
        default=64,
        metavar="N",
        help="open connections from one client address (more are closed at once)",
    )
    serve.add_argument(
        "--failures-per-minute",
        type=float,
        default=60.0,
        metavar="N",
        help="refused requests allowed per source address and per token (burst N, then 429); 0: no limit",
    )
    serve.add_argument(
        "--access-log", choices=["text", "json", "off"], help="access log on stderr (default: text; off with -q)"
    )
    serve.set_defaults(run=run_serve)

    admin = commands.add_parser(
        "keyservice",
        help="administer a key service: models, tokens, grants, admins, audit",
        description=ADMIN_HELP,
        formatter_class=fmt,
    )
    admin.add_argument("--url", help=f"the key service's base URL (default: {URL_ENV})")
    admin.add_argument(
        "--admin-token-file", metavar="FILE", help=f"file holding the admin token (or {ADMIN_TOKEN_ENV})"
    )
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
    mod = action("models", "list registered models (key ids, no key material)", "models list")
    mod.add_argument("models_action", choices=["list"])
    tok = action("token", "create, revoke or list client tokens", "token create alice --out alice.token")
    tok.add_argument("token_action", choices=["create", "revoke", "list"])
    tok.add_argument("principal", nargs="?", help="whose token (any name may be revoked, even 'team/alice')")
    tok.add_argument("--id", help="revoke: the one token with this id (from 'tokens list')")
    tok.add_argument("--out", metavar="FILE", help="write the new token to FILE (0600) instead of printing it")
    tok.add_argument("--force", action="store_true", help="replace an existing --out FILE")
    toks = action("tokens", "list client tokens (ids and principals; never the tokens)", "tokens list")
    toks.add_argument("tokens_action", choices=["list"])
    gra = action(
        "grant",
        "grant a principal a key id (or: grant show ID, grant list)",
        "grant alice acme-2026 --until 2027-01-01 --max-uses 100",
    )
    gra.add_argument("words", nargs="+", metavar="PRINCIPAL KID", help="who and which key id; or 'show GRANT_ID'")
    gra.add_argument("--until", help="expiry: ISO 8601 (UTC when no zone is given) or a unix time")
    gra.add_argument("--max-uses", help="how many releases (at least 1; no limit when omitted)")
    gras = action("grants", "list grants", "grants list --principal alice")
    gras.add_argument("grants_action", choices=["list"])
    gras.add_argument("--principal", help="only this principal's grants")
    gras.add_argument("--kid", help="only grants of this key id")
    rev = action("revoke-grant", "revoke a grant at once", "revoke-grant 9f2c61d0a1b2c3d4")
    rev.add_argument("grant_id")
    adm = action("admin", "create, rotate, revoke or list admin tokens", "admin create carol --out carol.admin.token")
    adm.add_argument("admin_action", choices=["create", "rotate", "revoke", "list"])
    adm.add_argument("name", nargs="?", help="the admin's name (create, revoke)")
    adm.add_argument(
        "--out", metavar="FILE", help="where the new token goes (0600); rotate: default --admin-token-file"
    )
    adms = action("admins", "list admin tokens (names and ids)", "admins list")
    adms.add_argument("admins_action", choices=["list"])
    aud = action(
        "audit", "show the audit log: who did what, when, and why", "audit --principal alice --since 2026-12-01 --json"
    )
    aud.add_argument("--limit", type=int, default=100, help="the newest N matching records")
    aud.add_argument("--principal", help="records where this name is the client, the actor or the target")
    aud.add_argument("--kid", help="records about this key id")
    aud.add_argument("--since", help="records from this time on (ISO 8601 or unix time)")
    for sub in (reg, mod, tok, toks, gra, gras, rev, adm, adms, aud):  # --json may also follow the action
        sub.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    admin.set_defaults(run=run_admin)
