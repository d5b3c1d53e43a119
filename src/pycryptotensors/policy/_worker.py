"""The policy helper process: evaluates Rego with regorus; requests are ``marshal`` frames on stdin (from our
parent, trusted), replies one JSON line each on stdout.

Started by :mod:`pycryptotensors.policy.sandbox` as ``python -I -S -c BOOTSTRAP`` (imported, so that its cached
bytecode is used) with the engine's directory and the address-space limit. It imports nothing from
pycryptotensors (the parent's secrets and modules stay out), only ``os``, ``marshal``, ``resource`` and the
``regorus`` package at start, and the rest lazily, to start fast.

It bounds itself before it reads any policy: address space (RLIMIT_AS), file size 0 (it cannot write files),
few descriptors, no core dumps, and before each request a CPU-seconds limit. The parent adds a wall-clock
timeout and kills it; anything that crashes it (a stack overflow in deep recursion, an allocation failure)
only ends this process. Impure builtins are replaced by engine extensions that fail (and report which one was
called); writing and ``lint`` also refuse them statically, by name in the parsed module.

A reply never carries a value computed by the policy: only a status, source positions and, when the request
asks for ``diagnostics`` (the CLI's ``policy test`` / ``lint`` on the author's own file), the engine's message.
"""

from __future__ import annotations

import marshal
import os
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (start-up time); type checkers treat it so
if TYPE_CHECKING:
    from collections.abc import Callable
    from ipaddress import IPv4Network, IPv6Network
    from typing import Any

# Builtins that reach outside the input document, or that regorus lacks and OPA treats as impure. The parent
# keeps the same list (sandbox.UNAVAILABLE) for its messages; this process is the one that enforces it.
UNAVAILABLE = {"opa.runtime": 0, "http.send": 1, "net.lookup_ip_addr": 1}  # name -> arity
QUERY = "data.model.allow"
MAX_DETAIL = 2000
CACHE_SIZE = 16


def _limit(address_space: int) -> None:
    """Lower this process's limits; one a platform refuses (macOS ignores or rejects RLIMIT_AS) is skipped, and
    the parent's wall-clock timeout still bounds the evaluation."""
    try:
        import resource
    except ImportError:  # not POSIX: the parent's timeout is the only bound
        return
    limits = [("RLIMIT_CORE", 0), ("RLIMIT_FSIZE", 0), ("RLIMIT_NOFILE", 32)]
    if address_space > 0:
        limits.append(("RLIMIT_AS", address_space))
    for name, value in limits:
        limit = getattr(resource, name, None)
        if limit is None:
            continue
        hard = resource.getrlimit(limit)[1]
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        try:  # noqa: SIM105 - contextlib would import collections and functools: a slower start
            resource.setrlimit(limit, (value, value))
        except (ValueError, OSError):
            pass


def _cpu_budget(seconds: float) -> None:
    """Allow ``seconds`` more CPU from now on; past it the kernel sends SIGXCPU, which ends this process."""
    try:
        import resource
    except ImportError:
        return
    used = resource.getrusage(resource.RUSAGE_SELF)
    spent = used.ru_utime + used.ru_stime
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    soft = int(spent + seconds) + 1
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    try:  # noqa: SIM105 - as above
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
    except (ValueError, OSError):
        pass


BLOCKED_CALLS: list[str] = []  # the unavailable builtins the current evaluation tried to call


def _blocker(name: str) -> Callable[..., object]:
    def blocked(*_args: object) -> object:
        BLOCKED_CALLS.append(name)
        raise RuntimeError("this builtin is not available to model policies")

    return blocked


