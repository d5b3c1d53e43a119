"""Round trips of real data through our writer and reader: dtypes, odd shapes, chunk boundaries, slices."""

from __future__ import annotations

import os

import ml_dtypes
import numpy as np
import pytest
import torch

import pycryptotensors as pc
import pycryptotensors.numpy as ct_np
import pycryptotensors.torch as ct_pt
from helpers import same
from pycryptotensors.cipher import chunks as chunk_module

RNG = np.random.default_rng(20251125)
NUMPY_DTYPES = [
    np.bool_,
    np.uint8,
    np.int8,
    np.int16,
    np.uint16,
    np.float16,
    ml_dtypes.bfloat16,
    np.int32,
    np.uint32,
    np.float32,
    np.float64,
    np.int64,
    np.uint64,
    ml_dtypes.float8_e4m3fn,
    ml_dtypes.float8_e5m2,
    ml_dtypes.float8_e8m0fnu,
    np.complex64,
]
TORCH_DTYPES = [
    torch.bool,
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.uint16,
    torch.float16,
    torch.bfloat16,
    torch.int32,
    torch.uint32,
    torch.float32,
    torch.float64,
    torch.int64,
    torch.uint64,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
    torch.float8_e8m0fnu,
    torch.complex64,
]
SHAPES = [(), (0,), (1,), (7,), (3, 0, 2), (5, 3), (2, 3, 4)]


def random_array(dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    raw = RNG.integers(0, 256, size=int(np.prod(shape)) * np.dtype(dtype).itemsize, dtype=np.uint8)
    if np.dtype(dtype) == np.bool_:
        raw = raw % 2
    array = raw.view(dtype).reshape(shape)
    if np.dtype(dtype).kind in "fc":  # no NaNs: they never compare equal
        array = np.where(np.isfinite(array.astype(np.complex128)), array, np.zeros((), dtype)).astype(dtype)
    return array


@pytest.mark.parametrize("version", ["1", "2"])
def test_every_numpy_dtype_and_shape(tmp_path, config, load_config, version):
    tensors = {f"{np.dtype(d).name}-{i}": random_array(d, s) for d in NUMPY_DTYPES for i, s in enumerate(SHAPES)}
    path = tmp_path / "all.ct"
    ct_np.save_file(tensors, path, metadata={"note": "ü"}, config={**config, "version": version, "chunk_size": 16})
    loaded = ct_np.load_file(path, config=load_config)
    assert set(loaded) == set(tensors)
    for name, array in tensors.items():
        assert same(loaded[name], array), name
    with pc.safe_open(path, "np", config=load_config) as f:
        assert f.metadata() == {"note": "ü"}
        assert f.crypto_header().version == version


def torch_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.reshape(-1).view(torch.uint8).numpy().tobytes()


def test_every_torch_dtype(tmp_path, config, load_config):
    tensors = {}
    for dtype in TORCH_DTYPES:
        for i, shape in enumerate(SHAPES):
            count = int(np.prod(shape))
            raw = torch.from_numpy(random_array(np.uint8, (max(1, count) * dtype.itemsize,)))
            flat = (raw % 2).bool() if dtype == torch.bool else raw.view(dtype)
            tensors[f"{dtype}-{i}"] = flat[:count].reshape(shape)
    path = tmp_path / "all-pt.ct"
    ct_pt.save_file(tensors, path, config=config)
    for loaded in (ct_pt.load_file(path, config=load_config), ct_pt.load(path.read_bytes(), config=load_config)):
        for name, tensor in tensors.items():
            got = loaded[name]
            assert got.dtype == tensor.dtype and got.shape == tensor.shape, name
            assert torch_bytes(got) == torch_bytes(tensor), name


CHUNK = 64


@pytest.mark.parametrize("nbytes", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 5])
@pytest.mark.parametrize("encrypted", [True, False])
def test_chunk_boundaries(tmp_path, config, load_config, nbytes, encrypted):
    data = {"x": random_array(np.uint8, (nbytes,)), "other": random_array(np.float32, (9,))}
    options = {**config, "chunk_size": CHUNK, "tensors": ["x"] if encrypted else ["other"]}
    blob = ct_np.save(data, config=options)
    for loaded in (ct_np.load(blob, config=load_config),):
        assert same(loaded["x"], data["x"])
    path = tmp_path / "b.ct"
    path.write_bytes(blob)
    with pc.safe_open(path, "np", config=load_config) as f:
        for start in range(0, nbytes, 13):
            for stop in (start + 1, start + CHUNK, nbytes):
                assert same(f.get_slice("x")[start:stop], data["x"][start:stop])


