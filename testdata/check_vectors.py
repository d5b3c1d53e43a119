"""Check an implementation of the CryptoTensors format against the vectors in this folder.

    python testdata/check_vectors.py        # checks pycryptotensors; prints failures, exits 1 if any

``vectors.json`` lists every vector: ``file``, ``description``, ``master_key`` (which key of ``keys.json`` to
load with; the verify key is always ``keys.json``'s ``verify_key``), optional ``require_encryption``, and
- ``"expect": "valid"``: ``tensors`` maps each tensor name to its ``dtype``, ``shape`` and the SHA-256 of its
  plaintext bytes (little-endian, as stored), which the loader must reproduce exactly;
- ``"expect": "error"``: ``errors`` lists the acceptable error classes (pycryptotensors' names: a subclass
  counts unless ``exact``); nothing may be returned.
Another implementation plugs in its own ``load(path, master_jwk, verify_jwk, require_encryption)`` returning
``{name: (dtype, shape, bytes)}`` and raising errors named (or mapped to) the classes listed.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
Loaded = dict[str, tuple[str, list[int], bytes]]
Loader = Callable[[Path, dict[str, Any], dict[str, Any], bool], Loaded]


def pycryptotensors_load(path: Path, master: dict[str, Any], verify: dict[str, Any], require: bool) -> Loaded:
    """The adapter for pycryptotensors: raw bytes of every tensor, through the reader the library uses."""
    import pycryptotensors as pc
    from pycryptotensors.config import LoadOptions
    from pycryptotensors.keys.access import resolve
    from pycryptotensors.reading.reader import open_file
    from pycryptotensors.reading.source import FileSource

    options = LoadOptions(
        keyring=pc.KeyRing([master, verify]),
        require_encryption=require,
        providers=(),
        use_settings=False,
        use_environment=False,
    )
    source = FileSource(path)
    try:
        opened = open_file(source, resolve(options), "np", "cpu")
        if opened is None:
            raise pc.FormatError(f"{path} is a plain safetensors file")
        return {
            name: (entry.dtype.name, list(entry.shape), opened.tensor_bytes(name).tobytes())
            for name, entry in opened.header.tensors.items()
        }
    finally:
        source.close()


def _judge(vector: dict[str, Any], load: Callable[[], Loaded]) -> str | None:
    try:
        loaded = load()
    except Exception as error:  # the class decides, whatever it is
        if vector["expect"] == "valid":
            return f"refused a valid file: {type(error).__name__}: {error}"
        names = [type(error).__name__] if vector.get("exact") else [c.__name__ for c in type(error).__mro__]
        if not set(names) & set(vector["errors"]):
            return f"raised {type(error).__name__}, expected {' or '.join(vector['errors'])}"
        return None
    if vector["expect"] == "error":
        return f"loaded a file that must be refused ({' or '.join(vector['errors'])})"
    expected = vector["tensors"]
    if set(loaded) != set(expected):
        return f"tensors {sorted(loaded)} != {sorted(expected)}"
    for name, (dtype, shape, data) in loaded.items():
        want = expected[name]
        if [dtype, list(shape)] != [want["dtype"], want["shape"]]:
            return f"{name}: {dtype}{list(shape)} != {want['dtype']}{want['shape']}"
        if hashlib.sha256(data).hexdigest() != want["sha256"]:
            return f"{name}: the bytes differ from the expected plaintext"
    return None


def check(load: Loader = pycryptotensors_load, root: Path = HERE) -> dict[str, str]:
    """Every vector's failure, by file; empty when the implementation passes them all."""
    keys = json.loads((root / "keys.json").read_text())
    failures = {}
    for vector in json.loads((root / "vectors.json").read_text())["vectors"]:
        master = keys["master_keys"][vector["master_key"]]
        path = root / vector["file"]
        require = bool(vector.get("require_encryption", False))
        problem = _judge(vector, lambda p=path, m=master, r=require: load(p, m, keys["verify_key"], r))
        if problem is not None:
            failures[vector["file"]] = problem
    return failures


def main() -> int:
    failures = check()
    for file, problem in failures.items():
        print(f"FAIL {file}: {problem}")
    total = len(json.loads((HERE / "vectors.json").read_text())["vectors"])
    print(f"{total - len(failures)} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
