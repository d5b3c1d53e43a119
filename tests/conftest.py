"""Shared fixtures: fresh keys for every test, in both JWK dialects, and the reference config dict."""

from __future__ import annotations

import pytest

import pycryptotensors as pc


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
