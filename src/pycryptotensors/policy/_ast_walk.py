"""Reading regorus's AST (``Engine.get_ast_as_json``) for the helper: calls, rules, literals.

Imported by :mod:`._worker` only when a request needs the parsed module (writing, ``policy lint``), so that
an evaluation's start-up stays small. Standard library only, like the helper.
"""

from __future__ import annotations

from typing import Any


def calls(node: object, found: set[str]) -> None:
    """Every function name called in a regorus AST (``{"Call": {"fcn": ...}}``), as dotted text."""
    if isinstance(node, dict):
        call = node.get("Call")
        if isinstance(call, dict):
            name = dotted(call.get("fcn"))
            if name:
                found.add(name)
        for value in node.values():
            calls(value, found)
    elif isinstance(node, list):
        for value in node:
            calls(value, found)


def last_line(node: object) -> int:
    """The last source line a node spans (its deepest, latest ``span``)."""
    best = 0
    if isinstance(node, dict):
        span = node.get("span")
        if isinstance(span, dict) and isinstance(span.get("line"), int):
            best = span["line"]
        for value in node.values():
            best = max(best, last_line(value))
    elif isinstance(node, list):
        for value in node:
            best = max(best, last_line(value))
    return best


def rule_facts(rule: dict[str, Any]) -> dict[str, Any]:
    """A rule's name, lines and, where its head gives a literal, that literal (``true``/``false``)."""
    kind, body = next(iter(rule.items()))
    literal: object
    if kind == "Default":
        value = body.get("value", {})
        literal = value.get("Bool", {}).get("value") if isinstance(value, dict) else None
        return {"name": dotted(body.get("refr")), "default": True, "line": body["span"]["line"], "value": literal}
    head_kind, head = next(iter(body.get("head", {}).items()))
    assign = head.get("assign")
    if assign is None:
        literal = True if head_kind == "Compr" else None
    else:
        literal = assign.get("value", {}).get("Bool", {}).get("value")
    return {
        "name": dotted(head.get("refr")),
        "default": False,
        "kind": head_kind,
        "line": body["span"]["line"],
        "end": last_line(rule),
        "value": literal,
    }


def literals(node: object, function: str, found: list[list[object]]) -> None:
    """String literals passed to ``function``, with their lines (timestamps for ``policy lint``)."""
    if isinstance(node, dict):
        call = node.get("Call")
        if isinstance(call, dict) and dotted(call.get("fcn")) == function:
            for param in call.get("params", []):
                if isinstance(param, dict) and "String" in param:
                    found.append([param["String"]["value"], param["String"]["span"]["line"]])
        for value in node.values():
            literals(value, function, found)
    elif isinstance(node, list):
        for value in node:
            literals(value, function, found)


def dotted(ref: object) -> str | None:
    if not isinstance(ref, dict):
        return None
    if "Var" in ref:
        value = ref["Var"].get("value")
        return value if isinstance(value, str) else None
    if "RefDot" in ref:
        head = dotted(ref["RefDot"].get("refr"))
        field = ref["RefDot"].get("field")
        if head and isinstance(field, list) and len(field) == 2:
            return f"{head}.{field[1]}"
    return None
