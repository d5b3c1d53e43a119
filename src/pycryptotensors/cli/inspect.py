"""``inspect`` (what a file holds; no keys) and ``verify`` (signature, and with --deep every tag/digest)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ..convert.files import SUFFIX
from ..errors import ManifestError, MissingKeyError
from ..format.crypto_header import KeySlot
from ..keys.access import Access, resolve
from ..model.check import check_unsigned_folder, verify_folder
from ..model.folder import MANIFEST_NAME, is_weight_file, list_files
from ..model.manifest import index_shards, read_manifest_file, signer_kid
from ..model.remote import is_folder_url
from ..reading.inspect import describe_file, describe_folder, verify_file
from ..reading.source import is_url
from .common import add_key_options, add_output_options, emit, options_from_args, progress_bar

INSPECT_HELP = """\
Show what a file holds: its tensors (dtype, shape, and whether each is encrypted: the last column, and
"encrypted" in --json), the algorithm and format version, the key ids and signer, both policies (the local
one, checked before any key is unwrapped, and the remote one a key service enforces, as Rego text) and our
extensions. A file with encrypted tensors gets a WARNING line ("warning" in --json): plain safetensors would
read their ciphertext as weights. Needs no key and decrypts nothing; the signature is not checked (that is
'verify').

Given a model folder, every *.safetensors shard in it is shown (.git and cache folders left out), and
whether a signed manifest (model.sig) is there and which key id it names; --json gives the same
({"format": "model folder", "shards": [...], "manifest": {...}}).

examples:
  pycryptotensors inspect model.safetensors --json
  pycryptotensors inspect ./llama-enc
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


