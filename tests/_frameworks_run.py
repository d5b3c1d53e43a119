"""Run by tests/test_frameworks.py with the python of ``.venv-frameworks`` (scripts/setup-frameworks-venv.sh),
one process per framework (TensorFlow and Paddle crash when imported into one process).

Usage: python tests/_frameworks_run.py ACTION FRAMEWORK PARAMS_JSON
* ``write``: builds tensors of every dtype the framework has, natively; writes them encrypted with our front-end
  (``F.ours.safetensors``), encrypted with the reference's matching front-end (``F.ref.safetensors``, the dtypes
  it accepts) and plain with safetensors' (``F.plain.safetensors``); records what each tensor must load as in
  ``F.json`` (dtype, shape, bytes: from safetensors' own serialisation of the native tensor where it has the
  dtype); and checks round trips in this framework: ``load_file``, ``load(bytes)``, ``safe_open`` get_tensor
  and get_slice.
* ``read``: loads every file every framework wrote, with our front-end (bit-exact, slices included, dtypes the
  framework lacks refused with UnsupportedError) and with the reference's front-end (whatever the reference
  loads from its own file it must load, equal, from ours).
* ``transparent``: unmodified ``safetensors.<framework>`` ``load_file`` / ``load`` decrypt our files.
Prints one JSON line {"checks": n, "failures": [...]}; exits non-zero when a check failed.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import json
import struct
import sys
import traceback
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

ACTION, FRAMEWORK, P = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
OUT = Path(P["dir"])
# framework -> (our module, safetensors / reference module suffix, safe_open framework name)
MODULES = {
    "numpy": ("numpy", "numpy", "np"),
    "torch": ("torch", "torch", "pt"),
    "flax": ("flax", "flax", "flax"),
    "tensorflow": ("tensorflow", "tensorflow", "tf"),
    "paddle": ("paddle", "paddle", "paddle"),
    "mlx": ("mlx", "mlx", "mlx"),
}
BASE = ["BOOL", "U8", "I8", "U16", "I16", "F16", "U32", "I32", "F32", "U64", "I64", "F64", "C64"]
DTYPES = {
    "numpy": [*BASE, "BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4"],  # F4 as ml_dtypes.float4_e2m1fn
    "torch": [*BASE, "BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4"],
    "flax": [*BASE, "BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4"],
    "tensorflow": [*BASE, "BF16", "F8_E4M3", "F8_E5M2"],
    "paddle": [*BASE, "BF16", "F8_E4M3", "F8_E5M2"],
    "mlx": [*BASE, "BF16"],
}
NUMPY = {
    "BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "U16": np.uint16, "I16": np.int16, "F16": np.float16,
    "U32": np.uint32, "I32": np.int32, "F32": np.float32, "U64": np.uint64, "I64": np.int64, "F64": np.float64,
    "C64": np.complex64, "BF16": ml_dtypes.bfloat16, "F8_E4M3": ml_dtypes.float8_e4m3fn,
    "F8_E5M2": ml_dtypes.float8_e5m2, "F8_E8M0": ml_dtypes.float8_e8m0fnu,
}  # fmt: skip
SHAPES = [(), (0, 3), (5,), (4, 6), (3, 2, 5)]
CHECKS = {"n": 0}
FAILURES: list[str] = []


def check(ok: bool, what: str) -> None:
    CHECKS["n"] += 1
    if not ok:
        FAILURES.append(what)


def values(dtype: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "BOOL":
        return rng.random(shape) < 0.5
    if dtype[0] in "UI":
        info = np.iinfo(NUMPY[dtype])
        return rng.integers(max(info.min, -1000), min(info.max, 1000), shape).astype(NUMPY[dtype])
    if dtype == "C64":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    if dtype == "F8_E8M0":
        return (2.0 ** rng.integers(-8, 8, shape)).astype(np.float32).astype(NUMPY[dtype])
    return rng.standard_normal(shape).astype(np.float32).astype(NUMPY[dtype])


def native(array: np.ndarray, dtype: str) -> Any:
    """The array as this framework's own tensor, built with the framework's own conversions."""
    if FRAMEWORK == "numpy":
        return array
    if FRAMEWORK == "torch":
        import torch

        if dtype == "F4":
            return torch.from_numpy(array).view(torch.float4_e2m1fn_x2)
        if array.dtype.kind == "V" or array.dtype.type in (ml_dtypes.bfloat16,) or dtype.startswith("F8"):
            return torch.from_numpy(array.view(f"u{array.dtype.itemsize}")).view(
                {"BF16": torch.bfloat16, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
                 "F8_E8M0": torch.float8_e8m0fnu}[dtype])  # fmt: skip
        return torch.from_numpy(array)
    if FRAMEWORK == "flax":
        import jax.numpy as jnp

        return jnp.asarray(array)
    if FRAMEWORK == "tensorflow":
        import tensorflow as tf

        return tf.convert_to_tensor(array)
    if FRAMEWORK == "paddle":
        import paddle

        if dtype in ("BF16", "F8_E4M3", "F8_E5M2", "U16", "U32", "U64"):
            wide = array.astype(np.float32 if dtype[0] in "BF" else np.int64)
            return paddle.to_tensor(wide).astype(getattr(paddle, {"BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn",
                "F8_E5M2": "float8_e5m2"}.get(dtype, f"uint{dtype[1:]}")))  # fmt: skip
        return paddle.to_tensor(array)
    import mlx.core as mx

    if dtype == "BF16":
        return mx.array(array.astype(np.float32)).astype(mx.bfloat16)
    return mx.array(array, dtype=getattr(mx, {"BOOL": "bool_", "F64": "float64"}.get(dtype, array.dtype.name)))


def parse(data: bytes) -> dict[str, tuple[str, list[int], bytes]]:
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + size])
    body = data[8 + size :]
    return {
        k: (v["dtype"], v["shape"], body[v["data_offsets"][0] : v["data_offsets"][1]])
        for k, v in header.items()
        if k != "__metadata__"
    }


def fingerprint(tensor: Any, frontend: Any) -> tuple[str, list[int], str]:
    if FRAMEWORK == "torch":
        tensor = tensor.contiguous()  # safetensors' own loads may hand out strided views
    data = frontend.FRONTEND.to_bytes("t", tensor)
    return data.dtype.name, list(data.shape), hashlib.sha256(bytes(data.data)).hexdigest()


def expected_slice(entry: dict[str, Any], index: Any) -> tuple[str, list[int], str]:
    raw = base64.b64decode(entry["bytes"])
    if index is ... or entry["dtype"] == "F4":
        return entry["dtype"], list(entry["shape"]), hashlib.sha256(raw).hexdigest()
    itemsize = max(1, len(raw) // max(1, int(np.prod(entry["shape"])))) if raw else 1
    view = np.frombuffer(raw, dtype=f"V{itemsize}").reshape(entry["shape"])[index]
    return entry["dtype"], list(view.shape), hashlib.sha256(np.ascontiguousarray(view).tobytes()).hexdigest()


def attempt(what: str, function: Any) -> Any:
    try:
        return function()
    except Exception as error:
        FAILURES.append(f"{what}: {type(error).__name__}: {error}"[:400])
        CHECKS["n"] += 1
        return None


def write() -> None:
    import cryptotensors

    ours = importlib.import_module(f"pycryptotensors.{MODULES[FRAMEWORK][0]}")
    plain = importlib.import_module(f"safetensors.{MODULES[FRAMEWORK][1]}")
    reference = importlib.import_module(f"cryptotensors.{MODULES[FRAMEWORK][1]}")
    tensors: dict[str, Any] = {}
    for i, dtype in enumerate(DTYPES[FRAMEWORK]):
        for j, shape in enumerate(SHAPES):
            if dtype == "F4":
                if len(shape) == 0:
                    continue
                array = np.random.default_rng(i * 10 + j).integers(0, 256, shape, dtype=np.uint8)
                if FRAMEWORK != "torch":  # one value a byte (ml_dtypes), the first of each pair in the low nibble
                    array = np.stack([array & 0x0F, array >> 4], axis=-1).reshape(*shape[:-1], shape[-1] * 2)
                    array = array.view(ml_dtypes.float4_e2m1fn)
            else:
                array = np.asarray(values(dtype, shape, i * 10 + j))
            tensors[f"{dtype}.{j}"] = native(array, dtype)
    manifest: dict[str, Any] = {}
    for name, tensor in tensors.items():
        try:
            dtype, shape, raw = parse(plain.save({name: tensor}))[name]
            oracle = "safetensors"
        except Exception:  # safetensors' module lacks the dtype: our own bytes are the oracle
            data = ours.FRONTEND.to_bytes(name, tensor)
            dtype, shape, raw, oracle = data.dtype.name, list(data.shape), bytes(data.data), "ours"
        manifest[name] = {"dtype": dtype, "shape": shape, "bytes": base64.b64encode(raw).decode(), "oracle": oracle}
        check(dtype == name.split(".")[0], f"{name}: written as {dtype}")
    files: dict[str, list[str]] = {}
    ours.save_file(tensors, OUT / f"{FRAMEWORK}.ours.safetensors", config=P["config"])
    files["ours"] = sorted(tensors)
    plain_ok = {n: t for n, t in tensors.items() if manifest[n]["oracle"] == "safetensors"}
    plain.save_file(plain_ok, str(OUT / f"{FRAMEWORK}.plain.safetensors"))
    files["plain"] = sorted(plain_ok)
    ref_ok = {}
    for name, tensor in tensors.items():
        try:
            reference.save({name: tensor}, config=P["config"])
            ref_ok[name] = tensor
        except Exception:
            pass
    reference.save_file(ref_ok, str(OUT / f"{FRAMEWORK}.ref.safetensors"), config=P["config"])
    files["ref"] = sorted(ref_ok)
    (OUT / f"{FRAMEWORK}.json").write_text(json.dumps({"tensors": manifest, "files": files}))
    # round trips in this framework, every load path
    expected = {n: (e["dtype"], e["shape"], hashlib.sha256(base64.b64decode(e["bytes"])).hexdigest())
                for n, e in manifest.items()}  # fmt: skip
    path = OUT / f"{FRAMEWORK}.ours.safetensors"
    loaded = attempt("load_file", lambda: ours.load_file(path, config=P["load_config"])) or {}
    from_bytes = attempt("load(bytes)", lambda: ours.load(path.read_bytes(), config=P["load_config"])) or {}
    in_memory = attempt("save()+load()", lambda: ours.load(ours.save(tensors, config=P["config"]),
                                                           config=P["load_config"])) or {}  # fmt: skip
    for name in tensors:
        for label, result in (("load_file", loaded), ("load(bytes)", from_bytes), ("save+load", in_memory)):
            got = attempt(f"{label} {name}", lambda result=result, name=name: fingerprint(result[name], ours))
            check(got == expected[name], f"{label} {name}: {got} != {expected[name]}")
    check(isinstance(cryptotensors.__version__, str), "reference importable")


def read() -> None:
    import safetensors

    import pycryptotensors as pc

    ours = importlib.import_module(f"pycryptotensors.{MODULES[FRAMEWORK][0]}")
    reference = importlib.import_module(f"cryptotensors.{MODULES[FRAMEWORK][1]}")
    name_for_open = MODULES[FRAMEWORK][2]
    supported = set(DTYPES[FRAMEWORK])
    for source in MODULES:
        meta = json.loads((OUT / f"{source}.json").read_text())
        for kind, names in meta["files"].items():
            if kind == "plain" and FRAMEWORK == "paddle":
                continue  # safetensors 0.8's own paddle path aborts the process (paddle 3.3.1: "deleter ... not found")
            path = OUT / f"{source}.{kind}.safetensors"
            cfg = None if kind == "plain" else P["load_config"]
            with pc.safe_open(path, name_for_open, config=cfg) as handle:
                check(sorted(handle.keys()) == sorted(names), f"{path.name}: keys")
                for name in names:
                    entry = meta["tensors"][name]
                    where = f"{path.name} {name} in {FRAMEWORK}"
                    if kind == "plain":  # safetensors decides for plain files: ours must answer as it does
                        with safetensors.safe_open(path, name_for_open) as theirs:
                            try:
                                expected = fingerprint(theirs.get_tensor(name), ours)
                            except Exception as error:
                                expected = type(error).__name__
                        try:
                            got = fingerprint(handle.get_tensor(name), ours)
                        except Exception as error:
                            got = type(error).__name__
                        check(got == expected, f"{where}: plain: {got} != safetensors' {expected}")
                        continue
                    if entry["dtype"] not in supported:
                        try:
                            handle.get_tensor(name)
                            check(False, f"{where}: loaded a dtype the framework lacks")
                        except pc.UnsupportedError:
                            check(True, "")
                        except Exception as error:
                            check(False, f"{where}: {type(error).__name__} instead of UnsupportedError")
                        continue
                    expected = expected_slice(entry, ...)
                    got = attempt(where, lambda name=name: fingerprint(handle.get_tensor(name), ours))
                    check(got == expected, f"{where}: {got} != {expected}")
                    if entry["shape"] and entry["shape"][0] > 1 and entry["dtype"] != "F4":
                        for index in (slice(1, None), slice(0, None, 2)):
                            got = attempt(
                                where, lambda name=name, i=index: fingerprint(handle.get_slice(name)[i], ours)
                            )
                            check(got == expected_slice(entry, index), f"{where}[{index}]: {got}")
            if kind != "plain" and all(meta["tensors"][n]["dtype"] in supported for n in names):  # load(bytes)
                data = path.read_bytes()
                result = attempt(f"load(bytes) {path.name}", lambda data=data, cfg=cfg: ours.load(data, config=cfg))
                for name in result or {}:
                    check(fingerprint(result[name], ours) == expected_slice(meta["tensors"][name], ...), f"load {name}")
        # the reference's front-end for this framework reads our file whatever it reads from its own
        if source == FRAMEWORK or FRAMEWORK in ("numpy", "torch"):
            ref_path, our_path = OUT / f"{source}.ref.safetensors", OUT / f"{source}.ours.safetensors"
            import cryptotensors

            for name in meta["files"]["ref"]:
                try:
                    with cryptotensors.safe_open(str(ref_path), name_for_open, config=P["load_config"]) as f:
                        theirs = fingerprint(f.get_tensor(name), ours)
                except Exception:
                    continue  # the reference cannot load this dtype in this framework, from its own file either
                with cryptotensors.safe_open(str(our_path), name_for_open, config=P["load_config"]) as f:
                    got = attempt(
                        f"reference reads ours {name}", lambda f=f, name=name: fingerprint(f.get_tensor(name), ours)
                    )
                check(got == theirs, f"reference {FRAMEWORK} reads our {source} file, {name}: {got} != {theirs}")
            if source == FRAMEWORK:  # and its whole-file load_file, with keys from CRYPTOTENSOR_KEYS
                common = [n for n in meta["files"]["ref"] if meta["tensors"][n]["dtype"] in ("F32", "I32", "U8", "F16")
                          and 0 not in meta["tensors"][n]["shape"]]  # fmt: skip
                data = {n: native(np.frombuffer(base64.b64decode(meta["tensors"][n]["bytes"]), NUMPY[n.split(".")[0]])
                                  .reshape(meta["tensors"][n]["shape"]), n.split(".")[0]) for n in common}  # fmt: skip
                ours.save_file(data, OUT / f"{source}.small.safetensors", config=P["config"])
                reference.save_file(data, str(OUT / f"{source}.refsmall.safetensors"), config=P["config"])
                try:  # the reference's load_file on its own file: where that fails (a bug of its), ours is moot
                    theirs = reference.load_file(str(OUT / f"{source}.refsmall.safetensors"))
                except Exception:
                    theirs = None
                if theirs is not None:
                    small = str(OUT / f"{source}.small.safetensors")
                    loaded = attempt("reference load_file", lambda small=small: reference.load_file(small))
                    for name in common:
                        check(loaded is not None and fingerprint(loaded[name], ours) == fingerprint(theirs[name], ours),
                              f"reference load_file {name}")  # fmt: skip


def transparent() -> None:
    assert "_pycryptotensors_startup" in sys.modules, "the transparent-mode start-up hook (.pth) is not installed"
    plain = importlib.import_module(f"safetensors.{MODULES[FRAMEWORK][1]}")
    import pycryptotensors

    ours = importlib.import_module(f"pycryptotensors.{MODULES[FRAMEWORK][0]}")
    meta = json.loads((OUT / f"{FRAMEWORK}.json").read_text())
    path = OUT / f"{FRAMEWORK}.ours.safetensors"
    names = [n for n in meta["files"]["ours"] if meta["tensors"][n]["dtype"] in ("F32", "I64", "U8", "BOOL", "F16")]
    small = {n: ours.load_file(path, config=P["load_config"])[n] for n in names}
    target = OUT / f"{FRAMEWORK}.transparent.safetensors"
    ours.save_file(small, target, config=P["config"])
    for label, load in (("load_file", lambda: plain.load_file(str(target))),
                        ("load", lambda: plain.load(target.read_bytes()))):  # fmt: skip
        result = attempt(f"safetensors.{MODULES[FRAMEWORK][1]}.{label}", load)
        for name in names:
            got = result is not None and fingerprint(result[name], ours)
            check(got == fingerprint(small[name], ours), f"transparent {label} {name}: {got}")
    check(bool(pycryptotensors.__version__), "")


def main() -> int:
    try:
        {"write": write, "read": read, "transparent": transparent}[ACTION]()
    except Exception:
        FAILURES.append(traceback.format_exc()[-2000:])
    print(json.dumps({"framework": FRAMEWORK, "action": ACTION, "checks": CHECKS["n"], "failures": FAILURES}))
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
