"""``encrypt``, ``decrypt`` and ``rewrap``: single files or whole Hugging Face model directories."""

from __future__ import annotations

import argparse
import fnmatch
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ..config import WRITE_CHUNK_SIZE, SaveOptions
from ..convert.files import (
    PLAIN_WEIGHT_GLOBS,
    SUFFIX,
    Converted,
    Scan,
    convert_directory,
    decrypt_safetensors,
    encrypt_safetensors,
    is_encrypted,
    read_header,
    scan_directory,
)
from ..convert.rewrap import rewrap_file
from ..errors import ConfigError
from ..format.algorithms import ALGORITHMS, algorithm
from ..format.crypto_header import DEFAULT_POLICY
from ..keys.access import resolve
from ..keys.jwk import MasterKey, SigningKey
from ..policy.rego import check_policy
from ..reading.source import is_url
from ..writing.sinks import StagedDirectory, copy_file, make_parents, remove_dirs
from .common import (
    about,
    add_force_option,
    add_key_options,
    add_output_options,
    directory_target,
    emit,
    file_target,
    one_key,
    options_from_args,
    progress_bar,
    refuse_existing,
    warn,
)
from .sign import sign_folder

ENCRYPT_HELP = """\
Encrypt a safetensors file, or every *.safetensors shard of a model directory (other files, including
model.safetensors.index.json, are copied unchanged), and sign the result.

Safe on real model folders:
  - CryptoTensors input is refused (use 'rewrap' to change keys): encrypting twice would lose the keys.
  - Other weight formats (*.bin *.pt *.pth *.ckpt *.gguf *.onnx *.msgpack *.h5) are refused, since they
    would be copied unencrypted; --allow-plain-weights copies them in plaintext and lists them.
  - Version-control and cache folders (.git .hg .svn .cache .huggingface __pycache__ ...) are left out:
    a .git folder's objects hold the plaintext model. Symbolic links in the input (a Hugging Face cache
    snapshot) are followed; the output holds regular files.
  - A run that would encrypt 0 files or 0 tensors fails; a pattern that matches no tensor is warned about.
  - An existing output is replaced only with --force. The output is built under a temporary name
    (.pycryptotensors-tmp-*) and moved into place when complete: a failed run leaves nothing, a killed
    one leaves that temporary entry, which the next run removes.

Which tensors are encrypted: all, unless --encrypt and/or --plain name patterns (shell-style, matched
against whole tensor names, case-sensitive: '*norm*' does not match BERT's 'LayerNorm'; --plain wins).
Unencrypted tensors are still covered by the signature.

examples:
  pycryptotensors encrypt model.safetensors model.ct --master-key master.jwk --signing-key acme.jwk
  pycryptotensors encrypt ./llama ./llama-enc --master-key master.jwk --signing-key acme.jwk \\
      --plain '*[Nn]orm*' --policy expires-2027.rego      # 'norm' (Llama) and 'LayerNorm' (BERT)
"""

DECRYPT_HELP = """\
Decrypt a CryptoTensors file, or every shard of a model directory, back into plain safetensors after
checking the signature, the policy and every tag. Keys: --key / --key-dir / CRYPTOTENSOR_KEYS / settings.
Decrypted files are 0600 (a decrypted folder 0700). Never written over the input, even with --force; an
existing output only with --force. A failed run (wrong key, policy) leaves nothing behind.

example:
  pycryptotensors decrypt ./llama-enc ./llama-plain --key master.jwk --trust acme.pub.jwk
"""

REWRAP_HELP = """\
Rotate keys without re-encrypting: re-wrap every data key under a new master key and/or re-sign the header
with a new signing key. The data area is copied unchanged; afterwards the old master key no longer opens the
file. Works on a file or a model directory, in place (no OUTPUT) or into OUTPUT (an existing one only with
--force). Every shard is rewrapped before any is replaced, so a failure leaves the old files whole.

examples:
  pycryptotensors rewrap model.ct --key old-master.jwk --trust acme.pub.jwk \\
      --new-master-key new-master.jwk --signing-key acme.jwk
  pycryptotensors rewrap ./llama-enc --key master.jwk --signing-key acme-2027.jwk    # new signer only
"""


def _selector(encrypt: list[str], plain: list[str]) -> Callable[[str], bool]:
    def select(name: str) -> bool:
        if any(fnmatch.fnmatchcase(name, p) for p in plain):
            return False
        return not encrypt or any(fnmatch.fnmatchcase(name, p) for p in encrypt)

    return select


