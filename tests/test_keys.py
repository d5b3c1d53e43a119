"""Keys: both JWK dialects, the environment variable, key selection by kid, and every key failure."""

from __future__ import annotations

import json

import numpy as np
import pytest

import pycryptotensors as pc
import pycryptotensors.numpy as ct_np

DATA = {"w": np.arange(12, dtype=np.float32).reshape(3, 4)}


@pytest.fixture
def saved(tmp_path, config):
    path = tmp_path / "k.ct"
    ct_np.save_file(DATA, path, config=config)
    return path


@pytest.mark.parametrize("dialect", ["rfc", "reference"])
def test_jwk_round_trip(dialect, master_key, signing_key):
    for key in (master_key, signing_key, signing_key.verify_key):
        again = pc.parse_jwk(json.loads(json.dumps(key.to_jwk(dialect))))
        assert type(again) is type(key) and again.kid == key.kid
        assert again.to_jwk("rfc") == key.to_jwk("rfc")
    rfc = master_key.to_jwk("rfc")
    assert rfc["alg"] == "A256GCM" and "=" not in rfc["k"]
    assert signing_key.to_jwk("rfc")["kty"] == "OKP" and signing_key.to_jwk("rfc")["crv"] == "Ed25519"


def test_rfc_keys_load_files(saved, master_key, signing_key):
    config = {"enc_key": master_key.to_jwk("rfc"), "sign_key": signing_key.verify_key.to_jwk("rfc")}
    assert np.array_equal(ct_np.load_file(saved, config=config)["w"], DATA["w"])


def test_keys_from_environment(saved, master_key, signing_key, monkeypatch):
    jwks = {"keys": [master_key.to_jwk(), signing_key.verify_key.to_jwk("reference")]}
    monkeypatch.setenv("CRYPTOTENSOR_KEYS", json.dumps(jwks))
    assert np.array_equal(ct_np.load_file(saved)["w"], DATA["w"])
    monkeypatch.setenv("CRYPTOTENSOR_KEYS", "{not json")
    with pytest.raises(pc.KeyFormatError):
        ct_np.load_file(saved)


def test_key_selected_by_kid(saved, master_key, signing_key):
    others = [pc.generate_master_key(kid=f"other-{i}") for i in range(3)]
    ring = pc.KeyRing([*others, master_key, signing_key.verify_key])
    assert np.array_equal(ct_np.load_file(saved, config=ring)["w"], DATA["w"])
    with pytest.raises(pc.MissingKeyError, match="enc-test"):
        ct_np.load_file(saved, config=pc.KeyRing([*others, signing_key.verify_key]))


def test_missing_keys(saved, master_key, signing_key):
    with pytest.raises(pc.MissingKeyError, match="CRYPTOTENSOR_KEYS"):
        ct_np.load_file(saved)
    with pytest.raises(pc.MissingKeyError, match="verification"):
        ct_np.load_file(saved, config={"enc_key": master_key})
    with pytest.raises(pc.MissingKeyError, match="master key"):
        ct_np.load(saved.read_bytes(), config={"sign_key": signing_key.verify_key})


def test_wrong_keys(saved, master_key, signing_key):
    wrong_master = pc.generate_master_key(kid=master_key.kid)
    with pytest.raises(pc.WrongKeyError):
        ct_np.load_file(saved, config=pc.KeyRing([wrong_master, signing_key.verify_key]))
    with pytest.raises(pc.WrongKeyError):
        ct_np.load(saved.read_bytes(), config=pc.KeyRing([wrong_master, signing_key.verify_key]))
    impostor = pc.generate_signing_key(kid=signing_key.kid)
    with pytest.raises(pc.SignatureError):
        ct_np.load_file(saved, config=pc.KeyRing([master_key, impostor.verify_key]))
    short = pc.generate_master_key("aes128gcm", kid=master_key.kid)
    with pytest.raises(pc.WrongKeyError):
        ct_np.load_file(saved, config=pc.KeyRing([short, signing_key.verify_key]))


@pytest.mark.parametrize(
    "jwk",
    [
        {"kty": "oct", "k": "not base64!"},
        {"kty": "oct", "k": "AAAA"},  # 3 bytes is no AES-256 key
        {"kty": "oct", "alg": "rot13", "k": "A" * 43},
        {"kty": "RSA", "n": "AQAB"},
        {"kty": "OKP", "crv": "X25519", "x": "A" * 43},
        {"kty": "OKP", "crv": "Ed25519", "x": "AAAA"},
        "a string",
    ],
)
def test_malformed_keys(jwk):
    with pytest.raises(pc.KeyFormatError):
        pc.parse_jwk(jwk)


