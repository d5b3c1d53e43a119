"""Parity with safetensors and with the reference library (issue 12): code written for either switches by
changing the import, and a call behaves the same for plain and encrypted files.

F4 in torch; the reference's JWK aliases, save options (enc_kid, sign_kid, enc_jku) and config objects;
device arguments normalised once for every entry point; safetensors' error types for a missing tensor and for
shared / non-contiguous tensors; a broken settings file that warns for plain loads and fails encrypted ones.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import struct
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import cryptotensors
import cryptotensors.torch as ref_pt
import numpy as np
import pytest
import safetensors
import safetensors.numpy
import safetensors.torch
import torch

import pycryptotensors as pc
import pycryptotensors.numpy as our_np
import pycryptotensors.torch as our_pt


def header(data: bytes) -> dict[str, Any]:
    size = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8 : 8 + size])


def f4_tensor() -> torch.Tensor:
    return torch.arange(24, dtype=torch.uint8).reshape(2, 3, 4).view(torch.float4_e2m1fn_x2)


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


# ---------------------------------------------------------------------------------------------------------- F4


def test_f4_torch_round_trip_and_shape_convention(config: dict, load_config: dict, tmp_path: Path) -> None:
    t = f4_tensor()
    data = our_pt.save({"f4": t, "x": torch.ones(3)}, config=config)
    entry = header(data)["f4"]
    assert entry["dtype"] == "F4"
    assert entry["shape"] == header(safetensors.torch.save({"f4": t}))["f4"]["shape"] == [2, 3, 8]
    assert same_bytes(our_pt.load(data, config=load_config)["f4"], t)
    path = tmp_path / "f4.safetensors"
    our_pt.save_file({"f4": t}, path, config=config)
    assert same_bytes(our_pt.load_file(path, config=load_config)["f4"], t)
    with pc.safe_open(path, "pt", config=load_config) as f:
        assert f.get_slice("f4").get_dtype() == "F4"
        assert same_bytes(f.get_tensor("f4"), t)


def test_f4_torch_interop_with_reference_both_ways(config: dict, load_config: dict, tmp_path: Path) -> None:
    t = f4_tensor()
    ref_pt.save_file({"f4": t}, str(tmp_path / "ref.safetensors"), config=config)
    assert same_bytes(our_pt.load_file(tmp_path / "ref.safetensors", config=load_config)["f4"], t)
    our_pt.save_file({"f4": t}, tmp_path / "ours.safetensors", config=config)
    with cryptotensors.safe_open(str(tmp_path / "ours.safetensors"), "pt", config=load_config) as f:
        assert same_bytes(f.get_tensor("f4"), t)


def test_f4_plain_file_from_safetensors_loads_the_same(tmp_path: Path) -> None:
    t = f4_tensor()
    safetensors.torch.save_file({"f4": t}, tmp_path / "plain.safetensors")
    assert same_bytes(our_pt.load_file(tmp_path / "plain.safetensors")["f4"], t)


# ------------------------------------------------------------------------------------- the reference's config


def aliased(jwk: dict[str, str]) -> dict[str, str]:
    names = {"k": "key", "x": "public", "d": "private"}
    return {names.get(k, k): v for k, v in jwk.items()}


def test_reference_jwk_aliases_key_public_private(
    master_key: pc.MasterKey, signing_key: pc.SigningKey, tmp_path: Path
) -> None:
    save_cfg = {
        "enc_key": aliased(master_key.to_jwk("reference")),
        "sign_key": aliased(signing_key.to_jwk("reference")),
    }
    assert "key" in save_cfg["enc_key"] and "private" in save_cfg["sign_key"]
    load_cfg = {
        "enc_key": aliased(master_key.to_jwk("reference")),
        "sign_key": aliased(signing_key.verify_key.to_jwk("reference")),
    }
    tensors = {"w": np.arange(10, dtype=np.float32)}
    our_np.save_file(tensors, tmp_path / "a.safetensors", config=save_cfg)
    np.testing.assert_array_equal(our_np.load_file(tmp_path / "a.safetensors", config=load_cfg)["w"], tensors["w"])
    # the reference reads it with the same aliased config
    with cryptotensors.safe_open(str(tmp_path / "a.safetensors"), "np", config=load_cfg) as f:
        np.testing.assert_array_equal(f.get_tensor("w"), tensors["w"])
    bad = dict(save_cfg, enc_key={**save_cfg["enc_key"], "k": "AAAA"})
    with pytest.raises(pc.ConfigError, match="alias"):
        our_np.save(tensors, config=bad)


def test_enc_kid_sign_kid_enc_jku_written_in_header(master_key: pc.MasterKey, signing_key: pc.SigningKey) -> None:
    enc = {k: v for k, v in master_key.to_jwk("reference").items() if k != "kid"}
    sign = {k: v for k, v in signing_key.to_jwk("reference").items() if k != "kid"}
    cfg = {"enc_key": enc, "sign_key": sign, "enc_kid": "E-1", "sign_kid": "S-1", "enc_jku": "https://ks.example/"}
    data = our_np.save({"w": np.ones(4, np.float32)}, config=cfg)
    keys = json.loads(header(data)["__metadata__"]["__crypto_keys__"])
    assert keys["enc"]["kid"] == "E-1" and keys["sign"]["kid"] == "S-1"
    assert keys["enc"]["jku"] == "https://ks.example/"
    with pytest.raises(pc.ConfigError, match="enc_kid"):  # the key's own kid differs
        our_np.save({"w": np.ones(1)}, config={"enc_key": master_key.to_jwk(), "sign_key": sign, "enc_kid": "other"})
    with pytest.raises(pc.ConfigError, match="key_service"):
        our_np.save({"w": np.ones(1)}, config={**cfg, "key_service": "https://elsewhere/"})


def test_enc_kid_picks_a_key_from_the_environment(
    signing_key: pc.SigningKey, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    first, second = pc.generate_master_key(kid="first"), pc.generate_master_key(kid="second")
    ring = [first.to_jwk(), second.to_jwk(), signing_key.to_jwk()]
    monkeypatch.setenv("CRYPTOTENSOR_KEYS", json.dumps({"keys": ring}))
    with pytest.raises(pc.MissingKeyError):  # two master keys: which one is ambiguous
        our_np.save({"w": np.ones(2)})
    data = our_np.save({"w": np.ones(2)}, config={"enc_kid": "second"})
    assert json.loads(header(data)["__metadata__"]["__crypto_keys__"])["enc"]["kid"] == "second"
    with pytest.raises(pc.MissingKeyError, match="third"):
        our_np.save({"w": np.ones(2)}, config={"enc_kid": "third"})


def test_reference_config_objects(config: dict, load_config: dict, tmp_path: Path) -> None:
    tensors = {"w": torch.arange(6, dtype=torch.float32)}
    ser = cryptotensors.SerializeCryptoConfig(enc_key=config["enc_key"], sign_key=config["sign_key"], chunk_size=64)
    de = cryptotensors.DeserializeCryptoConfig(enc_key=load_config["enc_key"], sign_key=load_config["sign_key"])
    our_pt.save_file(tensors, tmp_path / "a.safetensors", config=ser)
    assert torch.equal(our_pt.load_file(tmp_path / "a.safetensors", config=de)["w"], tensors["w"])
    assert torch.equal(our_pt.load(our_pt.save(tensors, config=ser), config=de)["w"], tensors["w"])
    with pc.safe_open(tmp_path / "a.safetensors", "pt", config=de) as f:
        assert torch.equal(f.get_tensor("w"), tensors["w"])
    # recognised by name and shape: the reference need not be installed
    clone = type("DeserializeCryptoConfig", (), {"to_dict": lambda self: dict(load_config)})()
    assert torch.equal(our_pt.load_file(tmp_path / "a.safetensors", config=clone)["w"], tensors["w"])


# ------------------------------------------------------------------------------------------------------ devices


@pytest.fixture
def files(config: dict, tmp_path: Path) -> dict[str, Path]:
    tensors = {"w": torch.arange(8, dtype=torch.float32)}
    safetensors.torch.save_file(tensors, tmp_path / "plain.safetensors")
    our_pt.save_file(tensors, tmp_path / "enc.safetensors", config=config)
    return {"plain": tmp_path / "plain.safetensors", "encrypted": tmp_path / "enc.safetensors"}


def via_load_file(path: Path, device: Any, cfg: dict) -> torch.Tensor:
    return our_pt.load_file(path, device=device, config=cfg)["w"]


def via_safe_open(path: Path, device: Any, cfg: dict) -> torch.Tensor:
    with pc.safe_open(path, "pt", device=device, config=cfg) as f:
        return f.get_tensor("w")


def via_slice(path: Path, device: Any, cfg: dict) -> torch.Tensor:
    with pc.safe_open(path, "pt", device=device, config=cfg) as f:
        return f.get_slice("w")[:]


def via_numpy(path: Path, device: Any, cfg: dict) -> torch.Tensor:
    return torch.from_numpy(our_np.load_file(path, device=device, config=cfg)["w"])


ENTRY_POINTS = [via_load_file, via_safe_open, via_slice]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("device", ["cpu", "cpu:0", torch.device("cpu"), torch.device("cpu", 0)])
@pytest.mark.parametrize("kind", ["plain", "encrypted"])
def test_cpu_device_spellings(files: dict, load_config: dict, kind: str, device: Any, entry: Any) -> None:
    tensor = entry(files[kind], device, load_config)
    assert tensor.device.type == "cpu" and torch.equal(tensor, torch.arange(8, dtype=torch.float32))


@pytest.mark.parametrize("entry", [*ENTRY_POINTS, via_numpy])
@pytest.mark.parametrize("device", ["0", "gpu", "nonsense", -1, True, "cuda:x", None])
@pytest.mark.parametrize("kind", ["plain", "encrypted"])
def test_invalid_device_is_config_error_for_both(
    files: dict, load_config: dict, kind: str, device: Any, entry: Any
) -> None:
    with pytest.raises(pc.ConfigError, match="invalid device"):
        entry(files[kind], device, load_config)


def test_device_name_normalisation() -> None:
    from pycryptotensors.config import device_name

    assert device_name(0) == device_name("cuda:0") == device_name(torch.device("cuda", 0)) == "cuda:0"
    assert device_name(3) == "cuda:3" and device_name("cuda") == "cuda"
    assert device_name("cpu") == device_name("cpu:0") == device_name(torch.device("cpu")) == "cpu"


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("device", [0, "cuda:0", torch.device("cuda", 0)])
@pytest.mark.parametrize("kind", ["plain", "encrypted"])
def test_cuda_device_the_same_for_plain_and_encrypted(
    files: dict, load_config: dict, kind: str, device: Any, entry: Any
) -> None:
    if torch.cuda.is_available():  # on a GPU machine both land on cuda:0
        tensor = entry(files[kind], device, load_config)
        assert tensor.device == torch.device("cuda", 0)
        assert torch.equal(tensor.cpu(), torch.arange(8, dtype=torch.float32))
    else:  # without one both are refused the same way (a DeviceError is also a RuntimeError, as torch's)
        with pytest.raises(pc.DeviceError, match="cuda:0"):
            entry(files[kind], device, load_config)


# -------------------------------------------------------------------------------------------- missing tensors


@pytest.mark.parametrize("framework", ["np", "pt"])
@pytest.mark.parametrize("kind", ["plain", "encrypted"])
def test_missing_tensor_name_raises_safetensors_error(
    files: dict, load_config: dict, kind: str, framework: str
) -> None:
    """A plain file opens as safetensors' own handle, so its error is safetensors' own; an encrypted file's is
    TensorNotFoundError, which is also a SafetensorError: ``except SafetensorError`` catches both."""
    with pc.safe_open(files[kind], framework, config=load_config) as f:
        for get in (f.get_tensor, f.get_slice):
            expected = pc.TensorNotFoundError if kind == "encrypted" else safetensors.SafetensorError
            with pytest.raises(expected, match="does not contain tensor nope") as caught:
                get("nope")
            assert isinstance(caught.value, safetensors.SafetensorError)  # what safetensors raises
            if kind == "encrypted":
                assert isinstance(caught.value, KeyError)  # what this library raised before


def test_missing_tensor_error_type_matches_safetensors(files: dict) -> None:
    with safetensors.safe_open(files["plain"], "pt") as f, pytest.raises(safetensors.SafetensorError) as theirs:
        f.get_tensor("nope")
    with pc.safe_open(files["plain"], "pt") as f, pytest.raises(safetensors.SafetensorError) as ours:
        f.get_tensor("nope")
    assert str(theirs.value) in str(ours.value)


# ------------------------------------------------------------------------------- shared / non-contiguous saves


def refusals(tensors: dict[str, torch.Tensor], config: dict) -> tuple[BaseException, BaseException]:
    with pytest.raises(Exception) as theirs:
        safetensors.torch.save(tensors)
    with pytest.raises(Exception) as ours:
        our_pt.save(tensors, config=config)
    return theirs.value, ours.value


@pytest.mark.parametrize(
    "make",
    [
        lambda x: {"a": x, "b": x},
        lambda x: {"a": x, "b": x[0]},
        lambda x: {"a": x.view(-1)[:4], "b": x.view(-1)[2:]},
    ],
    ids=["same", "view", "overlap"],
)
def test_shared_tensors_refused_as_safetensors_does(config: dict, make: Any) -> None:
    theirs, ours = refusals(make(torch.arange(6.0).reshape(2, 3).contiguous()), config)
    assert type(theirs) is RuntimeError and isinstance(ours, RuntimeError) and isinstance(ours, pc.SharedTensorsError)
    groups = re.compile(r"\[\{.*?\}\]")  # the sets of names, whose print order is not fixed
    assert groups.sub("[...]", str(ours)) == groups.sub("[...]", str(theirs))
    assert groups.search(str(ours)) and set(re.findall(r"'(\w)'", str(ours))) == set(re.findall(r"'(\w)'", str(theirs)))


def test_disjoint_views_of_one_storage_are_not_shared(config: dict, load_config: dict) -> None:
    x = torch.arange(6.0).reshape(2, 3)
    tensors = {"a": x[0], "b": x[1]}
    safetensors.torch.save(tensors)  # safetensors accepts these
    loaded = our_pt.load(our_pt.save(tensors, config=config), config=load_config)
    assert torch.equal(loaded["a"], x[0]) and torch.equal(loaded["b"], x[1])


@pytest.mark.parametrize("make", [lambda x: x.t(), lambda x: x[:, 1]], ids=["transposed", "strided"])
def test_non_contiguous_refused_as_safetensors_does(config: dict, make: Any) -> None:
    theirs, ours = refusals({"a": make(torch.arange(6.0).reshape(2, 3))}, config)
    assert type(theirs) is ValueError and isinstance(ours, ValueError) and isinstance(ours, pc.UnsupportedError)
    assert str(ours) == str(theirs)


def test_non_tensor_refused_as_safetensors_does(config: dict) -> None:
    theirs, ours = refusals({"a": [1, 2]}, config)  # type: ignore[dict-item]
    assert isinstance(theirs, ValueError) and isinstance(ours, ValueError)
    assert str(ours) == str(theirs)


# ---------------------------------------------------------------------------------------- broken settings file


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("trusted_signer = []\nkey_dirs = []\n", "did you mean 'trusted_signers'"),
        ("key_dir = []\n", "did you mean 'key_dirs'"),
        ("key_dirs = [\n", "not valid TOML"),
        ('require_encryption = "yes"\n', "require_encryption must be true or false"),
    ],
    ids=["typo-signers", "typo-key-dirs", "not-toml", "bad-value"],
)
def test_broken_settings_warn_for_plain_and_refuse_encrypted(
    files: dict, load_config: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, expected: str
) -> None:
    settings = tmp_path / "broken.toml"
    settings.write_text(text)
    monkeypatch.setenv("PYCRYPTOTENSORS_CONFIG", str(settings))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert torch.equal(our_pt.load_file(files["plain"])["w"], torch.arange(8, dtype=torch.float32))
        assert torch.equal(our_pt.load_file(files["plain"])["w"], torch.arange(8, dtype=torch.float32))
        np.testing.assert_array_equal(our_np.load(safetensors.numpy.save({"v": np.ones(2)}))["v"], np.ones(2))
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(messages) == 1, messages  # one warning per version of the file, not one per load
    assert str(settings) in messages[0] and expected in messages[0]
    with pytest.raises(pc.ConfigError, match=expected):  # encrypted files fail closed
        our_pt.load_file(files["encrypted"], config=load_config)


def test_broken_settings_keep_require_encryption(files: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The valid part of a file with a typo still applies: plain files stay refused when encryption is required."""
    settings = tmp_path / "typo.toml"
    settings.write_text("require_encryption = true\ntrusted_signer = []\n")
    monkeypatch.setenv("PYCRYPTOTENSORS_CONFIG", str(settings))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(pc.NotEncryptedError):
            our_pt.load_file(files["plain"])