INDEXES = [
    (),
    Ellipsis,
    0,
    -1,
    3,
    slice(None),
    slice(2, 5),
    slice(-4, None),
    slice(None, None, 2),
    slice(1, 9, 3),
    slice(None, None, -1),
    slice(8, 1, -2),
    slice(100, 200),
    (slice(1, 3), 2),
    (Ellipsis, 1),
    (2, Ellipsis, 0),
    (slice(None), slice(None, None, -2), slice(1, 2)),
    (0, 0, 0),
    (-1, slice(3, 1, -1)),
    (slice(5, 2),),
]


@pytest.mark.parametrize("framework", ["np", "pt"])
def test_slices_match_numpy(tmp_path, config, load_config, framework):
    array = random_array(np.float32, (10, 7, 3))
    path = tmp_path / "s.ct"
    ct_np.save_file({"a": array, "scalar": np.array(2.5)}, path, config={**config, "chunk_size": 40})
    with pc.safe_open(path, framework, config=load_config) as f:
        part = f.get_slice("a")
        assert part.get_shape() == [10, 7, 3] and part.get_dtype() == "F32"
        for index in INDEXES:
            got = part[index]
            got = got.numpy() if framework == "pt" else got
            assert np.array_equal(got, array[index]), index
        assert float(f.get_slice("scalar")[()]) == 2.5
        for bad in [10, (0, 0, 0, 0), (Ellipsis, Ellipsis)]:
            with pytest.raises(IndexError):
                part[bad]
        with pytest.raises(TypeError):
            part[None]


def test_slice_decrypts_only_covering_chunks(tmp_path, config, load_config, monkeypatch):
    """A 1 KiB slice of a 64 MiB tensor reads and decrypts at most 2 chunks."""
    array = np.arange(16 * 1024 * 1024, dtype=np.float32).reshape(4096, 4096)
    path = tmp_path / "big.ct"
    ct_np.save_file({"big": array}, path, config=config)
    seen = []
    original = chunk_module.decrypt_chunks

    def counting(source, chunks, *args):
        seen.append(chunks.stop - chunks.first)
        return original(source, chunks, *args)

    monkeypatch.setattr("pycryptotensors.reading.reader.decrypt_chunks", counting)
    with pc.safe_open(path, "np", config=load_config) as f:
        got = f.get_slice("big")[1000:1001, 512:768]
    assert np.array_equal(got, array[1000:1001, 512:768])
    assert seen and max(seen) <= 2
    seen.clear()
    with pc.safe_open(path, "np", config=load_config) as f:
        f.get_tensor("big")
    assert sum(seen) == 64  # 64 MiB in 1 MiB chunks (the writer's default)


def test_returned_arrays_are_owned(tmp_path, config, load_config):
    """Writing to a returned array never changes what the next read returns (reference weakness 6)."""
    array = random_array(np.int32, (64,))
    path = tmp_path / "o.ct"
    ct_np.save_file({"a": array}, path, config=config)
    with pc.safe_open(path, "np", config=load_config) as f:
        for read in (lambda: f.get_tensor("a"), lambda: f.get_slice("a")[:], lambda: f.get_slice("a")[3:9]):
            first = read()
            assert first.flags.writeable
            first[...] = 0
        assert same(f.get_tensor("a"), array)
        assert same(f.get_slice("a")[3:9], array[3:9])
    with pc.safe_open(path, "pt", config=load_config) as f:
        t = f.get_tensor("a")
        t.zero_()
        assert same(f.get_tensor("a").numpy(), array)


def test_partial_encryption_and_integrity(tmp_path, config, load_config):
    tensors = {"enc": random_array(np.float32, (100,)), "norm": random_array(np.float32, (100,))}
    path = tmp_path / "p.ct"
    ct_np.save_file(tensors, path, config={**config, "tensors": ["enc"], "chunk_size": 128})
    with pc.safe_open(path, "np", config=load_config) as f:
        header = f.crypto_header()
        assert header.is_encrypted("enc") and not header.is_encrypted("norm")
        assert set(header.integrity.digests) == {"norm"}
        assert same(f.get_tensor("norm"), tensors["norm"])
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1  # the last byte belongs to "norm" (F32 tensors sorted by name: enc, norm)
    path.write_bytes(bytes(raw))
    with pc.safe_open(path, "np", config=load_config) as f, pytest.raises(pc.IntegrityError):
        f.get_tensor("norm")
    with pc.safe_open(path, "np", config=load_config) as f:
        assert same(f.get_slice("norm")[:10], tensors["norm"][:10])  # an untouched chunk still reads