def test_mismatched_private_and_public_halves(signing_key):
    jwk = signing_key.to_jwk()
    jwk["x"] = pc.generate_signing_key().verify_key.to_jwk()["x"]
    with pytest.raises(pc.KeyFormatError, match="does not match"):
        pc.parse_jwk(jwk)


def test_key_material_never_shown(master_key, signing_key, saved, tmp_path):
    """No repr and no error message holds key material, whichever error a key problem raises: each failing
    call below must raise its own documented error (so none of the checks is skipped), and the message of
    each is searched for every encoding of the keys in play."""
    other = pc.generate_master_key(kid="enc-test")
    secrets = {
        master_key.to_jwk()["k"], master_key.to_jwk("reference")["k"], master_key.secret.hex(),
        signing_key.to_jwk()["d"], signing_key.to_jwk("reference")["d"], other.to_jwk()["k"], other.secret.hex(),
    }  # fmt: skip
    texts = [repr(master_key), repr(signing_key), repr(pc.KeyRing([master_key, signing_key])), str(master_key)]
    tampered = tmp_path / "tampered.ct"
    data = bytearray(saved.read_bytes())
    data[-1] ^= 1  # the last byte of the encrypted tensor
    tampered.write_bytes(bytes(data))
    short = {**master_key.to_jwk(), "k": master_key.to_jwk()["k"][:-2]}  # a key of the wrong length
    failing = [
        (pc.WrongKeyError, lambda: ct_np.load_file(saved, config=pc.KeyRing([other, signing_key]))),
        (pc.MissingKeyError, lambda: ct_np.load_file(saved, config=pc.KeyRing([signing_key.verify_key]))),
        (pc.SignatureError, lambda: ct_np.load_file(
            saved, config=pc.KeyRing([master_key, pc.generate_signing_key(kid="sign-test").verify_key]))),
        (pc.IntegrityError, lambda: ct_np.load_file(tampered, config=pc.KeyRing([master_key, signing_key]))),
        (pc.KeyFormatError, lambda: pc.parse_jwk(short)),
        (pc.KeyFormatError, lambda: pc.parse_jwk({**master_key.to_jwk(), "alg": "rot13"})),
        (pc.KeyFormatError, lambda: pc.parse_jwk({**signing_key.to_jwk(), "x": master_key.to_jwk()["k"]})),
        (pc.ConfigError, lambda: ct_np.save_file(DATA, tmp_path / "x.ct", config={"enc_key": master_key, "sign_key":
                                                                                   signing_key, "oops": 1})),
    ]  # fmt: skip
    for expected, call in failing:
        with pytest.raises(expected) as caught:
            call()
        texts += [str(caught.value), repr(caught.value)]
    for text in texts:
        for secret in secrets:
            assert secret not in text, text


def test_unknown_options_are_refused(config, tmp_path):
    with pytest.raises(pc.ConfigError, match="chunksize"):
        ct_np.save_file(DATA, tmp_path / "x.ct", config={**config, "chunksize": 1024})
    with pytest.raises(pc.ConfigError):
        ct_np.save_file(DATA, tmp_path / "x.ct", config={**config, "version": "3"})
    with pytest.raises(pc.ConfigError):
        ct_np.save_file(DATA, tmp_path / "x.ct", config={**config, "chunk_size": 0})
    with pytest.raises(pc.ConfigError, match="reserved"):
        ct_np.save_file(DATA, tmp_path / "x.ct", metadata={"__signature__": "x"}, config=config)
    with pytest.raises(pc.MissingKeyError):
        ct_np.save_file(DATA, tmp_path / "x.ct")
    assert list(tmp_path.iterdir()) == []


def test_readme_quick_start(tmp_path, monkeypatch):
    """The README's quick start runs as written."""
    monkeypatch.chdir(tmp_path)
    readme = (pytest.importorskip("pathlib").Path(__file__).parents[1] / "README.md").read_text()
    code = readme.split("## Quick start", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert np.array_equal(namespace["rows"], np.ones((2, 4), np.float32))
    assert set(namespace["tensors"]) == {"w", "norm"}


@pytest.mark.parametrize("package", ["pycryptotensors", "pycryptotensors.keys"])
def test_public_names_import(package):
    """The packages load their names on first use; every exported name still imports, by attribute and by
    ``from ... import``, and is listed by dir()."""
    import importlib

    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, name
        assert name in dir(module), name
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018
    from pycryptotensors.keys import MasterKey, parse_jwk

    assert MasterKey is pc.MasterKey and parse_jwk is pc.parse_jwk
