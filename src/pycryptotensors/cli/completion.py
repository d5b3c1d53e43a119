"""``completion``: the shell completion script for bash or zsh, generated from the command's own parser.

shtab writes a static script (no Python runs at each TAB, unlike argcomplete's hook, which would import this
package on every key press), so it cannot drift from the parser: it is generated from it on each call.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

HELP = """\
Print a shell completion script for every command, option and choice of pycryptotensors (bash or zsh).

examples:
  eval "$(pycryptotensors completion bash)"                    # this shell only (or add it to ~/.bashrc)
  pycryptotensors completion bash > ~/.local/share/bash-completion/completions/pycryptotensors
  pycryptotensors completion zsh > "${fpath[1]}/_pycryptotensors"    # then start a new zsh
"""

SHELLS = ("bash", "zsh")
# the arguments that name files or folders complete as paths (shtab.FILE / shtab.DIRECTORY)
FILE_DESTS = {
    "input", "output", "file", "path", "policy", "key", "trust", "master_key", "signing_key", "new_master_key",
    "remote_policy", "publisher_key", "generate", "admin_token_file", "ca_file", "out", "tls_cert", "tls_key",
    "bao_token_file", "attestation_jwks",
}  # fmt: skip
DIRECTORY_DESTS = {"folder", "key_dir", "state"}


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases share a parser
                yield from _parsers(sub)


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script of ``parser`` for ``shell``, with paths completed where an argument names one."""
    import shtab

    for each in _parsers(parser):
        for action in each._actions:
            # shtab's documented hook is an attribute ``complete`` on the action (argparse has no such field)
            if action.dest in FILE_DESTS:
                vars(action)["complete"] = shtab.FILE
            elif action.dest in DIRECTORY_DESTS:
                vars(action)["complete"] = shtab.DIRECTORY
    return shtab.complete(parser, shell=shell)


def run(args: argparse.Namespace) -> int:
    from .app import build_parser  # the whole command's parser (app imports this module)

    print(script(build_parser(), args.shell))
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "completion",
        help="print a bash or zsh completion script",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    parser.set_defaults(run=run)
