"""Interoperability with the reference library, ``cryptotensors`` 0.2.3, in both directions (no mocks).

* Reference -> ours: files the reference writes load in pycryptotensors with equal values, through every load path
  (``numpy.load_file``, ``numpy.load(bytes)``, ``safe_open`` ``get_tensor`` and ``get_slice``, and the torch
  front-end for torch dtypes).
* Ours -> reference: files pycryptotensors writes load in the reference with equal values (its ``safe_open`` with
  a config, and its ``load_file`` / ``load(bytes)`` with keys from ``CRYPTOTENSOR_KEYS``).

Values are compared bit for bit, together with dtype name and shape, so NaNs and the 8-bit float types compare
exactly and numpy (ml_dtypes) results can be checked against torch tensors.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import cryptotensors
import cryptotensors.numpy as ref_np
import cryptotensors.torch as ref_pt
import numpy as np
import pytest
import torch

import pycryptotensors as pc
import pycryptotensors.numpy as our_np
import pycryptotensors.torch as our_pt

CHUNK = 64  # small v2 chunks, so that small tensors span several of them
ALLOW = "package model\nallow := true"
ALGORITHMS = ["aes256gcm", "aes128gcm", "chacha20poly1305"]
METADATA = {"name": "demo", "ünïcødé ключ": "值 ✓ 🙂", 'quote"back\\slash/': "tab\tnew\nline", "empty": ""}
NUMPY_DTYPES = [
    np.float64, np.float32, np.float16, np.int64, np.uint64, np.int32, np.uint32, np.int16, np.uint16, np.int8,
    np.uint8, np.bool_, np.complex64,
]  # fmt: skip
TORCH_ONLY_DTYPES = [
    torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e8m0fnu, torch.complex64, torch.uint16,
    torch.uint32, torch.uint64,
]  # fmt: skip
TORCH_DTYPES = [
    *TORCH_ONLY_DTYPES, torch.float64, torch.float32, torch.float16, torch.int64, torch.int32, torch.int16,
    torch.int8, torch.uint8, torch.bool,
]  # fmt: skip
PARTIAL = ["weight", "scalar", "bytes_65"]  # the tensors a partly encrypted sample file encrypts


# ---------------------------------------------------------------------------------------------------- helpers


def rand(rng: np.random.Generator, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Small random values of any numpy dtype (0-d arrays included)."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        values: Any = rng.random(shape) < 0.5
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    elif dtype.kind == "c":
        values = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    else:
        values = rng.standard_normal(shape)
    return np.asarray(values, dtype=dtype)


def rand_torch(rng: np.random.Generator, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """Small random values of any torch dtype; integers, bool and complex go through numpy."""
    if dtype.is_complex or not dtype.is_floating_point:
        return torch.from_numpy(rand(rng, torch.empty(0, dtype=dtype).numpy().dtype, shape))
    values = torch.from_numpy(np.asarray(rng.standard_normal(shape), dtype=np.float32))
    if dtype == torch.float8_e8m0fnu:  # a bare exponent: positive values only
        values = values.abs()
    return values.to(dtype)


def sample(seed: int = 0) -> dict[str, np.ndarray]:
    """Mixed dtypes and shapes; with 64-byte chunks, tensors of 0, 1, 63, 64, 65 bytes and several chunks."""
    rng = np.random.default_rng(seed)
    tensors = {
        "weight": rand(rng, np.float32, (9, 7)),  # 252 bytes: four chunks, the last one short
        "ids": rand(rng, np.int64, (2, 3, 4)),  # 192 bytes: exactly three chunks
        "bias": rand(rng, np.float64, (5,)),
        "scalar": rand(rng, np.float16, ()),
        "mask": rand(rng, np.bool_, (4, 4)),
    }
    tensors |= {f"bytes_{n}": rand(rng, np.uint8, (n,)) for n in (0, 1, CHUNK - 1, CHUNK, CHUNK + 1)}
    return tensors


def dtype_sample(dtype: Any, seed: int = 1) -> dict[str, Any]:
    """A matrix and a 0-d scalar of one dtype (numpy or torch)."""
    rng = np.random.default_rng(seed)
    make = rand_torch if isinstance(dtype, torch.dtype) else rand
    return {"matrix": make(rng, dtype, (3, 5)), "scalar": make(rng, dtype, ())}


def all_dtypes_sample(dtypes: list[Any], seed: int = 2) -> dict[str, Any]:
    """Every dtype in one file: data order and the signed order depend on the dtype mix."""
    rng = np.random.default_rng(seed)
    make = rand_torch if isinstance(dtypes[0], torch.dtype) else rand
    tensors = {}
    for dtype in dtypes:
        name = str(dtype).removeprefix("torch.") if isinstance(dtype, torch.dtype) else np.dtype(dtype).name
        tensors[name] = make(rng, dtype, (2, 3))
        tensors[f"{name}_scalar"] = make(rng, dtype, ())
    return tensors


def fingerprint(tensor: Any) -> tuple[str, tuple[int, ...], bytes]:
    """Dtype name, shape and raw bytes, comparable across numpy, ml_dtypes and torch."""
    if isinstance(tensor, torch.Tensor):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        raw = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
        return str(tensor.dtype).removeprefix("torch."), tuple(tensor.shape), raw
    array = np.asarray(tensor)
    return array.dtype.name, array.shape, np.ascontiguousarray(array).tobytes()


def assert_same(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> None:
    assert sorted(actual) == sorted(expected)
    for name, tensor in expected.items():
        assert fingerprint(actual[name]) == fingerprint(tensor), name


def slice_indices(shape: tuple[int, ...]) -> list[Any]:
    """Whole-tensor and partial selections; with small chunks the partial ones start and end mid-chunk."""
    indices: list[Any] = [...]
    if shape and shape[0] > 0:
        indices += [shape[0] - 1, slice(1, None, 2), slice(shape[0] // 3, shape[0] - 1)]
    if len(shape) >= 2:
        indices.append((slice(None), slice(1, shape[1] - 1)))
    return indices


def ref_keys(master: pc.MasterKey, signer: pc.SigningKey) -> dict[str, dict[str, str]]:
    """What the reference saves with (its dialect)."""
    return {"enc_key": master.to_jwk("reference"), "sign_key": signer.to_jwk("reference")}


def reader_keys(master: pc.MasterKey, signer: pc.SigningKey, dialect: str = "reference") -> dict[str, dict[str, str]]:
    """What a consumer loads with: the master key and the public half of the signing key."""
    return {"enc_key": master.to_jwk(dialect), "sign_key": signer.verify_key.to_jwk(dialect)}


def check_ours(path: Path, config: Any, expected: Mapping[str, Any], frontend: ModuleType = our_np) -> None:
    """Every load path of ours gives ``expected``: load_file, load(bytes), get_tensor and get_slice."""
    framework = "pt" if frontend is our_pt else "np"
    assert_same(expected, frontend.load_file(path, config=config))
    assert_same(expected, frontend.load(path.read_bytes(), config=config))
    with pc.safe_open(path, framework, config=config) as f:
        assert sorted(f.keys()) == sorted(expected)
        assert_same(expected, {name: f.get_tensor(name) for name in expected})
        for name, tensor in expected.items():
            view = f.get_slice(name)
            assert view.get_shape() == list(tensor.shape)
            for index in slice_indices(tuple(tensor.shape)):
                if not isinstance(f, pc.safe_open) and 0 in tensor[index].shape:
                    continue  # plain files go to safetensors, which refuses empty selections
                assert fingerprint(view[index]) == fingerprint(tensor[index]), (name, index)


def check_reference(path: Path, keys: dict[str, Any], expected: Mapping[str, Any], framework: str = "np") -> tuple:
    """The reference loads ``expected`` with a config, and with the same keys from CRYPTOTENSOR_KEYS.

    Returns the reference's view of the metadata: (user metadata, reserved metadata).
    """
    with cryptotensors.safe_open(str(path), framework, config=keys) as f:
        assert sorted(f.keys()) == sorted(expected)
        assert_same(expected, {name: f.get_tensor(name) for name in expected})
        metadata = f.metadata(), f.reserved_metadata()
    frontend = ref_pt if framework == "pt" else ref_np
    with pytest.MonkeyPatch.context() as patch:  # its load_file / load take no config: keys come from the env
        patch.setenv("CRYPTOTENSOR_KEYS", json.dumps({"keys": list(keys.values())}))
        assert_same(expected, frontend.load_file(str(path)))
        if not any(getattr(t, "dtype", None) == torch.float8_e8m0fnu for t in expected.values()):
            # Its torch load(bytes) has no F8_E8M0 in its dtype table (KeyError 'F8_E8M0'); load_file has.
            assert_same(expected, frontend.load(path.read_bytes()))
    return metadata


# ---------------------------------------------------------------------------------- reference writes, ours reads

REFERENCE_OPTIONS = [
    pytest.param({}, id="default"),
    pytest.param({"tensors": PARTIAL}, id="partial"),
    pytest.param({"tensors": []}, id="nothing-encrypted"),  # the reference then writes a plain safetensors file
    pytest.param({"version": "1"}, id="v1"),
    pytest.param({"version": "2"}, id="v2"),
    pytest.param({"chunk_size": CHUNK}, id="chunk64"),
    pytest.param({"chunk_size": 1}, id="chunk1"),
    pytest.param({"version": "1", "chunk_size": CHUNK}, id="v1-chunk-ignored"),
    pytest.param({"tensors": PARTIAL, "chunk_size": CHUNK}, id="partial-chunk64"),
    pytest.param({"policy": {"local": ALLOW}}, id="policy"),
    pytest.param({"policy": {"local": ALLOW, "remote": ALLOW}}, id="policy-both"),
]


@pytest.mark.parametrize("dialect", ["reference", "rfc"])
@pytest.mark.parametrize("options", REFERENCE_OPTIONS)
def test_reference_file_loads_in_ours(tmp_path, master_key, signing_key, options, dialect):
    tensors, path = sample(), tmp_path / "ref.cts"
    ref_np.save_file(tensors, str(path), config={**ref_keys(master_key, signing_key), **options})
    config = reader_keys(master_key, signing_key, dialect)
    check_ours(path, config, tensors)
    with pc.safe_open(path, "np", config=config) as f:
        assert f.metadata() is None
        if options.get("tensors") == []:  # the reference writes a plain file: safetensors' own handle opens it
            assert not isinstance(f, pc.safe_open)
        else:
            crypto = f.crypto_header()
            assert sorted(crypto.encrypted) == sorted(options.get("tensors", tensors))
            assert crypto.version == options.get("version", "2")
            assert crypto.policy_local == options.get("policy", {}).get("local", "package model\nallow = true")


@pytest.mark.parametrize("version", ["1", "2"])
@pytest.mark.parametrize("alg", ALGORITHMS)
def test_reference_algorithm_loads_in_ours(tmp_path, signing_key, alg, version):
    master_key = pc.generate_master_key(alg, kid="enc-alg")
    tensors, path = sample(), tmp_path / "ref.cts"
    ref_np.save_file(tensors, str(path), config={**ref_keys(master_key, signing_key), "version": version,
                                                 "chunk_size": CHUNK})  # fmt: skip
    for dialect in ("reference", "rfc"):
        check_ours(path, reader_keys(master_key, signing_key, dialect), tensors)
    with pc.safe_open(path, "np", config=reader_keys(master_key, signing_key)) as f:
        assert f.crypto_header().cipher.name == alg


@pytest.mark.parametrize("options", [{}, {"tensors": PARTIAL}], ids=["all", "partial"])
def test_reference_metadata_loads_in_ours(tmp_path, config, load_config, options):
    tensors, path = sample(), tmp_path / "ref.cts"
    ref_np.save_file(tensors, str(path), metadata=METADATA, config={**config, **options})
    check_ours(path, load_config, tensors)
    with pc.safe_open(path, "np", config=load_config) as f:
        assert f.metadata() == METADATA


@pytest.mark.parametrize("version", ["1", "2"])
def test_reference_zero_size_tensors_load_in_ours_every_time(tmp_path, config, load_config, version):
    # Several zero-size tensors share one offset; the reference signs them in its own tie order. Its verifier
    # breaks such ties at random (so it fails on its own file most of the time); ours must verify every time.
    rng = np.random.default_rng(3)
    tensors = {f"empty_{np.dtype(t).name}": np.zeros((0,), t) for t in (np.float64, np.float32, np.int8, np.bool_)}
    tensors |= {
        "empty_matrix": np.zeros((0, 3), np.float32),  # ties with empty_float32 on dtype as well
        "empty_u16": np.zeros((2, 0), np.uint16),
        "weight": rand(rng, np.float32, (4,)),
        "bytes": rand(rng, np.uint8, (3,)),
    }
    path = tmp_path / "ref.cts"
    ref_np.save_file(tensors, str(path), config={**config, "version": version})
    for _ in range(20):
        assert_same(tensors, our_np.load_file(path, config=load_config))
    check_ours(path, load_config, tensors)
    check_ours(path, load_config, {name: torch.from_numpy(t) for name, t in tensors.items()}, our_pt)


@pytest.mark.parametrize("dtype", NUMPY_DTYPES, ids=lambda t: np.dtype(t).name)
def test_reference_numpy_dtype_loads_in_ours(tmp_path, config, load_config, dtype):
    tensors, path = dtype_sample(dtype), tmp_path / "ref.cts"
    tensors["empty"] = np.zeros((0, 2), dtype)
    ref_np.save_file(tensors, str(path), config={**config, "chunk_size": 16})
    check_ours(path, load_config, tensors)


@pytest.mark.parametrize("dtype", TORCH_ONLY_DTYPES, ids=str)
def test_reference_torch_dtype_loads_in_ours(tmp_path, config, load_config, dtype):
    tensors, path = dtype_sample(dtype), tmp_path / "ref.cts"
    ref_pt.save_file(tensors, str(path), config={**config, "chunk_size": 16})
    check_ours(path, load_config, tensors, our_pt)
    assert_same(tensors, our_np.load_file(path, config=load_config))  # numpy (ml_dtypes) has the same bits


@pytest.mark.parametrize("framework", ["np", "pt"])
def test_reference_all_dtypes_in_one_file_load_in_ours(tmp_path, config, load_config, framework):
    path = tmp_path / "ref.cts"
    if framework == "np":
        tensors = all_dtypes_sample(NUMPY_DTYPES)
        ref_np.save_file(tensors, str(path), config=config)
    else:
        tensors = all_dtypes_sample(TORCH_DTYPES)
        ref_pt.save_file(tensors, str(path), config=config)
    check_ours(path, load_config, tensors, our_np if framework == "np" else our_pt)


@pytest.mark.parametrize("decoys", [False, True], ids=["own-keys", "with-decoys"])
def test_reference_file_loads_in_ours_with_env_keys(tmp_path, monkeypatch, config, load_config, decoys):
    tensors, path = sample(), tmp_path / "ref.cts"
    ref_np.save_file(tensors, str(path), metadata=METADATA, config={**config, "tensors": PARTIAL})
    keys = list(load_config.values())
    if decoys:  # other publishers' keys listed first: both libraries pick the file's keys by kid
        others = reader_keys(pc.generate_master_key(kid="other-enc"), pc.generate_signing_key(kid="other-sign"))
        keys = [*others.values(), *keys]
    monkeypatch.setenv("CRYPTOTENSOR_KEYS", json.dumps({"keys": keys}))
    assert_same(tensors, ref_np.load_file(str(path)))  # the reference's own route
    check_ours(path, None, tensors)
    with pc.safe_open(path, "np") as f:
        assert f.metadata() == METADATA


@pytest.mark.parametrize("spelling", ["AES256GCM", "aes-256-gcm", "AES-128-GCM", "ChaCha20-Poly1305"])
def test_reference_alg_spelling_loads_in_ours(tmp_path, signing_key, spelling):
    # The reference stores the key's alg string as given in the header's enc.alg; its reader ignores case and '-'.
    master_key = pc.generate_master_key(spelling.lower().replace("-", ""), kid="enc-alg")
    tensors, path = sample(), tmp_path / "ref.cts"
    enc_key = {**master_key.to_jwk("reference"), "alg": spelling}
    ref_np.save_file(tensors, str(path), config={"enc_key": enc_key, "sign_key": signing_key.to_jwk("reference")})
    check_ours(path, reader_keys(master_key, signing_key, "rfc"), tensors)


def test_keys_without_kid_interoperate(tmp_path):
    # Without a kid, the header names no key: a reader uses the one key it was given.
    master_key, signing_key = pc.generate_master_key(), pc.generate_signing_key()
    master_key, signing_key = pc.MasterKey(master_key.secret), pc.SigningKey(signing_key.private)
    tensors, config = sample(), reader_keys(master_key, signing_key)
    ref_np.save_file(tensors, str(tmp_path / "ref.cts"), config=ref_keys(master_key, signing_key))
    check_ours(tmp_path / "ref.cts", config, tensors)
    our_np.save_file(tensors, tmp_path / "ours.cts", config=ref_keys(master_key, signing_key))
    _, reserved = check_reference(tmp_path / "ours.cts", config, tensors)
    assert "kid" not in json.loads(reserved["__crypto_keys__"])["enc"]


# ---------------------------------------------------------------------------------- ours writes, reference reads

OUR_OPTIONS = [
    pytest.param({}, id="default"),
    pytest.param({"tensors": PARTIAL}, id="partial"),
    pytest.param({"tensors": []}, id="nothing-encrypted"),  # still signed; the reference reads it with keys
    pytest.param({"version": "1"}, id="v1"),
    pytest.param({"version": "2"}, id="v2"),
    pytest.param({"chunk_size": 1}, id="chunk1"),
    pytest.param({"chunk_size": CHUNK}, id="chunk64"),
    pytest.param({"chunk_size": 4096}, id="chunk4096"),
    pytest.param({"version": "1", "chunk_size": CHUNK}, id="v1-chunk"),
    pytest.param({"tensors": PARTIAL, "chunk_size": CHUNK}, id="partial-chunk64"),
    pytest.param({"policy": {"local": ALLOW}}, id="policy"),
    pytest.param({"policy": {"local": ALLOW, "remote": ALLOW}}, id="policy-both"),
    pytest.param({"integrity": False}, id="no-integrity"),
    pytest.param({"tensors": PARTIAL, "integrity": False}, id="partial-no-integrity"),
]


@pytest.mark.parametrize("dialect", ["rfc", "reference"])
@pytest.mark.parametrize("options", OUR_OPTIONS)
def test_our_file_loads_in_reference(tmp_path, master_key, signing_key, options, dialect):
    tensors, path = sample(), tmp_path / "ours.cts"
    keys = {"enc_key": master_key.to_jwk(dialect), "sign_key": signing_key.to_jwk(dialect)}
    our_np.save_file(tensors, path, config={**keys, **options})
    metadata, reserved = check_reference(path, reader_keys(master_key, signing_key), tensors)
    assert metadata is None
    crypto_keys = json.loads(reserved["__crypto_keys__"])
    assert crypto_keys["version"] == options.get("version", "2")
    assert sorted(json.loads(reserved["__encryption__"])) == sorted(options.get("tensors", tensors))
    # Our integrity extension (digests of the plaintext tensors) is signed metadata the reference passes over.
    has_plain_tensors = options.get("tensors") is not None
    assert ("__pycryptotensors__" in reserved) == (has_plain_tensors and options.get("integrity", True))


@pytest.mark.parametrize("version", ["1", "2"])
@pytest.mark.parametrize("alg", ALGORITHMS)
@pytest.mark.parametrize("dialect", ["rfc", "reference"])
def test_our_algorithm_loads_in_reference(tmp_path, signing_key, alg, version, dialect):
    master_key = pc.generate_master_key(alg, kid="enc-alg")
    tensors, path = sample(), tmp_path / "ours.cts"
    keys = {"enc_key": master_key.to_jwk(dialect), "sign_key": signing_key.to_jwk(dialect)}
    our_np.save_file(tensors, path, config={**keys, "version": version, "chunk_size": CHUNK})
    _, reserved = check_reference(path, reader_keys(master_key, signing_key), tensors)
    assert json.loads(reserved["__crypto_keys__"])["enc"]["alg"] == alg


@pytest.mark.parametrize("options", [{}, {"tensors": PARTIAL}], ids=["all", "partial"])
def test_our_metadata_loads_in_reference(tmp_path, config, load_config, options):
    tensors, path = sample(), tmp_path / "ours.cts"
    our_np.save_file(tensors, path, metadata=METADATA, config={**config, **options})
    metadata, _ = check_reference(path, load_config, tensors)
    assert metadata == METADATA


@pytest.mark.parametrize("version", ["1", "2"])
def test_our_zero_size_tensors_load_in_reference(tmp_path, config, load_config, version):
    # Not tested, because the reference cannot do it: (1) zero-size tensors sharing an offset -- its verifier
    # orders such ties at random and fails on its own files most of the time -- so here each one has an offset
    # of its own; (2) its torch loader on encrypted zero-size tensors ("both buffer length (0) and count (-1)
    # must not be 0"), so it reads them with numpy ("np").
    rng = np.random.default_rng(4)
    tensors = {
        "empty_f64": np.zeros((0,), np.float64),  # [0, 0]
        "weight": rand(rng, np.float32, (3,)),  # [0, 12]
        "empty_i8": np.zeros((0, 3), np.int8),  # [12, 12]
        "bytes": rand(rng, np.uint8, (2,)),  # [12, 14]
        "empty_bool": np.zeros((0,), np.bool_),  # [14, 14]
    }
    path = tmp_path / "ours.cts"
    our_np.save_file(tensors, path, config={**config, "version": version})
    for _ in range(5):  # no tie: the reference's random tie break must not matter
        check_reference(path, load_config, tensors)


@pytest.mark.parametrize("dtype", NUMPY_DTYPES, ids=lambda t: np.dtype(t).name)
def test_our_numpy_dtype_loads_in_reference(tmp_path, config, load_config, dtype):
    tensors, path = dtype_sample(dtype), tmp_path / "ours.cts"
    tensors["empty"] = np.zeros((0, 2), dtype)  # the only zero-size tensor: no tie
    our_np.save_file(tensors, path, config={**config, "chunk_size": 16})
    check_reference(path, load_config, tensors)


@pytest.mark.parametrize("dtype", TORCH_ONLY_DTYPES, ids=str)
def test_our_torch_dtype_loads_in_reference(tmp_path, config, load_config, dtype):
    tensors, path = dtype_sample(dtype), tmp_path / "ours.cts"
    our_pt.save_file(tensors, path, config={**config, "chunk_size": 16})
    check_reference(path, load_config, tensors, "pt")


@pytest.mark.parametrize("framework", ["np", "pt"])
def test_our_all_dtypes_in_one_file_load_in_reference(tmp_path, config, load_config, framework):
    path = tmp_path / "ours.cts"
    if framework == "np":
        tensors = all_dtypes_sample(NUMPY_DTYPES)
        our_np.save_file(tensors, path, config=config)
    else:
        tensors = all_dtypes_sample(TORCH_DTYPES)
        our_pt.save_file(tensors, path, config=config)
    check_reference(path, load_config, tensors, framework)
