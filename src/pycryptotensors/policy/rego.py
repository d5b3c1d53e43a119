"""Evaluating a file's Rego policy with regopy, defensively.

The query is ``x := data.model.allow`` and only the literal boolean ``true`` allows; false, undefined, a
non-boolean, or any evaluation error denies. We read the result from regopy's JSON text rather than through
``Output.binding``/``expressions``, which abort the whole process on an undefined result (a C++ exception
regopy does not translate).
"""

from __future__ import annotations

import contextlib
import datetime
import getpass
import json
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..format.crypto_header import DEFAULT_POLICY

QUERY = "x := data.model.allow"


@dataclass(frozen=True)
class PolicyDecision:
    allowed: bool
    reason: str


_REGO_LOCK = threading.Lock()


@contextlib.contextmanager
def _quiet_rego() -> Iterator[None]:
    """Serialise regopy calls and keep its error reports off stdout.

    rego-cpp prints parse errors straight to file descriptor 1; they would corrupt a CLI's --json output or a
    server's stdout. The report is still returned to us in the exception, which we turn into one line.
    """
    with _REGO_LOCK:
        sys.stdout.flush()
        saved = os.dup(1)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 1)
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            os.close(devnull)


def _one_line(error: BaseException) -> str:
    """rego-cpp reports errors as an S-expression; keep the messages, in one line."""
    text = str(error)
    messages = list(dict.fromkeys(m.strip() for m in re.findall(r"errormsg \d+:([^)]*)\)", text)))
    return "; ".join(messages) if messages else (text.strip().splitlines() or [type(error).__name__])[0]


def _evaluate(policy: str, input_document: Mapping[str, Any] | None) -> str:
    import regopy  # imported lazily: the default policy never needs it

    with _quiet_rego():
        interpreter = regopy.Interpreter()
        interpreter.add_module("model", policy)
        if input_document is not None:
            interpreter.set_input_term(json.dumps(input_document, default=str))
        return str(interpreter.query(QUERY))


def evaluate_policy(policy: str, input_document: Mapping[str, Any] | None = None) -> PolicyDecision:
    """Decide whether ``data.model.allow`` is ``true`` for ``input_document``."""
    if policy.strip() == DEFAULT_POLICY:
        return PolicyDecision(True, "default policy (allow = true)")
    try:
        text = _evaluate(policy, input_document)
    except Exception as exc:  # regopy raises RegoError for parse and evaluation errors
        return PolicyDecision(False, f"policy error: {_one_line(exc)}")
    if text.strip() == "undefined":
        return PolicyDecision(False, "data.model.allow is undefined for this input")
    try:
        value = json.loads(text)["bindings"]["x"]
    except (ValueError, KeyError, TypeError):
        return PolicyDecision(False, f"unexpected policy result {text[:80]!r}")
    if value is True:
        return PolicyDecision(True, "data.model.allow is true")
    return PolicyDecision(False, f"data.model.allow is {json.dumps(value)[:80]}")


def check_policy(policy: str) -> None:
    """Refuse, at save time, a policy that does not parse or does not define ``data.model``."""
    if policy.strip() == DEFAULT_POLICY:
        return
    try:
        _evaluate(policy, None)
    except Exception as exc:
        raise ConfigError(f"policy does not compile: {_one_line(exc)[:300]}") from None
    if not policy.lstrip().startswith("package model"):
        raise ConfigError("policy must be a Rego module in 'package model' defining 'allow'")


def local_input(framework: str, device: str, claims: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``input`` document a local policy sees. Schema and examples: docs/POLICY.md."""
    now = datetime.datetime.now(datetime.UTC)
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return {
        "time": {
            "now_ns": time.time_ns(),
            "rfc3339": now.isoformat(timespec="seconds"),  # '+00:00', never 'Z' (regopy pitfall)
        },
        "host": {"name": socket.gethostname()},
        "user": {"name": user, "uid": os.getuid() if hasattr(os, "getuid") else None},
        "process": {"pid": os.getpid(), "executable": sys.executable, "argv0": sys.argv[0] if sys.argv else ""},
        "runtime": {"framework": framework, "device": device, "python": sys.version.split()[0]},
        "claims": dict(claims or {}),
    }
