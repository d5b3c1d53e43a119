"""Print pip constraints that pin every direct dependency of pyproject.toml to the lowest version it allows.

The declared floors (``cryptography>=47`` ...) are claims; CI installs them with these constraints and runs
the tests, so that a floor is a tested fact (what ``uv pip install --resolution lowest-direct`` does, with pip,
which finds the local CPU torch that uv does not). Requirements with no lower bound are left to the resolver.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

_FLOOR = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*(?:\[[^\]]*\])?\s*(?:>=|==|~=)\s*([^,;\s]+)")


def floors(pyproject: Path, extras: list[str]) -> dict[str, str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        requirements += optional[extra]
    pinned: dict[str, str] = {}
    for requirement in requirements:
        match = _FLOOR.match(requirement)
        if match and not requirement.startswith(project["name"]):
            name, version = match.group(1).lower(), match.group(2).rstrip(".*")
            pinned[name] = version
    return pinned


def main() -> None:
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    for name, version in sorted(floors(pyproject, sys.argv[1:]).items()):
        print(f"{name}=={version}")


if __name__ == "__main__":
    main()
