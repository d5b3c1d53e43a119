"""Argument parsing, dispatch, and the one place errors become messages and exit codes.

Every failure prints one sentence on stderr (never a traceback, never key material) and exits with a code
a script can test:

    0 ok          2 usage or invalid option    3 malformed or unsupported file
    4 integrity (signature, tag, digest, or a plain file where encryption is required)
    5 key missing, wrong or malformed          6 denied by policy          1 anything else (I/O ...)
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from .. import __version__
from .._log import configure as configure_log
from ..errors import (
    ConfigError,
    CryptoTensorsError,
    FormatError,
    IntegrityError,
    KeyAccessError,
    PolicyDeniedError,
)
from . import completion, convert, inspect, keygen, keyservice, policy, sign
from .common import json_error, setup_output
from .parser import Parser

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_FORMAT, EXIT_INTEGRITY, EXIT_KEY, EXIT_POLICY = 0, 1, 2, 3, 4, 5, 6
EXIT_CODES = [
    (ConfigError, EXIT_USAGE),
    (FormatError, EXIT_FORMAT),
    (IntegrityError, EXIT_INTEGRITY),
    (PolicyDeniedError, EXIT_POLICY),  # before KeyAccessError: a key service's policy refusal is a denial
    (KeyAccessError, EXIT_KEY),
]

DESCRIPTION = """\
Encrypt, sign, inspect and verify CryptoTensors model files (safetensors with per-tensor encryption).

A publisher makes keys once, encrypts a model directory, and ships it with the public signing key:

  pycryptotensors keygen master keys/master.jwk
  pycryptotensors keygen signing keys/publisher.jwk        # also writes keys/publisher.pub.jwk
  pycryptotensors encrypt ./my-model ./my-model-encrypted \\
      --master-key keys/master.jwk --signing-key keys/publisher.jwk --plain '*[Nn]orm*'

A consumer checks and reads it with the master key and the publisher's public key:

  pycryptotensors inspect my-model-encrypted/model.safetensors
  pycryptotensors verify --deep --key keys/master.jwk --trust keys/publisher.pub.jwk my-model-encrypted