# ------------------------------------------------------------------------------------------ framework names


@pytest.mark.parametrize(
    ("name", "kind"),
    [("np", np.ndarray), ("numpy", np.ndarray), ("pt", torch.Tensor), ("torch", torch.Tensor),
     ("pytorch", torch.Tensor)],
)  # fmt: skip
def test_every_safetensors_framework_name(files: dict, load_config: dict, name: str, kind: type) -> None:
    for path in files.values():
        with pc.safe_open(path, name, config=load_config) as f:
            assert isinstance(f.get_tensor("w"), kind)


def test_unknown_framework_name_refused(files: dict, load_config: dict) -> None:
    with pytest.raises(pc.UnsupportedError, match="unsupported framework 'paddlepaddle'"):
        pc.safe_open(files["encrypted"], "paddlepaddle", config=load_config)


def test_framework_front_ends_import_their_framework_lazily() -> None:
    """``import pycryptotensors.flax`` (etc.) costs nothing and works without the framework installed."""
    code = (
        "import sys, pycryptotensors.flax, pycryptotensors.tensorflow, pycryptotensors.paddle, pycryptotensors.mlx\n"
        "loaded = {'jax', 'tensorflow', 'paddle', 'mlx', 'mlx.core'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
        "for m in (pycryptotensors.flax, pycryptotensors.tensorflow, pycryptotensors.paddle, pycryptotensors.mlx):\n"
        "    assert all(callable(getattr(m, f)) for f in ('save_file', 'save', 'load_file', 'load'))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYCRYPTOTENSORS_TRANSPARENT": "0"})


@pytest.mark.parametrize(("name", "package"), [("flax", "jax"), ("jax", "jax"), ("tf", "tensorflow-cpu"),
                                               ("tensorflow", "tensorflow-cpu"), ("paddle", "paddlepaddle"),
                                               ("mlx", "mlx")])  # fmt: skip
def test_missing_framework_is_a_clear_error(files: dict, load_config: dict, name: str, package: str) -> None:
    if importlib.util.find_spec(package.split("-")[0].replace("paddlepaddle", "paddle")) is not None:
        pytest.skip(f"{package} is installed here (tests/test_frameworks.py covers it)")
    with (
        pc.safe_open(files["encrypted"], name, config=load_config) as f,
        pytest.raises(pc.UnsupportedError, match=f"pip install {re.escape(package)}"),
    ):
        f.get_tensor("w")
