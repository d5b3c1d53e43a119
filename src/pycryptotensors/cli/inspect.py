"""``inspect`` (what a file holds; no keys) and ``verify`` (signature, and with --deep every tag/digest)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..reading.inspect import describe_file, verify_file
from ..writing.convert import SUFFIX
from .common import add_key_options, add_output_options, emit, load_options

INSPECT_HELP = """\
Show what a file holds: its tensors (dtype, shape, which are encrypted), the algorithm and format version,
the key ids and signer, the policy and our extensions. Needs no key and decrypts nothing; the signature is
not checked (that is 'verify').

example:
  pycryptotensors inspect model.safetensors --json
"""

VERIFY_HELP = """\
Check a file's (or a model directory's) header signature against the keys you trust; with --deep, also read
and authenticate every encrypted chunk and every signed digest of an unencrypted tensor (needs the master
key). Plaintext only passes through memory: nothing is written. Exit code 0 when everything verifies.

examples:
  pycryptotensors verify model.ct --trust acme.pub.jwk
  pycryptotensors verify ./llama-enc --deep --key master.jwk --trust acme.pub.jwk --json
"""


def _human(info: dict[str, Any]) -> str:
    lines = [
        f"{info['path']}: {info['format']}, {info['size']} bytes, {len(info['tensors'])} tensors "
        f"({info['encrypted_tensors']} encrypted)"
    ]
    crypto = info["crypto"]
    if crypto is not None:
        lines.append(f"  version {crypto['version']}, {crypto['algorithm']}, chunk size {crypto['chunk_size']}")
        lines.append(f"  master key id {crypto['master_key']['kid']}, signer key id {crypto['signer']['kid']}")
        for role in ("master_key", "signer"):
            if crypto[role]["jku"]:
                lines.append(f"  {role} jku {crypto[role]['jku']}")
        local = "default (allow)" if crypto["policy"]["local_is_default"] else "custom (see --json)"
        lines.append(f"  local policy: {local}")
        for name, ext in crypto["extensions"].items():
            lines.append(f"  extension {name}: {ext}")
    if info["metadata"]:
        lines.append(f"  metadata: {info['metadata']}")
    width = max((len(t["name"]) for t in info["tensors"]), default=0)
    for t in info["tensors"]:
        mark = "encrypted" if t["encrypted"] else "plain"
        lines.append(f"  {t['name']:<{width}}  {t['dtype']:<7} {t['shape']!s:<20} {mark}")
    return "\n".join(lines)


def run_inspect(args: argparse.Namespace) -> int:
    info = describe_file(args.file)
    emit(args, info, _human(info))
    return 0


def run_verify(args: argparse.Namespace) -> int:
    options = load_options(args)
    target = Path(args.path)
    files = sorted(target.rglob("*" + SUFFIX)) if target.is_dir() else [target]
    reports = [verify_file(f, options, deep=args.deep) for f in files]
    checked = sum(r["bytes_authenticated"] for r in reports)
    what = f"signature and {checked} bytes of tensors" if args.deep else "signature"
    emit(args, {"files": reports}, f"verified {len(reports)} file(s): {what} OK")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    ins = commands.add_parser(
        "inspect", help="show what a file holds (no keys needed)", description=INSPECT_HELP, formatter_class=fmt
    )
    ins.add_argument("file", help="a CryptoTensors or safetensors file")
    add_output_options(ins)
    ins.set_defaults(run=run_inspect)

    ver = commands.add_parser(
        "verify",
        help="check signatures (and with --deep every tag and digest)",
        description=VERIFY_HELP,
        formatter_class=fmt,
    )
    ver.add_argument("path", help="a file or a model directory")
    ver.add_argument("--deep", action="store_true", help="also authenticate all tensor data (needs the master key)")
    add_key_options(ver)
    add_output_options(ver)
    ver.set_defaults(run=run_verify)
