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

from .._log import progress_allowed, set_progress
from ..config import LoadOptions
from ..errors import ConfigError, CryptoTensorsError
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


def options_from_args(args: argparse.Namespace) -> LoadOptions:
    """The load options the key and trust flags (``--key``, ``--trust``, ...) name."""
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
    """``--json``. (``-q/--quiet``, which also turns progress bars off, is on every command: app.py.)"""
    parser.add_argument(
        "--json", action="store_true", help='print the result as JSON (for scripts); a failure too: {"error": ...}'
    )


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


def setup_output(args: argparse.Namespace) -> None:
    """What the command line sets once, before a command runs: Python warnings the library raises (a private
    key file others can read, a broken settings file) shown as one ``pycryptotensors: warning: ...`` line each,
    like the command's own warnings, not Python's two-line ``file:line: Category: ...`` form; and with -q or
    --json, no progress bar anywhere, the library's included. A library leaves ``warnings`` alone."""
    import warnings

    def show(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        print(f"pycryptotensors: warning: {message}", file=sys.stderr)

    warnings.showwarning = show
    if getattr(args, "quiet", False) or getattr(args, "json", False):
        set_progress(False)


def warn(message: str) -> None:
    """A warning on stderr: shown even with --quiet and --json (it is about what was or was not protected)."""
    print(f"pycryptotensors: warning: {message}", file=sys.stderr)


def emit(args: argparse.Namespace, result: Any, text: str, *, data: bool = False) -> None:
    """Print a command's result: JSON with --json; else ``text``, unless --quiet and it is only a report of what
    was done (``data=False``: "encrypted 4 file(s)", "verified ..."). The data a command was asked for
    (``data=True``: inspect, listings, a verdict, a token) is printed even with --quiet."""
    if getattr(args, "json", False):
        json.dump(result, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    elif data or not getattr(args, "quiet", False):
        print(text)


def error_document(kind: str, message: str, file: str | None, exit_code: int) -> dict[str, Any]:
    """What a ``--json`` command prints on stdout when it fails (README, "Command line"); the one line on
    stderr and the exit code are as without --json."""
    return {"ok": False, "error": {"type": kind, "message": message, "file": file, "exit_code": exit_code}}


def json_error(kind: str, message: str, file: str | None, exit_code: int) -> None:
    """The one way a failure is reported as JSON, for every command that takes --json (usage errors included)."""
    json.dump(error_document(kind, message, file, exit_code), sys.stdout, indent=2)
    sys.stdout.write("\n")
    sys.stdout.flush()


@contextmanager
def about(path: str | os.PathLike[str]) -> Iterator[None]:
    """Tag an error raised inside with the file it is about (a shard of a folder run), for the error line."""
    try:
        yield
    except CryptoTensorsError as error:
        if getattr(error, "path", None) is None:
            error.path = str(path)
        raise


def show_progress(args: argparse.Namespace | None = None) -> bool:
    """Whether a command draws its progress bar: never with ``-q/--quiet`` or ``--json``, else the library's
    one rule (:func:`pycryptotensors._log.progress_allowed`: stderr a terminal, no ``PYCRYPTOTENSORS_NO_PROGRESS``).
    """
    if args is not None and (getattr(args, "quiet", False) or getattr(args, "json", False)):
        return False
    return progress_allowed()


@contextmanager
def progress_bar(args: argparse.Namespace, total: int, description: str) -> Iterator[Any]:
    """A byte-counting progress bar with throughput on stderr, when :func:`show_progress` says so."""
    from tqdm import tqdm

    disabled = not show_progress(args)
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