def _text(value: Any) -> str:
    """A value as a person reads it: no Python reprs (``None``, ``{'a': 1}``, ``[2, 3]``)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_text(v)}" for k, v in value.items()) or "none"
    if isinstance(value, list | tuple):
        return ", ".join(_text(v) for v in value) or "none"
    return str(value)


def _shape(shape: list[int]) -> str:
    return "x".join(str(n) for n in shape) if shape else "scalar"


def _policy(lines: list[str], which: str, text: str, default: bool, enforced: str) -> None:
    kind = "default (allows everything)" if default else "custom"
    lines.append(f"  {which} policy: {kind}, {enforced}")
    lines += [f"    {line}" for line in text.strip().splitlines()]


def _extension(name: str, ext: Any) -> str:
    if name == "integrity" and isinstance(ext, dict):
        return (
            f"  extension integrity: signed {ext.get('alg')} digests of {ext.get('tensors')} unencrypted tensor(s), "
            f"chunk size {_text(ext.get('chunk_size'))}"
        )
    return f"  extension {name}: {_text(ext)}"


def _human(info: dict[str, Any]) -> str:
    lines = [
        f"{info['path']}: {info['format']}, {info['size']} bytes, {len(info['tensors'])} tensors "
        f"({info['encrypted_tensors']} encrypted)"
    ]
    if info["warning"]:
        lines.append(f"  WARNING: {info['warning']}")
    crypto = info["crypto"]
    if crypto is not None:
        chunks = f"chunk size {crypto['chunk_size']}" if crypto["chunk_size"] else "each tensor in one piece"
        lines.append(f"  version {crypto['version']}, {crypto['algorithm']}, {chunks}")
        master, signer = crypto["master_key"], crypto["signer"]
        lines.append(f"  master key id {_text(master['kid'])}, signer key id {_text(signer['kid'])} ({signer['alg']})")
        for role, slot in (("master key", master), ("signer", signer)):
            if slot["jku"]:
                lines.append(f"  {role} jku {slot['jku']}")
        policy = crypto["policy"]
        _policy(lines, "local", policy["local"], policy["local_is_default"], "checked before any key is unwrapped")
        _policy(lines, "remote", policy["remote"], policy["remote_is_default"], "enforced by a key service")
        for name, ext in crypto["extensions"].items():
            lines.append(_extension(name, ext))
    if info["metadata"]:
        lines.append("  metadata:")
        lines += [f"    {key}: {_text(value)}" for key, value in info["metadata"].items()]
    width = max([len("tensor")] + [len(t["name"]) for t in info["tensors"]])
    lines.append(f"  {'tensor':<{width}}  {'dtype':<7} {'shape':<20} data")
    for t in info["tensors"]:
        mark = "encrypted" if t["encrypted"] else "plain"  # the last word of the row, for scripts that grep
        lines.append(f"  {t['name']:<{width}}  {t['dtype']:<7} {_shape(t['shape']):<20} {mark}")
    return "\n".join(lines)


def _human_folder(info: dict[str, Any]) -> str:
    shards = info["shards"]
    lines = [
        f"{info['path']}: model folder, {len(shards)} shard(s), {info['size']} bytes, {info['tensor_count']} "
        f"tensors ({info['encrypted_tensors']} encrypted)"
    ]
    manifest = info["manifest"]
    if not manifest["present"]:
        lines.append(f"  signed manifest: none ({manifest['path']} is missing; 'pycryptotensors sign' writes one)")
    elif "error" in manifest:
        lines.append(f"  signed manifest: {manifest['path']}, unreadable: {manifest['error']}")
    else:
        lines.append(
            f"  signed manifest: {manifest['path']}, signer key id {_text(manifest.get('signer_kid'))} "
            "(not checked here: run 'pycryptotensors verify')"
        )
    if info["warning"]:
        lines.append(f"  WARNING: {info['warning']}")
    return "\n\n".join(["\n".join(lines), *(_human(shard) for shard in shards)])


def run_inspect(args: argparse.Namespace) -> int:
    if is_folder_url(args.file):  # a remote model folder: each shard's header; nothing cached or trusted
        from ..model.remote import shard_urls

        infos = [describe_file(url) for url in shard_urls(args.file)]
        emit(args, {"url": args.file, "files": infos}, "\n\n".join(_human(i) for i in infos), data=True)
        return 0
    if not is_url(args.file) and Path(args.file).is_dir():
        info = describe_folder(args.file)
        emit(args, info, _human_folder(info), data=True)
    else:
        info = describe_file(args.file)
        emit(args, info, _human(info), data=True)
    return 0


def _verify_folder(root: Path, access: Access, deep: bool) -> dict[str, Any] | None:
    """The whole-folder part of ``verify DIR``: the signed manifest when there is one (every file present and
    unchanged, no file added; with --deep the shards hashed too), else what can be checked without one."""
    names = list_files(root)
    if not names:
        raise ManifestError(f"{root}: no file to verify (an empty model folder verifies nothing)")
    sources, trust = access.sources, access.trust
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


def _verify_files(args: argparse.Namespace, files: list[Any], access: Access) -> list[dict[str, Any]]:
    """Verify each file; with --deep, behind a progress bar counting the bytes authenticated (the files' sizes:
    a remote file's is not known up front, so that bar only counts)."""
    if not args.deep:
        return [verify_file(f, access) for f in files]
    total = 0 if any(isinstance(f, str) and is_url(f) for f in files) else sum(Path(f).stat().st_size for f in files)
    reports = []
    with progress_bar(args, total, "verify") as bar:
        for f in files:
            report = verify_file(f, access, deep=True, progress=bar.update)
            if total:
                bar.update(Path(f).stat().st_size - report["bytes_authenticated"])  # the header and padding
            reports.append(report)
    return reports


def run_verify(args: argparse.Namespace) -> int:
    # a failure: with --json, app.main prints its JSON document, as for every command
    access = resolve(options_from_args(args))
    target = Path(args.path)
    if is_folder_url(args.path):  # a remote model folder: checked, small files cached, shards streamed
        from ..model.remote import open_remote_model

        target = open_remote_model(args.path, access)
    remote = is_url(args.path) and not is_folder_url(args.path)  # one remote file
    deep_hash = args.deep and not is_folder_url(args.path)  # remote shards: --deep authenticates each chunk
    folder = _verify_folder(target, access, deep_hash) if not remote and target.is_dir() else None
    files = [args.path] if remote else sorted(target.rglob("*" + SUFFIX)) if target.is_dir() else [target]
    reports = _verify_files(args, files, access)
    checked = sum(r["bytes_authenticated"] for r in reports)
    what = f"signature and {checked} bytes of tensors" if args.deep else "signature"
    signed = f"; manifest of {folder['files']} file(s) OK" if folder else ""
    result = {"ok": True, "files": reports, "manifest": folder}
    emit(args, result, f"verified {len(reports)} file(s): {what} OK{signed}")
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    ins = commands.add_parser(
        "inspect",
        help="show what a file or model folder holds (no keys needed)",
        description=INSPECT_HELP,
        formatter_class=fmt,
    )
    ins.add_argument(
        "file", help="a CryptoTensors or safetensors file, a model folder, or a file's URL (s3://, hf://, https://)"
    )
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
