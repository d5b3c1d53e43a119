"""Options shared by several commands: where keys come from, what to trust, how to report."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
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
