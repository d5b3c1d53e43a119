"""A file's Rego policy: the decision, and the fixed messages that explain it.

The query is ``data.model.allow`` and only the literal boolean ``true`` allows; false, undefined, a
non-boolean, an error, a timeout or a crashed engine deny. Evaluation runs in the sandboxed helper process
(:mod:`.sandbox`, engine regorus), never in the caller. A denial's ``reason`` is one of the fixed sentences
below plus source positions: it never contains a value the policy computed, so a policy cannot send the
process's secrets (or anything else) out through an error message, a 403 response or an audit record.
"""

from __future__ import annotations

import datetime
import getpass
import json
import os
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..format.crypto_header import DEFAULT_POLICY
from . import sandbox

V1_HINT = "write Rego v1: 'allow if { ... }' or 'allow := true', not 'allow { ... }' (see docs/POLICY.md)"

_MESSAGES = {
    "true": "data.model.allow is true",
    "false": "data.model.allow is false",
    "undefined": "data.model.allow is undefined for this input (no rule for allow succeeded and there is no "
    "default); 'pycryptotensors policy explain FILE' shows why",
    "non_boolean": "data.model.allow is not a boolean; only the literal true allows",
    "compile_error": "the policy does not compile",
    "rego_v0": f"the policy is written in Rego v0, which is not accepted; {V1_HINT}",
    "eval_error": "the policy failed while evaluating",
    "unavailable_builtin": "the policy calls builtins that are not available to model policies",
    "timeout": "the policy did not finish within its time limit",
    "crashed": "the policy engine stopped while evaluating this policy (memory or stack limit)",
    "unavailable": "the policy engine could not be started",
    "engine_missing": "the Rego engine is not installed (pip install gordon-to-regorus)",
    "too_large": f"the policy is larger than {sandbox.MAX_POLICY_BYTES >> 10} KiB",
    "no_package": "the policy must be a Rego module in 'package model' defining 'allow'",
}


@dataclass(frozen=True)
class PolicyDecision:
    """The verdict of :func:`evaluate_policy`. ``reason`` is safe to show anyone; ``detail`` (diagnostics only)
    is the engine's own text, ``report`` its line coverage, ``status`` the outcome's code."""

    allowed: bool
    reason: str
    status: str = ""
    detail: str = ""
    report: dict[str, Any] = field(default_factory=dict)


def reason_for(status: str, reply: Mapping[str, Any]) -> str:
    """The fixed sentence for ``status``, with positions and blocked builtin names checked from the reply."""
    text = _MESSAGES.get(status, _MESSAGES["crashed"])
    position = reply.get("position")
    if isinstance(position, list) and len(position) == 2 and all(isinstance(n, int) for n in position):
        text += f" (line {position[0]}, column {position[1]})"
    if status == "unavailable_builtin":
        names = [n for n in reply.get("builtins", []) if n in _UNAVAILABLE_NAMES]
        text += f": {', '.join(names)}"
    return text


_UNAVAILABLE_NAMES = ("opa.runtime", "http.send", "net.lookup_ip_addr")  # mirrors _worker.UNAVAILABLE


