"""``policy``: test a Rego policy against an input document, or explain a file's verdict here."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..policy.rego import check_policy, evaluate_policy, local_input
from ..reading.reader import read_header_view
from .common import add_output_options, emit

HELP = """\
Work with the local access policy (a Rego module, 'package model', allowing when data.model.allow is true).

  test POLICY.rego [--input INPUT.json]   evaluate a policy file; the input defaults to this machine's
                                          (time, host, user, process, runtime), --claims adds claims
  explain FILE                            show the input this machine would give the FILE's local policy and
                                          whether it allows the load, without any key

The input document is described in docs/POLICY.md. Exit code 0 when allowed, 6 when denied.

examples:
  pycryptotensors policy test expires-2027.rego
  pycryptotensors policy explain model.ct --framework pt --claims '{"team": "research"}'
"""


def _input(args: argparse.Namespace) -> dict:
    if getattr(args, "input", None):
        return json.loads(Path(args.input).read_text(encoding="utf-8"))
    return local_input(args.framework, args.device, json.loads(args.claims) if args.claims else None)


def _report(args: argparse.Namespace, policy: str, document: dict) -> int:
    decision = evaluate_policy(policy, document)
    verdict = "allowed" if decision.allowed else "denied"
    emit(
        args,
        {"allowed": decision.allowed, "reason": decision.reason, "input": document},
        f"{verdict}: {decision.reason}\ninput: {json.dumps(document, indent=2)}",
    )
    return 0 if decision.allowed else 6


def run_test(args: argparse.Namespace) -> int:
    policy = Path(args.policy).read_text(encoding="utf-8")
    check_policy(policy)
    return _report(args, policy, _input(args))


def run_explain(args: argparse.Namespace) -> int:
    crypto = read_header_view(args.file).crypto
    if crypto is None:
        emit(
            args, {"allowed": True, "reason": "plain safetensors file: no policy"}, "plain safetensors file: no policy"
        )
        return 0
    return _report(args, crypto.policy_local, _input(args))


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "policy",
        help="test a policy, or explain a file's policy verdict here",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, run, target in (("test", run_test, "policy"), ("explain", run_explain, "file")):
        sub = actions.add_parser(
            name, help=f"{name} ({target})", description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        sub.add_argument(target)
        if name == "test":
            sub.add_argument("--input", metavar="INPUT.json", help="the input document (default: this machine's)")
        sub.add_argument("--claims", metavar="JSON", help="claims added to this machine's input document")
        sub.add_argument("--framework", default="pt", help="runtime.framework in the input (default pt)")
        sub.add_argument("--device", default="cpu", help="runtime.device in the input (default cpu)")
        add_output_options(sub)
        sub.set_defaults(run=run)
