"""Options shared by several commands: where keys come from, what to trust, how to report."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..config import LoadOptions
from ..errors import ConfigError
from ..keys.files import read_key_file
from ..keys.jwk import MasterKey, SigningKey, VerifyKey
from ..keys.keyring import KeyRing


def add_key_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("keys and trust (also read: CRYPTOTENSOR_KEYS, the settings file)")
    group.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="FILE",
        help="a JWK or JWK Set file (master keys, public signer keys); repeatable",
    )
    group.add_argument(
        "--key-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="a directory of *.jwk / *.jwks key files; repeatable",
    )
    group.add_argument(
        "--trust",
        action="append",
        default=[],
        metavar="FILE",
        help="pin a publisher: only files signed by these public keys are accepted; repeatable",
    )
    group.add_argument(
        "--require-encryption",
        action="store_true",
        help="refuse plain safetensors files (e.g. an encrypted file stripped of its header)",
    )


def load_options(args: argparse.Namespace) -> LoadOptions:
    ring = KeyRing(key for path in args.key for key in read_key_file(path))
    pinned: list[VerifyKey] = []
    for path in args.trust:
        for key in read_key_file(path):
            if isinstance(key, MasterKey):
                raise ConfigError(f"--trust {path}: a master key is not a publisher key")
            pinned.append(key.verify_key if isinstance(key, SigningKey) else key)
    return LoadOptions(
        keyring=ring, trusted_signers=pinned, key_dirs=args.key_dir, require_encryption=args.require_encryption
    )


def one_key(path: str, kind: type | tuple[type, ...], what: str) -> Any:
    keys = [k for k in read_key_file(path) if isinstance(k, kind)]
    if len(keys) != 1:
        raise ConfigError(f"{path} must hold exactly one {what}")
    return keys[0]


def add_output_options(parser: argparse.ArgumentParser, progress: bool = False) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as JSON (for scripts)")
    if progress:
        parser.add_argument("--quiet", action="store_true", help="no progress bar")


def add_force_option(parser: argparse.ArgumentParser, what: str = "an existing output file") -> None:
    """The one overwrite rule of every command that writes: an existing output is refused without --force."""
    parser.add_argument("--force", action="store_true", help=f"replace {what}")


def refuse_existing(path: Path, force: bool) -> None:
    """Refuse to replace ``path`` (a file, or a link, even a dangling one) unless --force was given."""
    if os.path.lexists(path) and not force:
        raise FileExistsError(f"refusing to overwrite {path} (use --force to replace it)")


def file_target(source: Path, output: Path, force: bool) -> Path:
    """Where a single-file conversion writes: ``output``, or ``output/NAME`` when it is a folder.

    Never the input itself (a link or hard link to it included), not even with --force: decrypting a file
    over itself would replace the ciphertext with plaintext.
    """
    target = output / source.name if output.is_dir() else output
    if os.path.lexists(target):
        if target.is_dir() and not target.is_symlink():
            raise IsADirectoryError(f"{target} is a folder: give a file name or another folder")
        if target.exists() and os.path.samefile(source, target):
            raise FileExistsError(f"{target} is the input file: write to another file (refused even with --force)")
        refuse_existing(target, force)
    return target


def directory_target(source: Path, output: Path, force: bool) -> None:
    """Check the output folder of a directory conversion: not the input, not inside it, not around it (even
    with --force); an existing non-empty folder only with --force."""
    a, b = source.resolve(), output.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise FileExistsError(
            f"the output folder {output} must not be the input folder, inside it or around it "
            "(refused even with --force)"
        )
    if os.path.lexists(output):
        if not output.is_dir():
            raise FileExistsError(f"{output} exists and is not a folder")
        if not force and any(output.iterdir()):
            raise FileExistsError(f"refusing to write into {output}: not empty (use --force to replace its files)")


def warn(message: str) -> None:
    """A warning on stderr: shown even with --quiet and --json (it is about what was or was not protected)."""
    print(f"pycryptotensors: warning: {message}", file=sys.stderr)


def emit(args: argparse.Namespace, result: Any, text: str) -> None:
    if args.json:
        json.dump(result, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        print(text)


@contextmanager
def progress_bar(args: argparse.Namespace, total: int, description: str) -> Iterator[Any]:
    """A byte-counting progress bar with throughput on stderr (off with --quiet or --json)."""
    from tqdm import tqdm

    disabled = getattr(args, "quiet", False) or getattr(args, "json", False)
    with tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=description,
        disable=disabled,
        file=sys.stderr,
        dynamic_ncols=True,
    ) as bar:
        yield bar