Run 'pycryptotensors COMMAND --help' for each command.
"""

EPILOG = """\
exit codes: 0 ok, 1 other error (I/O), 2 usage or invalid option, 3 malformed or unsupported file,
4 integrity failure (signature, tag, digest, plain file where encryption is required),
5 key missing, wrong or malformed, 6 denied by the file's policy.
errors: one line on stderr that names the file concerned; with --json also {"ok": false, "error": {"type",
"message", "file", "exit_code"}} on stdout. Every command takes -q (only errors) and -v/-vv (more detail).
completion: eval "$(pycryptotensors completion bash)" (or zsh).
"""


QUIET_HELP = "print only errors (and warnings about what was left unprotected): no progress bar, no summary line; \
the data asked for (inspect, listings, a verdict, --json) is still printed"
VERBOSE_HELP = "more detail on stderr: -v logs what the command does (files, keys used, time), -vv also where keys \
were looked for (DEBUG); never key material"
# the positional arguments that name the file (or folder) a command is about, first the one an error is about
SUBJECT_DESTS = ("input", "file", "path", "folder", "policy", "output", "state")
# the options whose values are files: a message naming one of them names its file
FILE_OPTION_DESTS = ("key", "trust", "key_dir", "master_key", "signing_key", "new_master_key", "remote_policy",
                     "publisher_key", "generate", "admin_token_file", "out", "input")  # fmt: skip
log = logging.getLogger("pycryptotensors.cli")


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                yield sub
                yield from _parsers(sub)


def _add_conventions(parser: argparse.ArgumentParser) -> None:
    """-q/-v on the top-level command and on every subcommand (given anywhere, they apply), and the file each
    command is about (for error lines)."""
    parser.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    parser.add_argument("-v", "--verbose", action="count", default=0, help=VERBOSE_HELP)
    for sub in _parsers(parser):
        # suppressed defaults: a subcommand sets them only when given, so '-v encrypt ...' keeps the -v
        sub.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=QUIET_HELP)
        sub.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help=VERBOSE_HELP)
        subjects = [a.dest for a in sub._actions if not a.option_strings and a.dest in SUBJECT_DESTS]
        if subjects:
            sub.set_defaults(subject_dests=subjects)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="pycryptotensors",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pycryptotensors {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (keygen, convert, sign, inspect, policy, keyservice, completion):
        module.register(commands)
    _add_conventions(parser)
    return parser


def _shown(value: Any) -> str:
    from ..reading.source import is_url
    from ..reading.transports import redact

    text = str(value)
    return redact(text) if is_url(text) else text


def _about(error: BaseException, args: argparse.Namespace, message: str) -> tuple[str, str | None]:
    """The error line names the file the error is about: the one the error carries (a shard of a folder, an
    OSError's file), else the first file of the command's arguments the message names, else the command's
    subject (its input), which is then put in front of the message."""
    carried = getattr(error, "path", None) or (getattr(error, "filename", None) if isinstance(error, OSError) else None)
    subjects = [getattr(args, d) for d in getattr(args, "subject_dests", []) if getattr(args, d, None)]
    options = [v for d in FILE_OPTION_DESTS for v in _values(getattr(args, d, None))]
    path: str | None
    if carried is not None:
        path = _shown(carried)
    else:
        named = [_shown(v) for v in (*subjects, *options) if _shown(v) in message]
        path = named[0] if named else (_shown(subjects[0]) if subjects else None)
    if path is not None and path not in message:
        message = f"{path}: {message}"
    return message, path


def _values(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _fail(args: argparse.Namespace, error: BaseException, message: str, code: int, prefix: str = "error") -> int:
    """One line on stderr (never a traceback), and with --json the same error as a JSON document on stdout."""
    message, path = _about(error, args, message)
    print(f"pycryptotensors: {prefix}: {message}", file=sys.stderr)
    causes: list[str] = []
    cause = error.__cause__ or error.__context__
    while cause is not None and len(causes) < 5:  # types only: a library's message might quote data
        causes.append(type(cause).__name__)
        cause = cause.__cause__ or cause.__context__
    log.info("%s (exit code %d)%s", type(error).__name__, code, f", caused by {' <- '.join(causes)}" if causes else "")
    if getattr(args, "json", False):
        json_error(type(error).__name__, message, path, code)
    return code


def _set_verbosity(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """-v: INFO records of the ``pycryptotensors`` logger on stderr, -vv: DEBUG; -q: errors only."""
    if args.quiet and args.verbose:
        parser.error("-q/--quiet and -v/--verbose contradict each other: give one")
    if args.verbose:
        configure_log(logging.INFO if args.verbose == 1 else logging.DEBUG)
    elif args.quiet:
        logging.getLogger("pycryptotensors").setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    Parser.json_errors = "--json" in arguments
    parser = build_parser()
    args = parser.parse_args(arguments)
    _set_verbosity(parser, args)
    setup_output(args)
    started = time.monotonic()
    if log.isEnabledFor(logging.INFO):
        subjects = [_shown(getattr(args, d)) for d in getattr(args, "subject_dests", []) if getattr(args, d, None)]
        log.info("pycryptotensors %s: %s %s", __version__, args.command, " ".join(subjects))
    try:
        code = int(args.run(args) or EXIT_OK)
    except CryptoTensorsError as error:
        code = next((code for kind, code in EXIT_CODES if isinstance(error, kind)), EXIT_ERROR)
        return _fail(args, error, str(error), code)
    except BrokenPipeError:  # the reader of our output went away (e.g. '| head')
        return EXIT_ERROR
    except (OSError, ValueError) as error:
        detail = f"{error.strerror}: {error.filename}" if isinstance(error, OSError) and error.strerror else str(error)
        return _fail(args, error, detail, EXIT_ERROR)
    except Exception as error:  # a bug of ours: still one line, never a traceback that might show data
        return _fail(args, error, f"{type(error).__name__}: {error}", EXIT_ERROR, "internal error")
    except KeyboardInterrupt:
        print("pycryptotensors: interrupted (no partial output is left; run the command again)", file=sys.stderr)
        return 130
    log.info("%s: done in %.2f s (exit code %d)", args.command, time.monotonic() - started, code)
    return code


if __name__ == "__main__":
    sys.exit(main())
