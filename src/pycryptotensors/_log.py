"""The package's log: where keys were looked for and found, by key id and source, never key material.

Everything logs to the ``pycryptotensors`` logger (and its children). As a library should, the package adds no
handler and sets no level unless asked: an application that configures :mod:`logging` gets these records
through its own handlers. ``PYCRYPTOTENSORS_LOG=debug`` (or ``info``, ``warning``, ``error``) asks: a handler
writing ``pycryptotensors: LEVEL: message`` lines to stderr is added to the ``pycryptotensors`` logger, once
per process, so that a user can see why a key was (not) found without changing any code.

Messages carry key ids, key kinds, file paths and URLs only. A key's material (``k``, ``d``, raw bytes) is never
formatted into a record: :func:`describe_keys` is the one way key lists are shown.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable
from typing import Any

LOGGER_NAME = "pycryptotensors"
ENV_VAR = "PYCRYPTOTENSORS_LOG"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

logger = logging.getLogger(LOGGER_NAME)
_HANDLER_MARK = "_pycryptotensors_env_handler"


def configure(level: int | str | None = None) -> logging.Handler | None:
    """Send the package's records at ``level`` and above to stderr (once: a second call only changes the
    level). ``level`` defaults to ``PYCRYPTOTENSORS_LOG``; unset or empty does nothing (library etiquette).

    Raises ``ValueError`` for an unknown level name, so that a typo does not silently log nothing.
    """
    if level is None:
        level = os.environ.get(ENV_VAR, "").strip().lower()
        if not level:
            return None
    if isinstance(level, str):
        if level.lower() not in LEVELS:
            raise ValueError(f"{ENV_VAR}={level!r}: use one of {', '.join(LEVELS)}")
        level = LEVELS[level.lower()]
    logger.setLevel(level)
    for handler in logger.handlers:
        if getattr(handler, _HANDLER_MARK, False):
            return handler
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("pycryptotensors: %(levelname)s: %(message)s"))
    setattr(handler, _HANDLER_MARK, True)
    logger.addHandler(handler)
    return handler


def configure_from_env() -> None:
    """Configure from ``PYCRYPTOTENSORS_LOG`` (called once at import); an unknown value is said once, on stderr,
    and ignored: a log setting must not stop a model from loading."""
    try:
        configure()
    except ValueError as error:
        print(f"pycryptotensors: warning: {error}; logging stays off", file=sys.stderr)


NO_PROGRESS_ENV = "PYCRYPTOTENSORS_NO_PROGRESS"
_progress_off = False  # set by the command line for -q / --json (set_progress)


def set_progress(enabled: bool) -> None:
    """Turn every progress bar of this process off (or back on): the command line does it for -q and --json,
    so that the bars the library draws (a long remote transfer) obey them too."""
    global _progress_off
    _progress_off = not enabled


def progress_allowed() -> bool:
    """The one rule for every progress bar, the command's and the library's: only for a person watching, so
    never when stderr is not a terminal (a pipe, a file, CI logs), nor with ``PYCRYPTOTENSORS_NO_PROGRESS`` set
    (to anything but ``0``, ``false``, ``no`` or empty), nor after ``set_progress(False)``."""
    if _progress_off or os.environ.get(NO_PROGRESS_ENV, "").strip().lower() not in ("", "0", "false", "no"):
        return False
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stderr
        return False


def describe_keys(keys: Iterable[Any]) -> str:
    """``kid (kind), ...`` for a list of keys: ids and kinds only, never material."""
    shown = [f"{getattr(k, 'kid', None) or '(no kid)'} ({_kind(k)})" for k in keys]
    return ", ".join(shown) if shown else "no keys"


def _kind(key: Any) -> str:
    name = type(key).__name__
    return {"MasterKey": "master", "SigningKey": "private signing", "VerifyKey": "public signing"}.get(name, name)


configure_from_env()
