"""``pycryptotensors keygen``: master keys and signing key pairs as JWK files."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..format.algorithms import ALGORITHMS
from ..keys.files import write_key_file
from ..keys.jwk import generate_master_key, generate_signing_key
from .common import add_force_option, add_output_options, emit, refuse_existing

HELP = """\
Make a key and write it as a JWK file (RFC 7517; '--dialect reference' for the reference library's variant).

  master   a symmetric key that wraps each tensor's data key; keep it secret, give it to whoever may load
           the model (or to the key service). Written with mode 0600, atomically, never through a link.
  signing  an Ed25519 key pair: the private half (0600) signs headers; the public half (OUT.pub.jwk, 0644)
           is what consumers pin with --trust, so that only your files load.

examples:
  pycryptotensors keygen master keys/master.jwk --kid acme-2026
  pycryptotensors keygen signing keys/acme.jwk            # writes keys/acme.jwk and keys/acme.pub.jwk
"""


def public_path(path: Path) -> Path:
    return path.with_name(path.name[: -len(".jwk")] + ".pub.jwk") if path.name.endswith(".jwk") else Path(f"{path}.pub")


def run(args: argparse.Namespace) -> int:
    out = Path(args.output)
    targets = [out] if args.kind == "master" else [out, public_path(out)]
    for target in targets:  # checked together: a key pair is never half replaced
        refuse_existing(target, args.force)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.kind == "master":
        key = generate_master_key(args.alg, args.kid)
        write_key_file(out, key, args.dialect)
        result = {"kind": "master", "kid": key.kid, "alg": key.alg.name, "private": str(out)}
    else:
        signer = generate_signing_key(args.kid)
        write_key_file(out, signer, args.dialect)
        write_key_file(targets[1], signer.verify_key, args.dialect)
        result = {
            "kind": "signing",
            "kid": signer.kid,
            "alg": "ed25519",
            "private": str(out),
            "public": str(targets[1]),
        }
    lines = [f"wrote {result['kind']} key {result['kid']} ({result['alg']}) to {out} (mode 0600)"]
    if "public" in result:
        lines.append(f"wrote its public key to {result['public']}: give this one to consumers")
    emit(args, result, "\n".join(lines))
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "keygen",
        help="make a master key or a signing key pair (JWK files)",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("kind", choices=["master", "signing"], help="which key to make")
    parser.add_argument("output", metavar="OUT", help="the key file to write (…/name.jwk)")
    parser.add_argument("--kid", help="key id written in the key and in files it protects (default: random)")
    parser.add_argument(
        "--alg", default="aes256gcm", choices=sorted(ALGORITHMS), help="master key algorithm (default aes256gcm)"
    )
    parser.add_argument(
        "--dialect",
        default="rfc",
        choices=["rfc", "reference"],
        help="JWK dialect: RFC 7517 (default) or the reference library's",
    )
    add_force_option(parser, "existing key files (the new file is written 0600 whatever the old one's mode)")
    add_output_options(parser)
    parser.set_defaults(run=run)
