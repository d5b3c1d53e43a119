"""``policy``: test or lint a Rego policy, or explain a verified file's verdict here."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError, NotEncryptedError
from ..keys.access import resolve
from ..policy.lint import explain_undefined, lint
from ..policy.rego import check_policy, evaluate_policy, local_input
from ..reading.reader import open_file, read_header_view
from ..reading.source import FileSource
from .common import add_key_options, add_output_options, emit, options_from_args

HELP = """\
Work with the local access policy (a Rego v1 module, 'package model', allowing when data.model.allow is true).

  test POLICY.rego [--input INPUT.json]   evaluate a policy file; the input defaults to this machine's
                                          (time, host, user, process, runtime), --claims adds claims;
                                          an undefined result is explained rule by rule
  lint POLICY.rego                        check it before publishing: Rego version, package, whether allow
                                          can be true, unavailable or unknown builtins, builtins the
                                          reference library lacks, timestamps; then this machine's verdict
  explain FILE                            verify FILE's signature (with --key/--key-dir/--trust, or the
                                          settings), then show its local policy's verdict here; an
                                          unverified file's policy runs only with --unverified

Policies run in a sandboxed helper process (docs/POLICY.md). Exit code 0 when allowed (lint: no error),
6 when denied (lint: an error), 2 for a policy that does not compile, 5 when the signer's key is missing.

examples:
  pycryptotensors policy test expires-2027.rego
  pycryptotensors policy lint expires-2027.rego
  pycryptotensors policy explain model.ct --trust publisher.pub.jwk --claims '{"team": "research"}'
"""
UNVERIFIED = "UNVERIFIED (signature not checked): "


def _input(args: argparse.Namespace) -> dict[str, Any]:
    if getattr(args, "input", None):
        document = json.loads(Path(args.input).read_text(encoding="utf-8"))
        if not isinstance(document, dict):
            raise ConfigError(f"{args.input}: the input document must be a JSON object")
        return document
    return local_input(args.framework, args.device, json.loads(args.claims) if args.claims else None)


def _report(
    args: argparse.Namespace, policy: str, document: dict[str, Any], prefix: str = "", explain: bool = False
) -> int:
    decision = evaluate_policy(policy, document, diagnostics=explain)
    verdict = "allowed" if decision.allowed else "denied"
    lines = [f"{verdict}: {decision.reason}"]
    if explain and decision.detail:
        lines.append(f"engine: {decision.detail}")
    why = explain_undefined(policy, decision) if explain and decision.status == "undefined" else []
    lines += [f"  {line}" for line in why]
    lines += f"input: {json.dumps(document, indent=2)}".splitlines()
    result = {"allowed": decision.allowed, "status": decision.status, "reason": decision.reason, "input": document}
    if explain:
        result.update(detail=decision.detail, explanation=why)
    if prefix:
        result.update(verified=False, warning=prefix.strip())
    emit(args, result, "\n".join(prefix + line for line in lines), data=True)
    return 0 if decision.allowed else 6


def run_test(args: argparse.Namespace) -> int:
    policy = Path(args.policy).read_text(encoding="utf-8")
    check_policy(policy)
    return _report(args, policy, _input(args), explain=True)


def run_lint(args: argparse.Namespace) -> int:
    policy = Path(args.policy).read_text(encoding="utf-8")
    findings, decision = lint(policy, _input(args))
    errors = [f for f in findings if f.level == "error"]
    lines = [f"{f.level}: {f.check}: {f.message}" + (f" (line {f.line})" if f.line else "") for f in findings]
    if decision is not None:
        lines.append(f"here: {'allowed' if decision.allowed else 'denied'}: {decision.reason}")
    result = {
        "ok": not errors,
        "findings": [f.to_json() for f in findings],
        "here": None if decision is None else {"allowed": decision.allowed, "reason": decision.reason},
    }
    emit(args, result, "\n".join(lines), data=True)
    return 6 if errors else 0


def run_explain(args: argparse.Namespace) -> int:
    if args.unverified:
        crypto = read_header_view(args.file).crypto
    else:
        source = FileSource(args.file)
        try:
            opened = open_file(source, resolve(options_from_args(args)), args.framework, args.device,
                               evaluate_local_policy=False, unwrap=False, whole_model=False)  # fmt: skip
        except NotEncryptedError:
            opened = None
        finally:
            source.close()
        crypto = None if opened is None else opened.crypto
    if crypto is None:
        text = "plain safetensors file: no policy"
        emit(args, {"allowed": True, "reason": text}, text, data=True)
        return 0
    if args.unverified:  # no engine text from an unverified file, only our fixed sentences
        return _report(args, crypto.policy_local, _input(args), UNVERIFIED)
    return _report(args, crypto.policy_local, _input(args), explain=True)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "policy",
        help="test or lint a policy, or explain a file's policy verdict here",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, run, target in (
        ("test", run_test, "policy"),
        ("lint", run_lint, "policy"),
        ("explain", run_explain, "file"),
    ):
        sub = actions.add_parser(
            name, help=f"{name} ({target})", description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        sub.add_argument(target)
        if name in ("test", "lint"):
            sub.add_argument("--input", metavar="INPUT.json", help="the input document (default: this machine's)")
        if name == "explain":
            add_key_options(sub)
            sub.add_argument(
                "--unverified",
                action="store_true",
                help="evaluate the policy of a file whose signature cannot be checked (every line says so)",
            )
        sub.add_argument("--claims", metavar="JSON", help="claims added to this machine's input document")
        sub.add_argument("--framework", default="pt", help="runtime.framework in the input (default pt)")
        sub.add_argument("--device", default="cpu", help="runtime.device in the input (default cpu)")
        add_output_options(sub)
        sub.set_defaults(run=run)
