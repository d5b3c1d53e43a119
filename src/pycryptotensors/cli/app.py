"""Argument parsing, dispatch, and the one place errors become messages and exit codes.

Every failure prints one sentence on stderr (never a traceback, never key material) and exits with a code
a script can test:

    0 ok          2 usage or invalid option    3 malformed or unsupported file
    4 integrity (signature, tag, digest, or a plain file where encryption is required)
    5 key missing, wrong or malformed          6 denied by policy          1 anything else (I/O ...)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import (
    ConfigError,
    CryptoTensorsError,
    FormatError,
    IntegrityError,
    KeyAccessError,
    PolicyDeniedError,
)
from . import convert, inspect, keygen, keyservice, policy, sign

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
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pycryptotensors",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pycryptotensors {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (keygen, convert, sign, inspect, policy, keyservice):
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or EXIT_OK)
    except CryptoTensorsError as error:
        print(f"pycryptotensors: error: {error}", file=sys.stderr)
        return next((code for kind, code in EXIT_CODES if isinstance(error, kind)), EXIT_ERROR)
    except BrokenPipeError:  # the reader of our output went away (e.g. '| head')
        return EXIT_ERROR
    except (OSError, ValueError) as error:
        detail = f"{error.strerror}: {error.filename}" if isinstance(error, OSError) and error.strerror else str(error)
        print(f"pycryptotensors: error: {detail}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as error:  # a bug of ours: still one line, never a traceback that might show data
        print(f"pycryptotensors: internal error: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("pycryptotensors: interrupted (no partial output is left; run the command again)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
