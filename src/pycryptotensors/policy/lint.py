"""``policy lint`` and ``policy test``'s explanations: what a policy's author should know before publishing.

Best-effort checks on the parsed module (the helper process parses it; nothing here runs policy code in this
process): Rego version, package, whether ``allow`` can be true at all, builtins that are unavailable, unknown
to the engine or missing from the reference library, and the timestamps the policy compares against.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import sandbox
from .rego import V1_HINT, PolicyDecision, evaluate_policy, reason_for

# Builtins of regorus 0.13 (ours) that the reference library (cryptotensors 0.2.3, regorus 0.4) lacks, measured
# by asking it for each name on 2026-12-07; files whose policy calls one are denied there. Plus our extensions.
NOT_IN_REFERENCE = frozenset(
    {
        "json.patch", "net.cidr_contains", "net.cidr_expand", "net.cidr_is_valid", "net.cidr_intersects",
        "net.cidr_merge", "crypto.md5", "crypto.sha1", "crypto.sha256", "crypto.hmac.md5", "crypto.hmac.sha1",
        "crypto.hmac.sha256", "crypto.hmac.sha512", "crypto.hmac.equal",
    }
)  # fmt: skip
UNAVAILABLE = ("opa.runtime", "http.send", "net.lookup_ip_addr")


@dataclass(frozen=True)
class Finding:
    level: str  # "error" (the policy cannot work as meant), "warning", "info"
    check: str
    message: str
    line: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"level": self.level, "check": self.check, "message": self.message, "line": self.line}


def _syntax(policy: str) -> tuple[list[Finding], dict[str, Any] | None]:
    outcome = sandbox.run(policy, None, analyse=True, diagnostics=True)
    reply = outcome.reply
    line = (reply.get("position") or [None])[0]
    if outcome.status == "rego_v0":
        v0 = f"Rego v0 syntax, refused by writers and by the reference; {V1_HINT}"
        return [Finding("error", "syntax", v0, line)], None
    if outcome.status == "unavailable_builtin":
        names = ", ".join(n for n in reply.get("builtins", []) if n in UNAVAILABLE)
        return [Finding("error", "builtins", f"calls builtins that are unavailable to model policies: {names}")], None
    if outcome.status == "compile_error":
        detail = str(reply.get("detail") or "")[:300]
        return [Finding("error", "syntax", f"does not compile: {detail}", line)], None
    if outcome.status != "analysed":  # too large, or the engine stopped (time, memory, stack) while parsing
        return [Finding("error", "syntax", reason_for(outcome.status, reply), line)], None
    findings = [Finding("info", "syntax", "Rego v1")]
    if reply.get("packages") != ["data.model"]:
        findings.append(Finding("error", "package", "the module must be 'package model'"))
    return findings, reply


def _allow(rules: list[dict[str, Any]]) -> list[Finding]:
    allow = [r for r in rules if r.get("name") == "allow"]
    if not allow:
        return [Finding("error", "allow", "no rule defines allow: every load is denied")]
    findings = []
    bodies = [r for r in allow if not r["default"]]
    if bodies and all(r.get("kind") != "Compr" for r in bodies):
        findings.append(Finding("error", "allow", "allow is not a single value (a set or a function): never true"))
    elif allow and all(r.get("value") is False for r in allow):
        findings.append(Finding("error", "allow", "every rule for allow gives false: allow can never be true"))
    if not any(r["default"] for r in allow):
        findings.append(
            Finding("info", "allow", "no 'default allow := false': when no rule matches, allow is undefined (denied)")
        )
    return findings


def _builtins(reply: Mapping[str, Any]) -> list[Finding]:
    known = set(reply.get("builtins", []))
    own = {r.get("name") for r in reply.get("rules", [])}
    findings = []
    for name in reply.get("calls", []):
        if name in own or name in known or name.startswith("data."):
            if name in NOT_IN_REFERENCE:
                missing = f"{name} is missing from the reference library (cryptotensors 0.2.3): it denies the file"
                findings.append(Finding("warning", "builtins", missing))
            continue
        unknown = f"{name} is not a builtin this engine knows (an error at run time)"
        findings.append(Finding("error", "builtins", unknown))
    return findings


def _timestamps(reply: Mapping[str, Any]) -> list[Finding]:
    now = datetime.datetime.now(datetime.UTC)
    findings = []
    for text, line in reply.get("timestamps", []):
        try:
            when = datetime.datetime.fromisoformat(text)
            if when.tzinfo is None or "T" not in text.upper():
                raise ValueError(text)
        except ValueError:
            findings.append(Finding("error", "timestamps", f"{text!r} is not an RFC 3339 timestamp with a zone", line))
            continue
        tense = "is in the past" if when < now else "is in the future"
        findings.append(Finding("warning" if when < now else "info", "timestamps", f"{text} {tense}", line))
    return findings


def lint(policy: str, input_document: Mapping[str, Any]) -> tuple[list[Finding], PolicyDecision | None]:
    """Every finding, and the verdict for ``input_document`` when the policy compiles."""
    findings, reply = _syntax(policy)
    if reply is None:
        return findings, None
    findings += _allow(reply.get("rules", [])) + _builtins(reply) + _timestamps(reply)
    decision = evaluate_policy(policy, input_document, diagnostics=True)
    return findings, decision


def explain_undefined(policy: str, decision: PolicyDecision) -> list[str]:
    """Why ``allow`` was undefined: for each rule for allow, the last line reached (from line coverage)."""
    outcome = sandbox.run(policy, None, analyse=True)
    rules = [r for r in outcome.reply.get("rules", []) if r.get("name") == "allow" and not r["default"]]
    covered = set(decision.report.get("coverage", {}).get("covered", []))
    if not rules:
        return ["no rule defines allow"]
    lines = []
    for rule in rules:
        reached = sorted(n for n in covered if rule["line"] <= n <= rule["end"])
        if not reached:
            lines.append(f"rule at line {rule['line']}: not reached")
        else:
            lines.append(
                f"rule at line {rule['line']}: stopped at line {reached[-1]} "
                "(that condition was false or undefined for this input)"
            )
    lines.append("add 'default allow := false' to make the denial explicit")
    return lines
