"""Shared fixtures: fresh keys for every test, in both JWK dialects, and the reference config dict."""

from __future__ import annotations

import pytest

import pycryptotensors as pc
from pycryptotensors.integrations import transparent

# The installed start-up hook makes safetensors CryptoTensors-aware in every process, this one included. Tests
# in this process use the real safetensors (to write plain files, or to read ciphertext as an attacker
# would); transparent mode is tested in fresh subprocesses, where the hook runs as in real use.
transparent.disable()


@pytest.fixture(autouse=True)
def _no_ambient_keys(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests say which keys and settings they use; none leak in from the environment or the home directory."""
    monkeypatch.delenv("CRYPTOTENSOR_KEYS", raising=False)
    settings = tmp_path_factory.mktemp("settings") / "config.toml"
    settings.write_text("key_dirs = []\n")
    monkeypatch.setenv("PYCRYPTOTENSORS_CONFIG", str(settings))


@pytest.fixture
def master_key() -> pc.MasterKey:
    return pc.generate_master_key(kid="enc-test")


@pytest.fixture
def signing_key() -> pc.SigningKey:
    return pc.generate_signing_key(kid="sign-test")


@pytest.fixture
def config(master_key: pc.MasterKey, signing_key: pc.SigningKey) -> dict:
    """The reference library's config dict (its JWK dialect), usable by both libraries."""
    return {"enc_key": master_key.to_jwk("reference"), "sign_key": signing_key.to_jwk("reference")}


@pytest.fixture
def load_config(master_key: pc.MasterKey, signing_key: pc.SigningKey) -> dict:
    """What a consumer holds: the master key and only the public half of the signing key."""
    return {"enc_key": master_key.to_jwk("reference"), "sign_key": signing_key.verify_key.to_jwk("reference")}
