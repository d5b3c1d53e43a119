"""The public API boundary (docs/API.md, "Public API"): the documented list, the modules' ``__all__`` and
the names themselves agree; every public name is importable, has a docstring and is fully annotated."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

API_DOC = Path(__file__).resolve().parent.parent / "docs" / "API.md"
_LINE = re.compile(r"^- `(pycryptotensors(?:\.[a-z_]+)*)`: (.+)$")


def documented() -> dict[str, list[str]]:
    """Module -> public names, as listed in docs/API.md's "Public API" section."""
    text = API_DOC.read_text(encoding="utf-8")
    section = text.split("## Public API", 1)[1].split("\n## ", 1)[0]
    modules: dict[str, list[str]] = {}
    for line in section.splitlines():
        match = _LINE.match(line)
        if match:
            modules[match.group(1)] = re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", match.group(2))
    return modules


PUBLIC = documented()
NAMES = [(module, name) for module, names in PUBLIC.items() for name in names]


def test_the_list_is_found_and_covers_the_groups() -> None:
    # the parser must see the list: an empty or shrunken one would make every test below pass vacuously
    assert {"pycryptotensors", "pycryptotensors.numpy", "pycryptotensors.torch", "pycryptotensors.errors",
            "pycryptotensors.keys"} <= set(PUBLIC)
    assert len(NAMES) >= 90
    top = set(PUBLIC["pycryptotensors"])
    assert {"safe_open", "LoadOptions", "SaveOptions", "KeyRing", "MasterKey", "CryptoTensorsError"} <= top
    assert {"KeyProvider", "KeyRequest", "ProvidedKeys"} <= set(PUBLIC["pycryptotensors.keys"])
    for frontend in ("numpy", "torch", "flax", "tensorflow", "paddle", "mlx"):
        assert PUBLIC[f"pycryptotensors.{frontend}"] == ["save_file", "save", "load_file", "load"]


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_all_matches_the_documented_list(module: str) -> None:
    imported = importlib.import_module(module)
    declared = getattr(imported, "__all__", None)
    assert declared is not None, f"{module} has no __all__; docs/API.md lists its public names"
    assert sorted(declared) == sorted(PUBLIC[module]), f"{module}.__all__ differs from docs/API.md"
    assert len(set(declared)) == len(declared), f"{module}.__all__ repeats a name"


def test_every_error_is_public_at_the_top() -> None:
    import pycryptotensors.errors as errors

    assert sorted(PUBLIC["pycryptotensors.errors"]) == sorted(errors.__all__)
    assert set(errors.__all__) <= set(PUBLIC["pycryptotensors"])


def _unannotated(function: Any) -> list[str]:
    """The parameters (and ``return``) of ``function`` that carry no annotation."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # a builtin without a signature
        return []
    missing = [
        p.name
        for i, p in enumerate(signature.parameters.values())
        if p.annotation is inspect.Parameter.empty and not (i == 0 and p.name in ("self", "cls"))
    ]
    if signature.return_annotation is inspect.Signature.empty and function.__name__ != "__init__":
        missing.append("return")
    return missing


def _own_methods(cls: type) -> dict[str, Any]:
    """The public methods (and ``__init__``) a public class defines itself, as plain functions."""
    methods = {}
    for name, value in vars(cls).items():
        if name.startswith("_") and name != "__init__":
            continue
        if isinstance(value, staticmethod | classmethod):
            value = value.__func__
        elif isinstance(value, property):
            value = value.fget
        if inspect.isfunction(value) and value.__qualname__.startswith(f"{cls.__qualname__}."):  # not generated
            methods[name] = value
    return methods


@pytest.mark.parametrize(("module", "name"), NAMES, ids=[f"{m}.{n}" for m, n in NAMES])
def test_public_name_is_importable_documented_and_typed(module: str, name: str) -> None:
    value = getattr(importlib.import_module(module), name)  # lazy names load here
    doc = inspect.getdoc(value)
    assert doc and doc.strip(), f"{module}.{name} has no docstring"
    if inspect.isclass(value):
        assert value.__doc__ is not None and value.__doc__ is not getattr(value.__mro__[1], "__doc__", None), (
            f"{module}.{name} inherits its docstring: say what this class is"
        )
        methods = _own_methods(value)
        for method_name, method in methods.items():
            assert not _unannotated(method), f"{module}.{name}.{method_name}: unannotated {_unannotated(method)}"
        undocumented = sorted(m for m, f in methods.items() if not m.startswith("_") and not inspect.getdoc(f))
        assert not undocumented, f"{module}.{name}: methods without a docstring: {undocumented}"
    else:
        assert callable(value), f"{module}.{name} is neither a class nor a function"
        assert not _unannotated(value), f"{module}.{name}: unannotated {_unannotated(value)}"


@pytest.mark.parametrize(("module", "name"), NAMES, ids=[f"{m}.{n}" for m, n in NAMES])
def test_public_functions_document_arguments_and_errors(module: str, name: str) -> None:
    """Google-style sections (docs/API.md): ``Args:`` when there are arguments, ``Returns:`` when something
    is returned."""
    value = getattr(importlib.import_module(module), name)
    if inspect.isclass(value) or not inspect.isfunction(value):
        return
    doc = inspect.getdoc(value) or ""
    signature = inspect.signature(value)
    if signature.parameters:
        assert "Args:" in doc, f"{module}.{name}: its docstring has no Args: section"
        for parameter in signature.parameters:
            assert re.search(rf"^\s+\*{{0,2}}{parameter}\b", doc, re.M), f"{module}.{name}: {parameter} undocumented"
    if signature.return_annotation not in ("None", None, inspect.Signature.empty):
        assert "Returns:" in doc, f"{module}.{name}: its docstring has no Returns: section"