def _encode(value: object) -> str:
    """JSON for the small replies (str, int, bool, None, lists, dicts): the ``json`` module, with ``re`` and
    ``enum`` behind it, would double this process's start-up time."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        out = []
        for char in value:
            if char in '"\\':
                out.append("\\" + char)
            elif ord(char) < 0x20 or 0xD800 <= ord(char) <= 0xDFFF:
                out.append(f"\\u{ord(char):04x}")
            else:
                out.append(char)
        return '"' + "".join(out) + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_encode(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{_encode(str(k))}:{_encode(v)}" for k, v in value.items()) + "}"
    return _encode(str(value))


def _text(value: object) -> bytes:
    if not isinstance(value, str):
        raise TypeError("operand must be a string")
    return value.encode("utf-8")


def _digest(name: str) -> Callable[[object], str]:
    def digest(text: object) -> str:
        import hashlib  # imported at the first call: start-up stays small

        return hashlib.new(name, _text(text)).hexdigest()

    return digest


def _hmac(name: str) -> Callable[[object, object], str]:
    def mac(text: object, key: object) -> str:
        import hashlib
        import hmac

        return hmac.new(_text(key), _text(text), getattr(hashlib, name)).hexdigest()

    return mac


def _hmac_equal(a: object, b: object) -> bool:
    import hmac

    return hmac.compare_digest(_text(a), _text(b))


def _network(text: object) -> IPv4Network | IPv6Network:
    import ipaddress

    if not isinstance(text, str):
        raise TypeError("operand must be a string")
    return ipaddress.ip_network(text, strict=False) if "/" in text else ipaddress.ip_network(text)


def _cidr_intersects(a: object, b: object) -> bool:
    first, second = _network(a), _network(b)
    return first.version == second.version and first.overlaps(second)


def _cidr_merge(addresses: object) -> list[str]:
    import ipaddress

    if not isinstance(addresses, list):
        raise TypeError("operand must be an array")
    if not all(isinstance(a, str) and "/" in a for a in addresses):  # OPA gives a bare address its classful mask
        raise ValueError("net.cidr_merge: addresses without a prefix length are not supported")
    networks = [_network(a) for a in addresses]
    merged: list[IPv4Network | IPv6Network] = [*ipaddress.collapse_addresses(n for n in networks if n.version == 4)]
    merged += [*ipaddress.collapse_addresses(n for n in networks if n.version == 6)]
    return sorted(str(n) for n in merged)


# OPA builtins that regorus lacks, added through its extension mechanism (pure functions only), so that
# policies using them evaluate as OPA does. Checked against OPA's answers in tests/policy_corpus/.
EXTENSIONS = {
    "crypto.md5": (1, _digest("md5")),
    "crypto.sha1": (1, _digest("sha1")),
    "crypto.sha256": (1, _digest("sha256")),
    "crypto.hmac.md5": (2, _hmac("md5")),
    "crypto.hmac.sha1": (2, _hmac("sha1")),
    "crypto.hmac.sha256": (2, _hmac("sha256")),
    "crypto.hmac.sha512": (2, _hmac("sha512")),
    "crypto.hmac.equal": (2, _hmac_equal),
    "net.cidr_intersects": (2, _cidr_intersects),
    "net.cidr_merge": (1, _cidr_merge),
}


def _position(message: str) -> tuple[int, int] | None:
    """regorus reports ``--> model.rego:LINE:COL``; positions are numbers, never policy values."""
    marker = message.find("--> ")
    if marker < 0:
        return None
    parts = message[marker + 4 :].split("\n", 1)[0].rsplit(":", 2)
    try:
        return int(parts[-2]), int(parts[-1])
    except (ValueError, IndexError):
        return None


def _error_text(message: str) -> str:
    """The engine's one-line error (``error: ...``), without the Rust backtrace."""
    for line in message.splitlines():
        if line.startswith("error: "):
            return line[7:][:MAX_DETAIL]
    first = message.strip().splitlines()
    return (first[0] if first else "error")[:MAX_DETAIL]


