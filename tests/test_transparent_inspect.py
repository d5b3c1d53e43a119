"""``pycryptotensors inspect`` marks encrypted tensors so that nobody mistakes them for weights.

The format keeps safetensors' layout, so plain safetensors (without the package, or with
``PYCRYPTOTENSORS_TRANSPARENT=0``) reads an encrypted tensor's ciphertext as its values; test_transparent.py's
``test_transparent_off_hands_out_ciphertext`` shows it. ``inspect`` is how a person or a script sees that
before loading: a WARNING line and a per-tensor mark in the text, ``warning`` and ``encrypted`` in JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from _command import CLI
from test_transparent import PLAIN_IN_ENCRYPTED, World, make_world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return make_world(tmp_path_factory.mktemp("inspect"))


def inspect(path: Path, *flags: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "CRYPTOTENSOR_KEYS"}  # inspect needs no key
    result = subprocess.run([*CLI, "inspect", str(path), *flags], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_inspect_text_marks_encrypted_tensors(world: World) -> None:
    text = inspect(world.encrypted)
    lines = text.splitlines()
    warning = [line for line in lines if line.strip().startswith("WARNING:")]
    assert len(warning) == 1, text
    assert "7 of 8 tensors are ENCRYPTED" in warning[0] and "ciphertext" in warning[0], warning
    assert "PYCRYPTOTENSORS_TRANSPARENT=0" in warning[0], warning
    assert lines.index(warning[0]) == 1, "the warning comes right after the summary line"
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["tensor", "dtype"])
    assert lines[header].split()[-1] == "data"
    rows = {line.split()[0]: line.split()[-1] for line in lines[header + 1 :]}
    assert rows == {name: "plain" if name == PLAIN_IN_ENCRYPTED else "encrypted" for name in rows}
    assert len(rows) == 8


def test_inspect_json_marks_encrypted_tensors(world: World) -> None:
    info = json.loads(inspect(world.encrypted, "--json"))
    assert info["format"] == "cryptotensors" and info["encrypted_tensors"] == 7
    assert "ENCRYPTED" in info["warning"] and "ciphertext" in info["warning"]
    marks = {t["name"]: t["encrypted"] for t in info["tensors"]}
    assert marks == {name: name != PLAIN_IN_ENCRYPTED for name in marks} and len(marks) == 8


def test_inspect_plain_file_has_no_warning(world: World) -> None:
    text = inspect(world.plain)
    assert "WARNING" not in text and "ENCRYPTED" not in text and "(0 encrypted)" in text
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["tensor", "dtype"])
    assert [line.split()[-1] for line in lines[header + 1 :]] == ["plain"] * 8, text
    info = json.loads(inspect(world.plain, "--json"))
    assert info["warning"] is None and info["encrypted_tensors"] == 0
    assert not any(t["encrypted"] for t in info["tensors"])
