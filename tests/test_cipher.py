"""The cipher layer against the installed ``cryptography``: no AEAD call has overlapping buffers, version 1
decrypts with bounded memory, and whatever the library raises leaves as one of our documented errors.

``cryptography`` 51 refuses an ``*_into`` call whose output overlaps its input; 50 accepted it, so code that
decrypted in place worked until a fresh install pulled 51. The guard below checks every buffer the code hands
the library, so the test fails on an in-place call under any release, the lowest one CI tests included.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess

import numpy as np
import pytest

import pycryptotensors as pc
import pycryptotensors.numpy as ct_np
from _command import CLI
from pycryptotensors.cipher import aead
from pycryptotensors.cipher import chunks as chunk_module
from pycryptotensors.config import load_options
from pycryptotensors.convert.rewrap import rewrap_file
from pycryptotensors.format import algorithms as algorithms_module
from pycryptotensors.reading.inspect import verify_file

ALGORITHMS = sorted(aead.ALGORITHMS)
BIG = chunk_module.STREAM_PIECE * 3 + 12345  # several streamed pieces and a ragged end


def _as_bytes(buffer: object) -> np.ndarray:
    return np.frombuffer(memoryview(buffer).cast("B"), dtype=np.uint8)  # type: ignore[arg-type]


def _check_apart(data: object, out: object) -> None:
    if np.shares_memory(_as_bytes(data), _as_bytes(out)):
        raise AssertionError("an AEAD call was given overlapping input and output buffers")


class _Apart:
    """An AEAD (or an incremental context) that refuses overlapping buffers whatever the library release."""

    def __init__(self, inner: object) -> None:
        self._inner = inner

    def encrypt_into(self, nonce: bytes, data: object, aad: object, out: object) -> int:
        _check_apart(data, out)
        return self._inner.encrypt_into(nonce, data, aad, out)  # type: ignore[attr-defined]

    def decrypt_into(self, nonce: bytes, data: object, aad: object, out: object) -> int:
        _check_apart(data, out)
        return self._inner.decrypt_into(nonce, data, aad, out)  # type: ignore[attr-defined]

    def update_into(self, data: object, out: object) -> int:
        _check_apart(data, out)
        return self._inner.update_into(data, out)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


@pytest.fixture
def apart(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every algorithm the code looks up hands out guarded ciphers and contexts."""
    for name, primitive in list(aead._PRIMITIVES.items()):  # every one-shot AEAD, wherever it is made
        monkeypatch.setitem(aead._PRIMITIVES, name, lambda key, cls=primitive: _Apart(cls(key)))
    for module in (aead, chunk_module):  # the incremental contexts, under each name they are called by
        for function in ("gcm_decryptor", "gcm_encryptor"):
            real = getattr(aead, function)
            monkeypatch.setattr(module, function, lambda *a, real=real: _Apart(real(*a)))