class Worker:
    # regorus ships no type information: its module and engines are Any
    def __init__(self, regorus: Any) -> None:
        self.regorus = regorus
        self.compiled: dict[str, tuple[Any, dict[str, Any]]] = {}

    def compile(self, policy: str, diagnostics: bool, static: bool) -> tuple[Any, dict[str, Any]]:
        """The engine for ``policy`` (cached by its text). ``static`` also refuses, by name, calls of unavailable
        builtins anywhere in the module (writing, lint); evaluation refuses them when called (``_blocker``)."""
        cached = self.compiled.get(policy)
        if cached is None:
            engine = self.regorus.Engine()
            for name, arity in UNAVAILABLE.items():
                engine.add_extension(name, arity, _blocker(name))
            for name, (arity, function) in EXTENSIONS.items():
                engine.add_extension(name, arity, function)
            try:
                engine.add_policy("model.rego", policy)
            except Exception as error:  # a parse or compile error
                return None, self._compile_failure(policy, str(error), diagnostics)
            if len(self.compiled) >= CACHE_SIZE:
                self.compiled.pop(next(iter(self.compiled)))
            cached = self.compiled[policy] = (engine, {"packages": engine.get_packages()})
        if static:
            import json

            if TYPE_CHECKING:
                from pycryptotensors.policy._ast_walk import calls
            else:  # this process runs with its own folder on sys.path (sandbox), not as part of the package
                from _ast_walk import calls

            called: set[str] = set()
            calls(json.loads(cached[0].get_ast_as_json()), called)
            impure = sorted(called.intersection(UNAVAILABLE))
            if impure:
                return None, {"status": "unavailable_builtin", "builtins": impure}
        return cached

    def _compile_failure(self, policy: str, message: str, diagnostics: bool) -> dict[str, Any]:
        reply: dict[str, Any] = {"status": "compile_error", "position": _position(message)}
        old = self.regorus.Engine()
        old.set_rego_v0(True)
        try:
            old.add_policy("model.rego", policy)
            reply["status"] = "rego_v0"
        except Exception:
            pass
        if diagnostics:
            reply["detail"] = _error_text(message)
        return reply

    def builtins(self) -> list[str]:
        """What this engine provides: regorus's own builtins (read before any is blocked) and ours."""
        engine = self.regorus.Engine()
        engine.add_policy("b.rego", "package b\nnames := opa.runtime().builtins")
        names = set(engine.eval_query("data.b.names")["result"][0]["expressions"][0]["value"])
        return sorted((names | set(EXTENSIONS)) - set(UNAVAILABLE))

    def analyse(self, engine: Any) -> dict[str, Any]:
        import json

        if TYPE_CHECKING:
            from pycryptotensors.policy._ast_walk import calls, literals, rule_facts
        else:  # as in compile
            from _ast_walk import calls, literals, rule_facts

        module = json.loads(engine.get_ast_as_json())[0]["ast"]
        called: set[str] = set()
        calls(module, called)
        stamps: list[list[object]] = []
        literals(module, "time.parse_rfc3339_ns", stamps)
        return {
            "rules": [rule_facts(rule) for rule in module.get("rules", [])],
            "calls": sorted(called),
            "builtins": self.builtins(),
            "timestamps": stamps,
        }

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        _cpu_budget(float(request.get("cpu_seconds", 2.0)))
        diagnostics = bool(request.get("diagnostics"))
        static = bool(request.get("analyse") or request.get("compile_only"))
        engine, reply = self.compile(request["policy"], diagnostics, static)
        if engine is None:
            return reply
        if request.get("analyse"):
            return {"status": "analysed", **reply, **self.analyse(engine)}
        if request.get("compile_only"):
            return {"status": "compiled", **reply}
        run = engine.clone()
        now_ns = request.get("now_ns")
        if isinstance(now_ns, int):  # the caller's clock (the input document's time.now_ns) replaces the engine's
            run.add_extension("time.now_ns", 0, lambda: now_ns)
        if diagnostics:
            run.set_enable_coverage(True)
        if request.get("input") is not None:
            run.set_input_json(request["input"])
        del BLOCKED_CALLS[:]
        try:
            results = run.eval_query(QUERY).get("result") or []
        except Exception as error:
            if BLOCKED_CALLS:
                return {"status": "unavailable_builtin", "builtins": sorted(set(BLOCKED_CALLS))}
            reply = {"status": "eval_error", "position": _position(str(error))}
            if diagnostics:
                reply["detail"] = _error_text(str(error))
            return reply
        if diagnostics:
            reply["coverage"] = _coverage(run)
        if not results:
            return {**reply, "status": "undefined"}
        values = [e.get("value") for r in results for e in r.get("expressions", [])]
        if len(values) == 1 and values[0] is True:
            return {**reply, "status": "true"}
        if len(values) == 1 and values[0] is False:
            return {**reply, "status": "false"}
        return {**reply, "status": "non_boolean"}


def _coverage(engine: Any) -> dict[str, Any]:
    import json

    try:
        files = json.loads(engine.get_coverage_report_as_json()).get("files", [])
    except Exception:
        return {}
    for entry in files:
        return {"covered": entry.get("covered", []), "not_covered": entry.get("not_covered", [])}
    return {}


def main(engine_dir: str, address_space: int) -> None:
    _limit(address_space)
    sys.path[:0] = [engine_dir, os.path.dirname(os.path.abspath(__file__))]  # the engine; _ast_walk
    import regorus

    worker = Worker(regorus)
    source, out = sys.stdin.buffer, sys.stdout.buffer
    out.write(_encode({"status": "ready", "pid": os.getpid()}).encode() + b"\n")
    out.flush()
    while True:  # a request: 4-byte big-endian length, then a marshal'ed dict (from our parent, trusted)
        size = source.read(4)
        if len(size) < 4:
            return
        try:
            reply = worker.handle(marshal.loads(source.read(int.from_bytes(size, "big"))))
        except Exception as error:  # a malformed request or an engine failure outside evaluation
            reply = {"status": "eval_error", "position": None, "detail": type(error).__name__}
        out.write(_encode(reply).encode("utf-8", "surrogatepass") + b"\n")
        out.flush()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