def _read_policy(path: str | None) -> str:
    if path is None:
        return DEFAULT_POLICY
    text = Path(path).read_text(encoding="utf-8")
    check_policy(text)
    return text


def _save_options(args: argparse.Namespace) -> SaveOptions:
    master: MasterKey = one_key(args.master_key, MasterKey, "master key")
    if args.algorithm:
        chosen = algorithm(args.algorithm)
        if chosen.key_size != len(master.secret):
            raise ConfigError(
                f"{args.master_key} is a {len(master.secret)}-byte key; {chosen.name} needs {chosen.key_size}"
            )
        master = replace(master, alg=chosen)
    return SaveOptions(
        master_key=master,
        signing_key=one_key(args.signing_key, SigningKey, "private signing key"),
        chunk_size=args.chunk_size,
        version=args.format_version,
        policy_local=_read_policy(args.policy),
        policy_remote=_read_policy(args.remote_policy),
        integrity=not args.no_integrity,
        key_service=args.key_service,
    )


def _names(paths: list[Path], limit: int = 5) -> str:
    shown = ", ".join(str(p) for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _scan(src: Path, done: str) -> Scan:
    scan = scan_directory(src)
    if not scan.shards:
        weights = scan.plain_weights
        found = f" (found {_names(weights)}: convert to safetensors first)" if weights else ""
        raise ConfigError(f"0 files would be {done}: {src} holds no *{SUFFIX} file{found}")
    return scan


def _check_encrypt_input(args: argparse.Namespace, src: Path, scan: Scan | None) -> list[str]:
    """Refuse what encrypt must not do; returns the warnings to print (patterns that match no tensor)."""
    if scan is None and any(fnmatch.fnmatchcase(src.name.lower(), g) for g in PLAIN_WEIGHT_GLOBS):
        raise ConfigError(f"{src} is not a safetensors file: convert it to safetensors first")
    names: list[str] = []
    for path in [src / p for p in scan.shards] if scan is not None else [src]:
        header = read_header(path)
        if is_encrypted(header):
            raise ConfigError(
                f"{path} is already a CryptoTensors file: encrypting it again would lose its keys; "
                "use 'pycryptotensors rewrap' to change its master key or signer"
            )
        names += header.tensors
    if scan is not None and scan.plain_weights and not args.allow_plain_weights:
        raise ConfigError(
            f"{src} holds weights in another format that would be copied unencrypted: {_names(scan.plain_weights)}; "
            "remove or convert them, or pass --allow-plain-weights to copy them in plaintext"
        )
    patterns = [("--encrypt", p) for p in args.encrypt] + [("--plain", p) for p in args.plain]
    unmatched = [f"{flag} {p!r}" for flag, p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    select = _selector(args.encrypt, args.plain)
    if not any(select(name) for name in names):
        why = f"; no tensor matches {', '.join(unmatched)}" if unmatched else ""
        raise ConfigError(
            f"0 of {len(names)} tensors would be encrypted{why} (patterns are case-sensitive and match whole "
            "tensor names: see 'pycryptotensors inspect FILE')"
        )
    return [f"{what} matches no tensor (patterns are case-sensitive)" for what in unmatched]


def _run_conversion(
    args: argparse.Namespace,
    verb: str,
    convert: Callable[..., Converted],
    scan: Scan | None,
    private: bool = False,
    seal: Callable[[Path], object] | None = None,
) -> int:
    src, dst = Path(args.input), Path(args.output)
    if scan is not None:
        directory_target(src, dst, args.force)
        files = [src / p for p in scan.shards]
    else:
        dst = file_target(src, dst, args.force)
        files = [src]
    total = sum(p.stat().st_size for p in files)
    results: list[Converted] = []
    with progress_bar(args, total, verb) as bar:

        def one(source: Path, target: Path) -> Converted:
            counted = 0

            def advance(nbytes: int) -> None:
                nonlocal counted
                counted += nbytes
                bar.update(nbytes)

            with about(source):
                result = convert(source, target, advance)
            bar.update(source.stat().st_size - counted)  # the header, counted once the file is done
            return result

        if scan is not None:
            results = convert_directory(src, dst, one, private=private, scan=scan, seal=seal)
        else:
            created = make_parents(dst.parent)
            try:
                results = [one(src, dst)]
            except BaseException:
                remove_dirs(created)
                raise
    report: dict[str, Any] = {
        "files": [{**asdict(r), "source": str(r.source), "target": str(r.target)} for r in results]
    }
    if scan is not None:
        report["skipped"] = [str(p) for p in scan.skipped]
        report["copied_in_plaintext"] = [str(p) for p in scan.plain_weights] if verb == "encrypt" else []
        if scan.skipped and not args.quiet and not args.json:
            print(f"pycryptotensors: left out (version control / cache): {_names(scan.skipped)}", file=sys.stderr)
        for path in report["copied_in_plaintext"]:
            warn(f"copied in plaintext, NOT encrypted (--allow-plain-weights): {path}")
    tensors = sum(r.tensors for r in results)
    encrypted = sum(r.encrypted for r in results)
    emit(args, report, f"{verb}ed {len(results)} file(s), {tensors} tensors ({encrypted} encrypted) into {dst}")
    return 0


def run_encrypt(args: argparse.Namespace) -> int:
    options = _save_options(args)
    src = Path(args.input)
    scan = _scan(src, "encrypted") if src.is_dir() else None
    for message in _check_encrypt_input(args, src, scan):
        warn(message)
    select = _selector(args.encrypt, args.plain)
    allow_plain = getattr(args, "allow_plain_weights", False)

    def seal(folder: Path) -> None:  # the signed manifest of the whole folder, written last (docs/FORMAT.md)
        sign_folder(folder, options.signing_key, allow_plain_weights=allow_plain)

    return _run_conversion(
        args, "encrypt", lambda s, t, p: encrypt_safetensors(s, t, options, select, p), scan, seal=seal
    )


def run_decrypt(args: argparse.Namespace) -> int:
    options = resolve(options_from_args(args))  # once, for every file of a folder
    if is_url(args.input):
        return _decrypt_url(args, options)
    src = Path(args.input)
    scan = _scan(src, "decrypted") if src.is_dir() else None
    return _run_conversion(args, "decrypt", lambda s, t, p: decrypt_safetensors(s, t, options, p), scan, private=True)


def _decrypt_url(args: argparse.Namespace, options: Any) -> int:
    """``decrypt URL OUTPUT``: one remote file, read by range requests and written atomically (0600)."""
    from urllib.parse import urlsplit

    from ..reading.transports import redact

    output = Path(args.output)
    target = output / (Path(urlsplit(args.input).path).name or "model.safetensors") if output.is_dir() else output
    if os.path.lexists(target):
        refuse_existing(target, args.force)
    with progress_bar(args, 0, "decrypt") as bar:
        result = decrypt_safetensors(args.input, target, options, bar.update)
    report = {"files": [{**asdict(result), "source": redact(args.input), "target": str(target)}]}
    emit(args, report, f"decrypted 1 file(s), {result.tensors} tensors ({result.encrypted} encrypted) into {target}")
    return 0


def _same(a: Path, b: Path) -> bool:
    return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)


def run_rewrap(args: argparse.Namespace) -> int:
    if args.new_master_key is None and args.signing_key is None:
        raise ConfigError("nothing to do: give --new-master-key and/or --signing-key")
    options = options_from_args(args)
    signer = one_key(args.signing_key, SigningKey, "private signing key") if args.signing_key else None
    if signer is None:
        signers = [k for k in options.keyring.signing_keys]
        if len(signers) != 1:
            raise ConfigError("re-signing needs the private signing key: --signing-key FILE")
        signer = signers[0]
    master = one_key(args.new_master_key, MasterKey, "master key") if args.new_master_key else None
    access = resolve(options)  # once, for every shard of a folder
    src = Path(args.input)
    dst = Path(args.output) if args.output else src
    in_place = args.output is None or _same(src, dst)  # in place: asked for explicitly, no --force needed
    reports = []
    scan = _scan(src, "rewrapped") if src.is_dir() else None
    files = [src / p for p in scan.shards] if scan is not None else [src]
    with progress_bar(args, sum(p.stat().st_size for p in files), "rewrap") as bar:  # by whole file

        def one(source: Path, target: Path) -> None:
            size = source.stat().st_size
            with about(source):
                reports.append(rewrap_file(source, target, access, signing_key=signer, master_key=master))
            bar.update(size)

        if scan is None:
            target = src if in_place else file_target(src, dst, args.force)
            created = make_parents(target.parent)
            try:
                one(src, target)
            except BaseException:
                remove_dirs(created)
                raise
        else:
            if not in_place:
                directory_target(src, dst, args.force)
            # every shard is rewrapped before any is replaced: a failure leaves the old model whole
            with StagedDirectory(dst) as stage:
                for relative in scan.shards:
                    one(src / relative, stage.path(relative))
                for relative in [] if in_place else scan.others:
                    copy_file(src / relative, stage.path(relative))
            sign_folder(dst, signer, allow_plain_weights=True)  # the folder's new manifest, written last
    rewrapped = sum(r.tensors_rewrapped for r in reports)
    result = {
        "files": len(reports),
        "data_keys_rewrapped": rewrapped,
        "new_signer_kid": signer.kid,
        "new_master_kid": master.kid if master else None,
    }
    emit(
        args,
        result,
        f"rewrapped {len(reports)} file(s): {rewrapped} data keys under "
        f"{'the new master key' if master else 'the same master key'}, signed by {signer.kid}",
    )
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    enc = commands.add_parser(
        "encrypt", help="encrypt and sign a file or a model directory", description=ENCRYPT_HELP, formatter_class=fmt
    )
    enc.add_argument("input", help="a .safetensors file or a model directory")
    enc.add_argument("output", help="the output file or directory")
    enc.add_argument("--master-key", required=True, metavar="FILE", help="JWK file of the master key")
    enc.add_argument("--signing-key", required=True, metavar="FILE", help="JWK file of the private signing key")
    enc.add_argument(
        "--encrypt",
        action="append",
        default=[],
        metavar="PATTERN",
        help="encrypt only tensors whose names match (case-sensitive; repeatable; default: all)",
    )
    enc.add_argument(
        "--plain",
        action="append",
        default=[],
        metavar="PATTERN",
        help="leave tensors whose names match unencrypted, but signed (case-sensitive; repeatable)",
    )
    enc.add_argument("--policy", metavar="FILE.rego", help="local Rego policy (package model; allow if ...)")
    enc.add_argument("--remote-policy", metavar="FILE.rego", help="remote Rego policy for a key service")
    enc.add_argument(
        "--chunk-size",
        type=int,
        default=WRITE_CHUNK_SIZE,
        metavar="BYTES",
        help=f"encryption chunk size (default {WRITE_CHUNK_SIZE})",
    )
    enc.add_argument("--algorithm", choices=sorted(ALGORITHMS), help="AEAD (default: the master key's)")
    enc.add_argument("--format-version", choices=["1", "2"], default="2", help="format version (default 2)")
    enc.add_argument(
        "--no-integrity", action="store_true", help="do not add signed digests of unencrypted tensors (our extension)"
    )
    enc.add_argument(
        "--key-service", metavar="URL", help="key service URL written into the file (jku): consumers get keys there"
    )
    enc.add_argument(
        "--allow-plain-weights",
        action="store_true",
        help="copy weight files in other formats (*.bin, *.pt, ...) unencrypted instead of refusing; listed on stderr",
    )
    add_force_option(enc, "an existing output file, or the files of a non-empty output folder")
    add_output_options(enc, progress=True)
    enc.set_defaults(run=run_encrypt)

    dec = commands.add_parser(
        "decrypt",
        help="decrypt a file or a model directory to plain safetensors",
        description=DECRYPT_HELP,
        formatter_class=fmt,
    )
    dec.add_argument("input", help="an encrypted file, a model directory, or a file's URL (s3://, https:// ...)")
    dec.add_argument("output", help="the output file or directory")
    add_key_options(dec)
    add_force_option(dec, "an existing output file, or the files of a non-empty output folder (never the input)")
    add_output_options(dec, progress=True)
    dec.set_defaults(run=run_decrypt)

    rew = commands.add_parser(
        "rewrap", help="rotate keys without re-encrypting the data", description=REWRAP_HELP, formatter_class=fmt
    )
    rew.add_argument("input", help="an encrypted file or model directory")
    rew.add_argument("output", nargs="?", help="where to write (default: in place)")
    rew.add_argument("--new-master-key", metavar="FILE", help="JWK file of the new master key")
    rew.add_argument("--signing-key", metavar="FILE", help="JWK file of the (new) private signing key")
    add_key_options(rew)
    add_force_option(rew, "an existing OUTPUT file, or the files of a non-empty OUTPUT folder (in place needs none)")
    add_output_options(rew)
    rew.set_defaults(run=run_rewrap)