def _tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(51)
    return {
        "big": rng.standard_normal(BIG // 4).astype(np.float32),
        "small": rng.integers(0, 255, size=33, dtype=np.uint8),
        "one_piece": rng.standard_normal(chunk_module.STREAM_PIECE // 8),  # exactly one piece
        "empty": np.zeros(0, dtype=np.float32),
        "plain": rng.standard_normal(10).astype(np.float32),
    }


def _config(master: pc.MasterKey, signer: pc.SigningKey, version: str) -> dict:
    return {
        "enc_key": master,
        "sign_key": signer,
        "tensors": ["big", "small", "one_piece", "empty"],
        "version": version,
        "chunk_size": 65536,
    }


def test_the_guard_catches_an_in_place_call(apart: None) -> None:
    """The guard is not vacuous: the pattern cryptography 51 refuses fails here too, on any release."""
    cipher = aead.new_cipher(aead.ALGORITHMS["aes256gcm"], bytes(32))
    buf = np.zeros(64 + aead.TAG_SIZE, dtype=np.uint8)
    view = memoryview(buf)
    with pytest.raises(AssertionError, match="overlapping"):
        cipher.decrypt_into(bytes(12), view, None, view[:64])


@pytest.mark.parametrize("version", ["1", "2"])
@pytest.mark.parametrize("alg", ALGORITHMS)
def test_no_aead_call_overlaps(tmp_path, apart: None, alg: str, version: str) -> None:
    """Save, load, slice, load(bytes), verify --deep and rewrap, each algorithm, both versions."""
    master = pc.generate_master_key(alg=alg, kid="m")
    signer = pc.generate_signing_key(kid="s")
    tensors = _tensors()
    path = tmp_path / "model.safetensors"
    ct_np.save_file(tensors, path, metadata={"format": "pt"}, config=_config(master, signer, version))
    consumer = pc.KeyRing([master, signer.verify_key])
    for name, loaded in ct_np.load_file(path, config=consumer).items():
        assert loaded.dtype == tensors[name].dtype and loaded.tobytes() == tensors[name].tobytes()
    loaded = ct_np.load(path.read_bytes(), config=consumer)
    assert loaded["big"].tobytes() == tensors["big"].tobytes()
    with pc.safe_open(path, framework="np", config=consumer) as f:
        assert np.array_equal(f.get_slice("big")[1000:1010], tensors["big"][1000:1010])
    options = load_options(consumer)
    report = verify_file(path, options, deep=True)
    assert report["bytes_authenticated"] == sum(t.nbytes for t in tensors.values())
    new_master = pc.generate_master_key(alg=alg, kid="m2")
    rewrap_file(path, tmp_path / "rewrapped.safetensors", options, signing_key=signer, master_key=new_master)
    again = ct_np.load_file(tmp_path / "rewrapped.safetensors", config=pc.KeyRing([new_master, signer.verify_key]))
    assert again["big"].tobytes() == tensors["big"].tobytes()


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_version1_tamper_wipes_and_raises(tmp_path, alg: str) -> None:
    """A flipped ciphertext byte late in a streamed tensor: IntegrityError, and the partial output is wiped."""
    master, signer = pc.generate_master_key(alg=alg, kid="m"), pc.generate_signing_key(kid="s")
    path = tmp_path / "model.safetensors"
    ct_np.save_file(_tensors(), path, metadata={"format": "pt"}, config=_config(master, signer, "1"))
    consumer = pc.KeyRing([master, signer.verify_key])
    data = bytearray(path.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    start = 8 + header_len + json.loads(data[8 : 8 + header_len])["big"]["data_offsets"][0]
    data[start + _tensors()["big"].nbytes - 7] ^= 0x01
    path.write_bytes(bytes(data))
    seen: list[np.ndarray] = []
    real = chunk_module.np.empty

    def remember(*args, **kwargs):  # the buffers decrypt_whole allocates: none may keep plaintext
        array = real(*args, **kwargs)
        seen.append(array)
        return array

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(chunk_module.np, "empty", remember)
        with pytest.raises(pc.IntegrityError, match="failed authentication"):
            ct_np.load_file(path, config=consumer)
    nbytes = _tensors()["big"].nbytes
    outputs = [a for a in seen if a.size == nbytes + chunk_module._GCM_SLACK]  # ChaCha's other holds ciphertext
    assert len(outputs) == 1 and not outputs[0].any()


def test_library_errors_become_ours(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever cryptography raises is a documented error naming the operation, never a bare ValueError."""
    master, signer = pc.generate_master_key(kid="m"), pc.generate_signing_key(kid="s")
    path = tmp_path / "model.safetensors"
    for version in ("1", "2"):
        ct_np.save_file(_tensors(), path, metadata={"format": "pt"}, config=_config(master, signer, version))

        class Refusing:
            def __init__(self, key: bytes) -> None:
                pass

            def __getattr__(self, name: str):
                def refuse(*args, **kwargs):
                    raise ValueError("data and buf must not overlap")

                return refuse

        for name, alg in list(aead.ALGORITHMS.items()):
            one_shot = dataclasses.replace(alg, streams=False)  # every call through the refusing one-shot AEAD
            monkeypatch.setitem(aead.ALGORITHMS, name, one_shot)
            monkeypatch.setitem(algorithms_module._ALIASES, alg.jwk_name.lower(), one_shot)
            monkeypatch.setitem(aead._PRIMITIVES, name, Refusing)
        with pytest.raises(pc.CipherError, match="data and buf must not overlap") as caught:
            ct_np.load_file(path, config=pc.KeyRing([master, signer.verify_key]))
        assert isinstance(caught.value, pc.CryptoTensorsError)
        assert not isinstance(caught.value, ValueError)
        refused_master = pc.generate_master_key(kid="m")  # its algorithm is looked up now: the refusing one
        with pytest.raises(pc.CipherError):
            ct_np.save_file(_tensors(), tmp_path / "out.safetensors", config=_config(refused_master, signer, version))
        assert not (tmp_path / "out.safetensors").exists()
        monkeypatch.undo()


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_version1_verify_deep_cli(tmp_path, alg: str) -> None:
    """`verify --deep` on a version-1 file exits 0 under the installed cryptography (it exited 1 under 51)."""
    master, signer = pc.generate_master_key(alg=alg, kid="m"), pc.generate_signing_key(kid="s")
    path = tmp_path / "model.safetensors"
    ct_np.save_file(_tensors(), path, metadata={"format": "pt"}, config=_config(master, signer, "1"))
    (tmp_path / "master.jwk").write_text(json.dumps(master.to_jwk()))
    (tmp_path / "signer.pub.jwk").write_text(json.dumps(signer.verify_key.to_jwk()))
    result = subprocess.run(
        [*CLI, "verify", str(path), "--deep", "--key", str(tmp_path / "master.jwk"), "--trust",
         str(tmp_path / "signer.pub.jwk")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
