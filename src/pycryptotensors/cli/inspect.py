"""``inspect`` (what a file holds; no keys) and ``verify`` (signature, and with --deep every tag/digest)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ..config import LoadOptions
from ..errors import CryptoTensorsError, ManifestError, MissingKeyError
from ..format.crypto_header import KeySlot
from ..model.check import check_unsigned_folder, verify_folder
from ..model.folder import MANIFEST_NAME, is_weight_file, list_files
from ..model.manifest import index_shards, read_manifest_file, signer_kid
from ..reading.inspect import describe_file, verify_file
from ..reading.source import is_url
from ..writing.convert import SUFFIX
from .common import add_key_options, add_output_options, emit, load_options

INSPECT_HELP = """\
Show what a file holds: its tensors (dtype, shape, and whether each is encrypted: the last column, and
"encrypted" in --json), the algorithm and format version, the key ids and signer, the policy and our
extensions. A file with encrypted tensors gets a WARNING line ("warning" in --json): plain safetensors would
read their ciphertext as weights. Needs no key and decrypts nothing; the signature is not checked (that is
'verify').

example:
  pycryptotensors inspect model.safetensors --json
"""

VERIFY_HELP = """\
Check a file's (or a model directory's) header signature against the keys you trust; with --deep, also read
and authenticate every encrypted chunk and every signed digest of an unencrypted tensor (needs the master
key). Plaintext only passes through memory: nothing is written. Exit code 0 when everything verifies.

For a model folder, its signed manifest (model.sig) is checked too: every listed file present and unchanged
(with --deep the shards are hashed as well), no shard missing or added, no unlisted file. A folder with no
file, a weight file in another format (*.bin, *.pt ...) or an index naming a missing shard fails (exit 4).

examples:
  pycryptotensors verify model.ct --trust acme.pub.jwk
  pycryptotensors verify ./llama-enc --deep --key master.jwk --trust acme.pub.jwk --json
"""


def _human(info: dict[str, Any]) -> str:
    lines = [
        f"{info['path']}: {info['format']}, {info['size']} bytes, {len(info['tensors'])} tensors "
        f"({info['encrypted_tensors']} encrypted)"
    ]
    if info["warning"]:
        lines.append(f"  WARNING: {info['warning']}")
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
    width = max([len("tensor")] + [len(t["name"]) for t in info["tensors"]])
    lines.append(f"  {'tensor':<{width}}  {'dtype':<7} {'shape':<20} data")
    for t in info["tensors"]:
        mark = "encrypted" if t["encrypted"] else "plain"  # the last word of the row, for scripts that grep
        lines.append(f"  {t['name']:<{width}}  {t['dtype']:<7} {t['shape']!s:<20} {mark}")
    return "\n".join(lines)


def run_inspect(args: argparse.Namespace) -> int:
    info = describe_file(args.file)
    emit(args, info, _human(info))
    return 0


def _verify_folder(root: Path, options: LoadOptions, deep: bool) -> dict[str, Any] | None:
    """The whole-folder part of ``verify DIR``: the signed manifest when there is one (every file present and
    unchanged, no file added; with --deep the shards hashed too), else what can be checked without one."""
    names = list_files(root)
    if not names:
        raise ManifestError(f"{root}: no file to verify (an empty model folder verifies nothing)")
    sources, trust = options.resolve()
    trust = trust.for_file(root / MANIFEST_NAME)
    if os.path.lexists(root / MANIFEST_NAME):  # as the consumer sees it: a dangling link or a FIFO is refused
        kid = signer_kid(read_manifest_file(root / MANIFEST_NAME))
        keys = sources.verify_keys(KeySlot("ed25519", kid), trust)
        if not keys:
            raise MissingKeyError(f"no publisher key to verify {root / MANIFEST_NAME}: give it with --trust or --key")
        manifest = verify_folder(root, keys, full_hash=deep)
        return {"manifest": str(root / MANIFEST_NAME), "files": len(manifest.files), "signer_kid": manifest.signer_kid}
    if trust.signers or trust.require_encryption:
        check_unsigned_folder(root)
    for name in names:
        if is_weight_file(name) and not name.endswith(SUFFIX):
            raise ManifestError(f"{root / name}: a weight file in another format, and no signed manifest")
        if name.endswith(".index.json"):
            for shard in sorted(set(index_shards(root, name).values())):
                if not (root / shard).is_file():
                    raise ManifestError(f"{root / shard}: shard named by {name} is missing")
    if not any(name.endswith(SUFFIX) for name in names):
        raise ManifestError(f"{root}: no *.safetensors shard to verify")
    return None


def run_verify(args: argparse.Namespace) -> int:
    try:
        options = load_options(args)
        target = Path(args.path)
        remote = is_url(args.path)  # one remote file (remote model folders are not supported yet)
        folder = _verify_folder(target, options, args.deep) if not remote and target.is_dir() else None
        files = [args.path] if remote else sorted(target.rglob("*" + SUFFIX)) if target.is_dir() else [target]
        reports = [verify_file(f, options, deep=args.deep) for f in files]
    except CryptoTensorsError as error:
        if args.json:  # the error as JSON on stdout too; the one line on stderr and the exit code as usual
            emit(args, {"ok": False, "error": type(error).__name__, "message": str(error)}, "")
        raise
    checked = sum(r["bytes_authenticated"] for r in reports)
    what = f"signature and {checked} bytes of tensors" if args.deep else "signature"
    signed = f"; manifest of {folder['files']} file(s) OK" if folder else ""
    result = {"ok": True, "files": reports, "manifest": folder}
    emit(args, result, f"verified {len(reports)} file(s): {what} OK{signed}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    ins = commands.add_parser(
        "inspect", help="show what a file holds (no keys needed)", description=INSPECT_HELP, formatter_class=fmt
    )
    ins.add_argument("file", help="a CryptoTensors or safetensors file, or its URL (s3://, gs://, az://, hf://, https://)")
    add_output_options(ins)
    ins.set_defaults(run=run_inspect)

    ver = commands.add_parser(
        "verify",
        help="check signatures (and with --deep every tag and digest)",
        description=VERIFY_HELP,
        formatter_class=fmt,
    )
    ver.add_argument("path", help="a file, a model directory, or a file's URL (s3://, gs://, az://, hf://, https://)")
    ver.add_argument("--deep", action="store_true", help="also authenticate all tensor data (needs the master key)")
    add_key_options(ver)
    add_output_options(ver)
    ver.set_defaults(run=run_verify)
