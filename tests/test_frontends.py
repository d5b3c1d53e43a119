"""One shape for all front-ends (issue 12, item 3): the front-end interface, ``safe_open`` as a factory,
one place resolving options, keys and trust, and the layering (format without ``cryptography``, writing
without reading); plus F4 outside torch and the reference's ``sign_jku``."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.numpy
import safetensors.torch
import torch

import pycryptotensors as pc
import pycryptotensors.numpy as ct_np
import pycryptotensors.torch as ct_pt
from pycryptotensors import _frontend
from pycryptotensors.config import LoadOptions
from pycryptotensors.keys.access import Access, resolve, resolve_trust
from pycryptotensors.reading import reader

SRC = Path(__file__).resolve().parents[1] / "src" / "pycryptotensors"
FRONT_ENDS = ["numpy", "torch", "flax", "tensorflow", "paddle", "mlx"]
ml_dtypes = pytest.importorskip("ml_dtypes")


@pytest.fixture
def keys() -> tuple[pc.MasterKey, pc.SigningKey]:
    return pc.generate_master_key(kid="m"), pc.generate_signing_key(kid="s")


@pytest.fixture
def config(keys) -> dict:
    return {"enc_key": keys[0], "sign_key": keys[1]}


@pytest.fixture
def load_config(keys) -> pc.KeyRing:
    return pc.KeyRing([keys[0], keys[1].verify_key])


# --------------------------------------------------------------------------------------- the front-end interface


@pytest.mark.parametrize("module", FRONT_ENDS)
def test_every_front_end_is_one_frontend_and_four_functions(module: str) -> None:
    """Each framework module is a Frontend subclass (the four hooks) and safetensors' four functions, no more
    shared logic of its own: importing the module needs no framework (they are imported on first use)."""
    front = importlib.import_module(f"pycryptotensors.{module}")
    assert isinstance(front.FRONTEND, _frontend.Frontend)
    assert type(front.FRONTEND).from_bytes is not _frontend.Frontend.from_bytes  # it says how arrays are made
    assert type(front.FRONTEND).to_bytes is not _frontend.Frontend.to_bytes
    assert front.FRONTEND.plain_module == module and isinstance(front.FRONTEND.name, str)
    for function in ("save_file", "save", "load_file", "load"):
        assert callable(getattr(front, function)), function
    assert _frontend.frontend(front.FRONTEND.name) is front.FRONTEND


@pytest.mark.parametrize("name", sorted(_frontend.FRAMEWORKS))
def test_every_framework_name_safetensors_accepts_has_a_frontend(name: str) -> None:
    assert isinstance(_frontend.frontend(name), _frontend.Frontend)


def test_an_unknown_framework_is_refused_with_the_names_that_work() -> None:
    with pytest.raises(pc.UnsupportedError, match=r"unsupported framework 'jaxx'.*flax"):
        _frontend.frontend("jaxx")


def _parameters(function) -> tuple[list[str], set[str]]:
    params = inspect.signature(function).parameters.values()
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return positional, {p.name for p in params if p.kind == p.KEYWORD_ONLY}


@pytest.mark.parametrize("module", ["numpy", "torch"])
@pytest.mark.parametrize("function", ["save_file", "save", "load_file", "load"])
def test_signatures_are_safetensors_own_plus_config(module: str, function: str) -> None:
    """safetensors' parameter names and order (a call written for it works unchanged, by keyword too), then
    ``config``; its keyword-only ones (``backend``) are there too. The other frameworks: tests/_frameworks_run.py."""
    ours = _parameters(getattr(importlib.import_module(f"pycryptotensors.{module}"), function))
    theirs = _parameters(getattr(importlib.import_module(f"safetensors.{module}"), function))
    assert ours[0][: len(theirs[0])] == theirs[0]
    assert ours[0][len(theirs[0])] == "config"
    assert theirs[1] <= ours[1]


# ------------------------------------------------------------------------------------------ safe_open, a factory


def test_a_plain_file_opens_as_safetensors_own_handle(tmp_path: Path) -> None:
    path = tmp_path / "plain.safetensors"
    safetensors.numpy.save_file({"a": np.arange(6, dtype=np.float32)}, path)
    with pc.safe_open(path, "np") as ours, safetensors.safe_open(path, "np") as theirs:
        assert type(ours) is type(theirs)
        assert not isinstance(ours, pc.safe_open)
        np.testing.assert_array_equal(ours.get_tensor("a"), theirs.get_tensor("a"))
        with pytest.raises(safetensors.SafetensorError) as caught:  # safetensors' own error, from its own handle
            ours.get_tensor("nope")
        assert type(caught.value) is safetensors.SafetensorError


def test_an_encrypted_file_opens_as_our_handle(tmp_path: Path, config: dict, load_config: pc.KeyRing) -> None:
    path = tmp_path / "enc.safetensors"
    ct_np.save_file({"a": np.arange(6, dtype=np.float32)}, path, config=config)
    with pc.safe_open(path, "np", config=load_config) as handle:
        assert isinstance(handle, pc.safe_open)
        assert handle.crypto_header() is not None
        with pytest.raises(pc.TensorNotFoundError):
            handle.get_tensor("nope")


def test_load_file_is_the_same_for_plain_and_encrypted(tmp_path: Path, config: dict, load_config) -> None:
    tensors = {"a": torch.arange(12, dtype=torch.float32).reshape(3, 4), "b": torch.ones(2, dtype=torch.int64)}
    safetensors.torch.save_file(tensors, tmp_path / "plain.safetensors")
    ct_pt.save_file(tensors, tmp_path / "enc.safetensors", config=config)
    plain = ct_pt.load_file(tmp_path / "plain.safetensors")
    encrypted = ct_pt.load_file(tmp_path / "enc.safetensors", config=load_config)
    for name, tensor in tensors.items():
        assert torch.equal(plain[name], tensor) and torch.equal(encrypted[name], tensor)
    assert list(plain) == list(safetensors.torch.load_file(tmp_path / "plain.safetensors"))  # safetensors' order


# ----------------------------------------------------------------------- one place resolving options, keys, trust


def test_options_are_data_resolution_is_one_function(tmp_path: Path, monkeypatch, keys) -> None:
    """LoadOptions holds no I/O; ``resolve`` reads the settings file and the environment, once per open."""
    assert not hasattr(LoadOptions, "resolve") and not hasattr(LoadOptions, "fail_closed")
    settings = tmp_path / "config.toml"
    settings.write_text("trusted_signer = []\n")  # a typo: broken settings
    monkeypatch.setenv("PYCRYPTOTENSORS_CONFIG", str(settings))
    options = LoadOptions(pc.KeyRing([keys[0]]))  # building options reads nothing: no warning here
    with pytest.warns(UserWarning, match="trusted_signer"):
        access = resolve(options)
    assert isinstance(access, Access) and resolve(access) is access  # a caller opening many files resolves once
    with pytest.raises(pc.ConfigError, match="trusted_signer"):
        access.fail_closed()  # encrypted files fail closed; plain ones only warned
    assert access.sources.code.master_keys == [keys[0]]
    assert "access" in inspect.signature(reader.open_file).parameters


def test_trust_is_resolved_the_same_way_for_every_caller(keys) -> None:
    pinned = keys[1].verify_key
    trust = resolve_trust({"trusted_signers": [pinned], "require_encryption": True})
    assert trust.signers == (pinned,) and trust.require_encryption
    assert resolve({"trusted_signers": [pinned], "require_encryption": True}).trust == trust


def test_integrations_and_cli_build_options_through_the_one_translation() -> None:
    """No other module defines a ``load_options`` of its own or calls a ``.resolve()`` on options."""
    offenders = []
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name == "load_options" and path.name != "config.py":
                offenders.append(f"{path.relative_to(SRC)}: defines load_options")
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "resolve"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "options"
            ):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}: options.resolve()")
    assert not offenders


# ------------------------------------------------------------------------------------------------- the layering


def _imports(folder: str) -> set[str]:
    names = set()
    for path in (SRC / folder).glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names.add("." * node.level + (node.module or ""))
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
    return names


def test_the_format_layer_does_not_import_cryptography() -> None:
    assert not any(name.split(".")[0] == "cryptography" for name in _imports("format"))
    assert not any(name.startswith("..cipher") for name in _imports("format"))
    code = (
        "import sys\n"
        "import pycryptotensors.format.header, pycryptotensors.format.crypto_header, pycryptotensors.format.signing\n"
        "import pycryptotensors.format.reserved, pycryptotensors.format.dtypes, pycryptotensors.format.algorithms\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'cryptography'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_writing_does_not_import_reading() -> None:
    assert not any("reading" in name for name in _imports("writing"))
    code = (
        "import sys\n"
        "import pycryptotensors.writing.writer, pycryptotensors.writing.sinks\n"
        "print(sorted(m for m in sys.modules if m.startswith('pycryptotensors.reading')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------------------------------------ F4 outside torch


def _f4_values(count: int, seed: int = 4) -> np.ndarray:
    codes = np.random.default_rng(seed).integers(0, 16, count, dtype=np.uint8)
    return codes.view(ml_dtypes.float4_e2m1fn)


def test_f4_round_trips_in_numpy(tmp_path: Path, config: dict, load_config) -> None:
    array = _f4_values(24).reshape(4, 6)
    path = tmp_path / "f4.safetensors"
    ct_np.save_file({"w": array}, path, config=config)
    loaded = ct_np.load_file(path, config=load_config)["w"]
    assert loaded.dtype == ml_dtypes.float4_e2m1fn and loaded.shape == (4, 6)
    np.testing.assert_array_equal(loaded.view(np.uint8), array.view(np.uint8))
    header = json.loads(path.read_bytes()[8 : 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]])
    assert header["w"]["dtype"] == "F4" and header["w"]["shape"] == [4, 6]


def test_f4_is_packed_as_torch_packs_it(tmp_path: Path, config: dict, load_config) -> None:
    """The same values written from NumPy and from torch give the same file bytes; each loads in the other."""
    packed = np.random.default_rng(7).integers(0, 256, (3, 4), dtype=np.uint8)
    as_torch = torch.from_numpy(packed.copy()).view(torch.float4_e2m1fn_x2)
    unpacked = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(3, 8).view(ml_dtypes.float4_e2m1fn)
    safetensors.torch.save_file({"w": as_torch}, tmp_path / "torch-plain.safetensors")
    ct_pt.save_file({"w": as_torch}, tmp_path / "torch.safetensors", config=config)
    ct_np.save_file({"w": unpacked}, tmp_path / "numpy.safetensors", config=config)
    from_torch = ct_np.load_file(tmp_path / "torch.safetensors", config=load_config)["w"]
    np.testing.assert_array_equal(from_torch.view(np.uint8), unpacked.view(np.uint8))
    from_numpy = ct_pt.load_file(tmp_path / "numpy.safetensors", config=load_config)["w"]
    assert from_numpy.dtype == torch.float4_e2m1fn_x2 and from_numpy.shape == (3, 4)
    assert torch.equal(from_numpy.view(torch.uint8), torch.from_numpy(packed))
    with safetensors.safe_open(tmp_path / "torch-plain.safetensors", "pt") as theirs:  # safetensors' own bytes
        assert torch.equal(theirs.get_tensor("w").view(torch.uint8), torch.from_numpy(packed))
    in_memory = ct_np.load(ct_np.save({"w": unpacked}, config=config), config=load_config)["w"]
    np.testing.assert_array_equal(in_memory.view(np.uint8), unpacked.view(np.uint8))


def test_f4_with_an_odd_count_is_refused(config: dict) -> None:
    with pytest.raises(pc.UnsupportedError, match="even number"):
        ct_np.save({"w": _f4_values(5)}, config=config)


def test_reference_torch_f4_loads_in_our_numpy(tmp_path: Path, keys) -> None:
    reference = pytest.importorskip("cryptotensors.torch")
    packed = np.random.default_rng(9).integers(0, 256, (2, 5), dtype=np.uint8)
    tensor = torch.from_numpy(packed.copy()).view(torch.float4_e2m1fn_x2)
    master, signer = keys
    path = tmp_path / "ref.safetensors"
    ref_config = {"enc_key": master.to_jwk("reference"), "sign_key": signer.to_jwk("reference")}
    reference.save_file({"w": tensor}, str(path), config=ref_config)
    loaded = ct_np.load_file(path, config=pc.KeyRing([master, signer.verify_key]))["w"]
    expected = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(2, 10)
    np.testing.assert_array_equal(loaded.view(np.uint8), expected)


# ------------------------------------------------------------------------------------------------------ sign_jku


def test_sign_jku_is_written_and_finds_the_publisher_key(tmp_path: Path, keys) -> None:
    master, signer = keys
    jwks = tmp_path / "publisher" / "acme.jwk"
    jwks.parent.mkdir()
    jwks.write_text(json.dumps(signer.verify_key.to_jwk()))
    url = jwks.as_uri()
    path = tmp_path / "model.safetensors"
    ct_np.save_file({"a": np.arange(4, dtype=np.int32)}, path, config={"enc_key": master, "sign_key": signer,
                                                                       "sign_jku": url})  # fmt: skip
    with pc.safe_open(path, "np", config={"keys": [master], "jku_dirs": [str(jwks.parent)]}) as f:
        assert f.crypto_header().sign.jku == url  # in the signed header, as the reference writes it
        np.testing.assert_array_equal(f.get_tensor("a"), np.arange(4, dtype=np.int32))
    with pytest.raises(pc.MissingKeyError):  # the jku is read only inside a jku directory the consumer names
        pc.safe_open(path, "np", config={"keys": [master]})


@pytest.mark.parametrize("bad", ["", 7])
def test_sign_jku_must_be_a_url_string(keys, bad) -> None:
    with pytest.raises(pc.ConfigError, match="sign_jku"):
        ct_np.save({"a": np.zeros(1)}, config={"enc_key": keys[0], "sign_key": keys[1], "sign_jku": bad})
