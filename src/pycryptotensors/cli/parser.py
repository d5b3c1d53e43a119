"""The argument parser of every command and subcommand: no abbreviations, and a "did you mean" on a typo.

argparse's defaults are wrong for a security tool in two ways. ``allow_abbrev`` silently takes ``--mast`` for
``--master-key`` (and would change meaning the day a ``--master`` option is added). And an unknown option given
to a subcommand is reported by the top-level parser, with the top-level usage line, which names none of the
subcommand's options. :class:`Parser` fixes both, and every parser of the command is one (``add_subparsers``
makes its subparsers of the parent's class).
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Iterable
from typing import Any, NoReturn

from .common import json_error

EXIT_USAGE = 2
_INVALID_CHOICE = re.compile(r"invalid choice: '([^']*)'")


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with this command line's conventions.

    - ``allow_abbrev=False``: an option is accepted only as spelled in ``--help``.
    - Strict at every level: leftovers are reported by the (sub)command they were given to, with its usage.
    - A misspelt option, subcommand or choice gets "did you mean ...?" (``difflib``); a misspelt subcommand is
      shown with the usage line of the subcommand it resembles.
    - With ``--json`` on the command line, the usage error is also printed as the JSON error document.
    """

    json_errors = False  # set by main() when --json is among the arguments

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args: Iterable[str] | None = None, namespace: Any = None) -> tuple[Any, list[str]]:
        self._arguments = list(sys.argv[1:] if args is None else args)  # for the hints of error()
        parsed, extras = super().parse_known_args(self._arguments, namespace)
        if extras:  # a subcommand takes every argument after its name: anything left over is a mistake here
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras

    def error(self, message: str) -> NoReturn:
        usage_of: argparse.ArgumentParser = self
        found = _INVALID_CHOICE.search(message)
        if found:
            match, subparser = self._suggest_choice(found.group(1))
            if match is not None:
                message += f"; did you mean '{match}'?"
                usage_of = subparser or self
        elif message.startswith(("unrecognized arguments", "the following arguments are required")):
            # a misspelt option is also why a required one seems missing ('--mast-key' for '--master-key')
            message += self._suggest_options(getattr(self, "_arguments", []))
        usage_of.print_usage(sys.stderr)
        if Parser.json_errors:
            json_error("UsageError", message, None, EXIT_USAGE)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")

    def _suggest_options(self, arguments: list[str]) -> str:
        known = [s for action in self._actions for s in action.option_strings if s.startswith("--")]
        hints = []
        for extra in arguments:
            if not extra.startswith("--") or extra.split("=", 1)[0] in known:
                continue
            typed = extra.split("=", 1)[0]
            prefixed = [s for s in known if len(typed) > 3 and s.startswith(typed)]
            match = prefixed if len(prefixed) == 1 else difflib.get_close_matches(typed, known, n=1, cutoff=0.6)
            if match:
                hints.append(f"did you mean {match[0]} (instead of {typed})?")
        return "; " + "; ".join(hints) if hints else ""

    def _suggest_choice(self, typed: str) -> tuple[str | None, argparse.ArgumentParser | None]:
        """The closest choice of any of this parser's arguments, and its parser if it is a subcommand."""
        choices: dict[str, argparse.ArgumentParser | None] = {}
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                choices.update(action.choices)
            elif action.choices is not None:
                choices.update(dict.fromkeys(map(str, action.choices)))
        match = difflib.get_close_matches(typed, list(choices), n=1, cutoff=0.5)
        return (match[0], choices[match[0]]) if match else (None, None)
