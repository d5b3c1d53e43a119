"""The committed conformance vectors (testdata/): every one passes, and the checker is not vacuous."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

TESTDATA = Path(__file__).resolve().parent.parent / "testdata"
_spec = importlib.util.spec_from_file_location("check_vectors", TESTDATA / "check_vectors.py")
assert _spec is not None and _spec.loader is not None
check_vectors = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_vectors)
VECTORS = json.loads((TESTDATA / "vectors.json").read_text())["vectors"]


def test_every_vector_passes() -> None:
    assert check_vectors.check() == {}


def test_the_vectors_cover_each_class() -> None:
    """Valid: every dtype, both versions, each algorithm, odd chunks, partial, zero-size; invalid: each error."""
    files = {v["file"] for v in VECTORS}
    for name in ("every-dtype-v1", "every-dtype-v2", "chunk-7", "partial", "zero-size-tensors", "policy-allow"):
        assert f"valid/{name}.safetensors" in files
    for alg in ("aes256gcm", "aes128gcm", "chacha20poly1305"):
        assert {f"valid/{alg}-v1.safetensors", f"valid/{alg}-v2.safetensors"} <= files
    errors = {e for v in VECTORS if v["expect"] == "error" for e in v["errors"]}
    assert {"FormatError", "IntegrityError", "SignatureError", "WrongKeyError", "NotEncryptedError"} <= errors
    assert all((TESTDATA / v["file"]).is_file() for v in VECTORS)


def test_a_loader_that_returns_wrong_bytes_fails_every_valid_vector() -> None:
    def tampering(path, master, verify, require):
        loaded = check_vectors.pycryptotensors_load(path, master, verify, require)
        return {name: (d, s, data[:-1] + bytes([data[-1] ^ 1]) if data else b"x") for name, (d, s, data) in
                loaded.items()}  # fmt: skip

    failures = check_vectors.check(tampering)  # the invalid ones are still refused before anything is returned
    assert set(failures) == {v["file"] for v in VECTORS if v["expect"] == "valid"}


@pytest.mark.parametrize("wrong", [ValueError("x"), KeyError("x")])
def test_a_loader_that_refuses_everything_fails_valid_and_misnamed_errors(wrong: Exception) -> None:
    def refusing(path, master, verify, require):
        raise wrong

    failures = check_vectors.check(refusing)
    assert set(failures) == {v["file"] for v in VECTORS}


def test_a_loader_that_accepts_everything_fails_every_invalid_vector() -> None:
    def accepting(path, master, verify, require):
        return {}

    failures = check_vectors.check(accepting)
    assert {v["file"] for v in VECTORS if v["expect"] == "error"} <= set(failures)
