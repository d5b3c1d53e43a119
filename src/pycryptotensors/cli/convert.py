"""``encrypt``, ``decrypt`` and ``rewrap``: single files or whole Hugging Face model directories."""

from __future__ import annotations

import argparse
import fnmatch
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

from ..cipher.aead import ALGORITHMS, algorithm
from ..config import WRITE_CHUNK_SIZE, SaveOptions
from ..errors import ConfigError
from ..format.crypto_header import DEFAULT_POLICY
from ..keys.jwk import MasterKey, SigningKey
from ..policy.rego import check_policy
from ..writing.convert import (
    SUFFIX,
    Converted,
    convert_directory,
    copy_file,
    decrypt_safetensors,
    encrypt_safetensors,
    plan_directory,
)
from ..writing.rewrap import rewrap_file
from .common import add_key_options, add_output_options, emit, load_options, one_key, progress_bar

ENCRYPT_HELP = """\
Encrypt a safetensors file, or every *.safetensors shard of a model directory (other files, including
model.safetensors.index.json, are copied unchanged), and sign the result. Each output file is written to a
temporary name and renamed when complete, so an interrupted run can simply be run again.

Which tensors are encrypted: all, unless --encrypt and/or --plain name patterns (shell-style, matched
against tensor names; --plain wins). Unencrypted tensors are still covered by the signature.

examples:
  pycryptotensors encrypt model.safetensors model.ct --master-key master.jwk --signing-key acme.jwk
  pycryptotensors encrypt ./llama ./llama-enc --master-key master.jwk --signing-key acme.jwk \\
      --plain '*layernorm*' --plain '*norm.weight' --policy expires-2027.rego
"""

DECRYPT_HELP = """\
Decrypt a CryptoTensors file, or every shard of a model directory, back into plain safetensors after
checking the signature, the policy and every tag. Keys: --key / --key-dir / CRYPTOTENSOR_KEYS / settings.

example:
  pycryptotensors decrypt ./llama-enc ./llama-plain --key master.jwk --trust acme.pub.jwk
"""

REWRAP_HELP = """\
Rotate keys without re-encrypting: re-wrap every data key under a new master key and/or re-sign the header
with a new signing key. The data area is copied unchanged; afterwards the old master key no longer opens the
file. Works on a file or a model directory, in place (no OUTPUT) or into OUTPUT.

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


def _shards(src: Path, dst: Path) -> list[tuple[Path, Path]]:
    if src.is_dir():
        return plan_directory(src, dst)[0]
    return [(src, dst)]


def _run_conversion(args: argparse.Namespace, verb: str, convert: Callable[..., Converted]) -> int:
    src, dst = Path(args.input), Path(args.output)
    total = sum(p.stat().st_size for p, _ in _shards(src, dst))
    results: list[Converted] = []
    with progress_bar(args, total, verb) as bar:

        def one(source: Path, target: Path) -> Converted:
            counted = 0

            def advance(nbytes: int) -> None:
                nonlocal counted
                counted += nbytes
                bar.update(nbytes)

            result = convert(source, target, advance)
            bar.update(source.stat().st_size - counted)  # the header, counted once the file is done
            return result

        if src.is_dir():
            results = convert_directory(src, dst, one)
        else:
            if dst.is_dir():
                dst = dst / src.name
            results = [one(src, dst)]
    report = {"files": [{**asdict(r), "source": str(r.source), "target": str(r.target)} for r in results]}
    tensors = sum(r.tensors for r in results)
    encrypted = sum(r.encrypted for r in results)
    emit(args, report, f"{verb}ed {len(results)} file(s), {tensors} tensors ({encrypted} encrypted) into {dst}")
    return 0


def run_encrypt(args: argparse.Namespace) -> int:
    options = _save_options(args)
    select = _selector(args.encrypt, args.plain)
    return _run_conversion(args, "encrypt", lambda s, t, p: encrypt_safetensors(s, t, options, select, p))


def run_decrypt(args: argparse.Namespace) -> int:
    options = load_options(args)
    return _run_conversion(args, "decrypt", lambda s, t, p: decrypt_safetensors(s, t, options, p))


def run_rewrap(args: argparse.Namespace) -> int:
    if args.new_master_key is None and args.signing_key is None:
        raise ConfigError("nothing to do: give --new-master-key and/or --signing-key")
    options = load_options(args)
    signer = one_key(args.signing_key, SigningKey, "private signing key") if args.signing_key else None
    if signer is None:
        signers = [k for k in options.keyring.signing_keys]
        if len(signers) != 1:
            raise ConfigError("re-signing needs the private signing key: --signing-key FILE")
        signer = signers[0]
    master = one_key(args.new_master_key, MasterKey, "master key") if args.new_master_key else None
    src = Path(args.input)
    dst = Path(args.output) if args.output else src
    if not src.is_dir():
        pairs = [(src, dst / src.name if dst.is_dir() else dst)]
    elif dst == src:
        pairs = [(p, p) for p in sorted(src.rglob("*" + SUFFIX))]
    else:
        pairs, others = plan_directory(src, dst)
        for source, target in others:
            target.parent.mkdir(parents=True, exist_ok=True)
            copy_file(source, target)
    rewrapped = 0
    for source, target in pairs:
        target.parent.mkdir(parents=True, exist_ok=True)
        report = rewrap_file(source, target, options, signing_key=signer, master_key=master)
        rewrapped += report.tensors_rewrapped
    result = {
        "files": len(pairs),
        "data_keys_rewrapped": rewrapped,
        "new_signer_kid": signer.kid,
        "new_master_kid": master.kid if master else None,
    }
    emit(
        args,
        result,
        f"rewrapped {len(pairs)} file(s): {rewrapped} data keys under "
        f"{'the new master key' if master else 'the same master key'}, signed by {signer.kid}",
    )
    return 0


def register(commands: argparse._SubParsersAction) -> None:
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
        help="encrypt only tensors whose names match (repeatable; default: all)",
    )
    enc.add_argument(
        "--plain",
        action="append",
        default=[],
        metavar="PATTERN",
        help="leave tensors whose names match unencrypted, but signed (repeatable)",
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
    add_output_options(enc, progress=True)
    enc.set_defaults(run=run_encrypt)

    dec = commands.add_parser(
        "decrypt",
        help="decrypt a file or a model directory to plain safetensors",
        description=DECRYPT_HELP,
        formatter_class=fmt,
    )
    dec.add_argument("input", help="an encrypted file or model directory")
    dec.add_argument("output", help="the output file or directory")
    add_key_options(dec)
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
    add_output_options(rew)
    rew.set_defaults(run=run_rewrap)