def evaluate_policy(
    policy: str,
    input_document: Mapping[str, Any] | None = None,
    *,
    diagnostics: bool = False,
    timeout: float = sandbox.TIMEOUT_SECONDS,
) -> PolicyDecision:
    """Decide whether ``data.model.allow`` is ``true`` for ``input_document``; never raises for any policy.

    The clock is an input: Rego's ``time.now_ns()`` returns the document's ``time.now_ns`` when it is an
    integer (the engine's own clock otherwise), so ``input.time`` and ``time.now_ns()`` always agree and a
    caller (a test, ``policy test --input``, the key service's clock) decides what "now" is.
    ``diagnostics`` adds the engine's message and line coverage (``detail``, ``report``): for a policy's
    author at the command line, not for loaders or servers, whose callers must not see policy output.

    Args:
        policy: The Rego v1 module (``package model``), as a file carries it.
        input_document: The ``input`` the policy sees (see :func:`local_input`); None: no input.
        diagnostics: Add the engine's message and line coverage to the decision.
        timeout: Wall-clock seconds the sandboxed helper may take.

    Returns:
        The decision: ``allowed`` only when ``data.model.allow`` is exactly ``true``; otherwise ``status``
        says why (``false``, ``undefined``, ``compile_error``, ``eval_error``, ``timeout``, ...).
    """
    if not isinstance(policy, str):
        return PolicyDecision(False, _MESSAGES["compile_error"], "compile_error")
    if policy.strip() == DEFAULT_POLICY:
        return PolicyDecision(True, "default policy (allow = true)", "true")
    document = None if input_document is None else json.dumps(input_document, default=str)
    clock = input_document.get("time") if input_document is not None else None
    now_ns = clock.get("now_ns") if isinstance(clock, Mapping) else None
    if not isinstance(now_ns, int) or isinstance(now_ns, bool):
        now_ns = None
    outcome = sandbox.run(policy, document, diagnostics=diagnostics, timeout=timeout, now_ns=now_ns)
    reply = outcome.reply
    detail = "".join(c if c.isprintable() else "?" for c in str(reply.get("detail", ""))[:2000]) if diagnostics else ""
    report = {"coverage": reply.get("coverage", {})} if diagnostics and "coverage" in reply else {}
    status = outcome.status if outcome.status in _MESSAGES else "crashed"  # the helper's word, checked
    return PolicyDecision(status == "true", reason_for(status, reply), status, detail, report)


def check_policy(policy: str) -> None:
    """Refuse, at save time, a policy that is not a compiling Rego v1 module in ``package model``.

    Rego v0 (``allow { ... }``) is refused with the v1 form: the reference library and OPA 1.x reject it.

    Args:
        policy: The Rego module to be written into a file.

    Raises:
        ConfigError: Empty, not compiling, Rego v0, another package than ``model``, or calling a builtin that
            reaches outside the input (``http.send``, ``opa.runtime`` ...); the message says which.
    """
    if not isinstance(policy, str) or not policy.strip():
        raise ConfigError(_MESSAGES["no_package"])
    if policy.strip() == DEFAULT_POLICY:
        return
    outcome = sandbox.run(policy, None, compile_only=True, diagnostics=True)
    if outcome.status != "compiled":
        detail = str(outcome.reply.get("detail", ""))[:300]
        message = reason_for(outcome.status, outcome.reply)
        raise ConfigError(f"{message}{': ' + detail if detail and outcome.status != 'rego_v0' else ''}")
    if outcome.reply.get("packages") != ["data.model"]:
        raise ConfigError(_MESSAGES["no_package"])


def local_input(
    framework: str, device: str, claims: Mapping[str, Any] | None = None, *, now_ns: int | None = None
) -> dict[str, Any]:
    """The ``input`` document a local policy sees. Schema and examples: docs/POLICY.md.

    ``now_ns`` (nanoseconds since the epoch) fixes the clock the policy sees, ``time.now_ns()`` included
    (:func:`evaluate_policy`); the default is this machine's clock.

    Args:
        framework: The front-end loading the file (``"pt"``, ``"np"``, ...).
        device: The device asked for (``"cpu"``, ``"cuda:0"``, ...).
        claims: The caller's claims (``input.claims``), e.g. ``{"team": "research"}``.
        now_ns: The time the policy sees, in nanoseconds since the epoch; None: now.

    Returns:
        The input document: framework, device, claims, time, host and user.
    """
    if now_ns is None:
        now_ns = time.time_ns()
    now = datetime.datetime.fromtimestamp(now_ns / 1e9, datetime.UTC)
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return {
        "time": {
            "now_ns": now_ns,
            "rfc3339": now.isoformat(timespec="seconds"),  # '+00:00'; policies may use either form
        },
        "host": {"name": socket.gethostname()},
        "user": {"name": user, "uid": os.getuid() if hasattr(os, "getuid") else None},
        "process": {"pid": os.getpid(), "executable": sys.executable, "argv0": sys.argv[0] if sys.argv else ""},
        "runtime": {"framework": framework, "device": device, "python": sys.version.split()[0]},
        "claims": dict(claims or {}),
    }