def test_plain_files_go_to_safetensors(tmp_path):
    import safetensors.numpy

    array = random_array(np.float64, (4, 4))
    path = tmp_path / "plain.safetensors"
    safetensors.numpy.save_file({"a": array}, path, metadata={"format": "np"})
    assert same(ct_np.load_file(path)["a"], array)
    assert same(ct_np.load(path.read_bytes())["a"], array)
    with pc.safe_open(path, "np") as f, safetensors.safe_open(path, "np") as theirs:
        assert type(f) is type(theirs) and not isinstance(f, pc.safe_open)  # safetensors' own handle, untouched
        assert f.metadata() == {"format": "np"}
        assert same(f.get_slice("a")[1:3], array[1:3])


def test_save_is_atomic(tmp_path, config):
    path = tmp_path / "model.ct"
    ct_np.save_file({"a": np.ones(4, np.float32)}, path, config=config)
    before = path.read_bytes()
    with pytest.raises(pc.ConfigError):  # fails after planning, before anything reaches the final name
        ct_np.save_file({"a": np.ones(4, np.float32)}, path, config={**config, "tensors": ["missing"]})
    with pytest.raises(pc.UnsupportedError):
        ct_np.save_file({"a": np.ones(4, np.float32), "b": np.array(["x"])}, path, config=config)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["model.ct"]


def test_save_failure_midway_leaves_nothing(tmp_path, config, monkeypatch):
    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("pycryptotensors.writing.writer.encrypt_chunks", explode)
    with pytest.raises(OSError, match="disk full"):
        ct_np.save_file({"a": np.ones(4, np.float32)}, tmp_path / "m.ct", config=config)
    assert os.listdir(tmp_path) == []


def test_counter_starts_at_zero(tmp_path, config, load_config):
    """Our base counter is 0, so no tensor the format allows can overflow it (reference weakness 8)."""
    path = tmp_path / "c.ct"
    ct_np.save_file({"a": np.ones(1000, np.float32)}, path, config={**config, "chunk_size": 64})
    with pc.safe_open(path, "np", config=load_config) as f:
        assert f.crypto_header().encrypted["a"].iv[8:] == bytes(4)


def test_many_empty_tensors_always_verify(tmp_path, config, load_config):
    """Several zero-size tensors tie in offset order; verification must not depend on chance (weakness 5)."""
    tensors = {f"e{i}": np.zeros((0, i), dtype=d) for i, d in enumerate([np.int64, np.float32, np.float16, np.uint8])}
    tensors.update({f"z{i}": np.zeros(0, np.float32) for i in range(5)})
    path = tmp_path / "e.ct"
    ct_np.save_file(tensors, path, config=config)
    for _ in range(10):
        loaded = ct_np.load_file(path, config=load_config)
        assert all(same(loaded[k], v) for k, v in tensors.items())


def test_required_encryption_refuses_stripped_files(tmp_path, config, load_config):
    """A file stripped of its crypto header is plain safetensors; a consumer who requires encryption refuses it."""
    import safetensors.numpy

    path = tmp_path / "m.ct"
    ct_np.save_file({"w": np.ones(64, np.float32)}, path, config=config)
    with pc.safe_open(path, "np", config=load_config) as f:
        entry_bytes = f.get_tensor("w").nbytes
    stripped = tmp_path / "stripped.safetensors"
    ciphertext = np.frombuffer(path.read_bytes()[-entry_bytes:], dtype=np.float32)
    safetensors.numpy.save_file({"w": ciphertext}, stripped)
    strict = {**load_config, "require_encryption": True}
    for load in (lambda: ct_np.load_file(stripped, config=strict), lambda: ct_np.load(stripped.read_bytes(), strict)):
        with pytest.raises(pc.NotEncryptedError):
            load()
    with pytest.raises(pc.NotEncryptedError):
        pc.safe_open(stripped, "pt", config=strict)
    assert ct_np.load_file(path, config=strict)["w"].sum() == 64
