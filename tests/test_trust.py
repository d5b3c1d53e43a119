"""Key sources and trust (docs/KEYS.md): source order and kid matching, key files and their modes, key
directories, ``file://`` jku, publisher pinning, rules, ``require_encryption``, key providers and the
consumer's settings file.

Everything uses real files under ``tmp_path`` and real keys; nothing is mocked. A file's ``jku`` is added by
editing its crypto header and re-signing it with the publisher's key (the writer never writes one).
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy as st_np

import pycryptotensors as pc
import pycryptotensors.numpy as ct_np
from _filecraft import CRYPTO_KEYS, ENCRYPTION, edit_inner, header_size, inner, split, unb64
from pycryptotensors.cipher.aead import ALGORITHMS, unwrap_keys
from pycryptotensors.keys.files import read_key_dir, read_key_file, write_key_file
from pycryptotensors.keys.sources import KeyRequest, ProvidedKeys

DATA = {
    "w": np.arange(12, dtype=np.float32).reshape(3, 4),
    "v": np.arange(5, dtype=np.int64),
    "norm": np.ones(4, dtype=np.float16),  # left unencrypted, covered by the signature
}
ENCRYPTED = ("v", "w")
_SETTINGS_FILES = itertools.count()


@pytest.fixture(autouse=True)
def _empty_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A settings file without ``key_dirs`` falls back to ~/.config/pycryptotensors/keys: keep that empty."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


# ---------------------------------------------------------------------------------------------------------------
# Helpers


def save(path: Path, master: pc.MasterKey, signer: pc.SigningKey) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ct_np.save_file(DATA, path, config={"enc_key": master, "sign_key": signer, "tensors": list(ENCRYPTED)})
    return path


def assert_loads(path: Path, config: Any = None) -> None:
    out = ct_np.load_file(path, config=config)
    assert set(out) == set(DATA)
    for name, array in DATA.items():
        assert out[name].dtype == array.dtype and np.array_equal(out[name], array), name


def header_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return data[8 : 8 + header_size(data)]


def use_settings(monkeypatch: pytest.MonkeyPatch, directory: Path, text: str) -> Path:
    """Write a settings file and make it the consumer's (a fresh name each time: settings are cached)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"settings-{next(_SETTINGS_FILES)}.toml"
    path.write_text(text, encoding="utf-8")
    monkeypatch.setenv("PYCRYPTOTENSORS_CONFIG", str(path))
    return path


def toml_str(path: str | Path) -> str:
    return json.dumps(os.fspath(path))  # a JSON string is a TOML basic string


def toml_list(*paths: str | Path) -> str:
    return "[" + ", ".join(toml_str(p) for p in paths) + "]"


def file_url(path: str | Path) -> str:
    return "file://" + os.fspath(path)  # as written, no normalisation (the tricks below rely on that)


def with_jku(path: Path, signer: pc.SigningKey, enc: str | None = None, sign: str | None = None) -> Path:
    """Name a jku in the file's key slots, re-signing the header as its publisher would."""

    def change(document: dict[str, Any]) -> None:
        if enc is not None:
            document["enc"]["jku"] = enc
        if sign is not None:
            document["sign"]["jku"] = sign

    path.write_bytes(edit_inner(path.read_bytes(), CRYPTO_KEYS, change, signer=signer))
    return path


def unwrapped_data_keys(path: Path, master: pc.MasterKey) -> dict[str, bytes]:
    """The file's data keys, unwrapped from its header the way a key service would."""
    header, _ = split(path.read_bytes())
    wrapped = {
        name: (unb64(entry["wrapped_key"]), unb64(entry["key_iv"]), unb64(entry["key_tag"]))
        for name, entry in inner(header, ENCRYPTION).items()
    }
    return unwrap_keys(ALGORITHMS["aes256gcm"], master.secret, wrapped)


def strip_crypto(encrypted: Path, plain: Path) -> Path:
    """An encrypted file with its crypto metadata stripped: a valid plain safetensors file of ciphertext."""
    plain.parent.mkdir(parents=True, exist_ok=True)
    st_np.save_file(st_np.load_file(encrypted), plain)
    return plain


def renamed(key: Any, kid: str | None) -> Any:
    if isinstance(key, pc.MasterKey):
        return pc.MasterKey(key.secret, key.alg, kid)
    if isinstance(key, pc.SigningKey):
        return pc.SigningKey(key.private, kid)
    return pc.VerifyKey(key.public, kid)


SOURCES = ("code", "env", "dir", "jku")


class Sources:
    """Places keys in the four static sources, for a file whose slots name ``jku`` as their jku."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch
        self.key_dir = tmp_path / "keydir"
        self.jku_dir = tmp_path / "jkudir"
        self.jku = self.jku_dir / "keys.jwks"
        self.code: list[Any] = []
        self.key_dir.mkdir()
        self.jku_dir.mkdir()

    def put(self, source: str, keys: list[Any]) -> None:
        if source == "code":
            self.code += keys
        elif source == "env":
            jwks = {"keys": [k.to_jwk() for k in keys]}
            self.monkeypatch.setenv("CRYPTOTENSOR_KEYS", json.dumps(jwks))
        elif source == "dir":
            write_key_file(self.key_dir / "keys.jwks", keys)
        else:
            write_key_file(self.jku, keys)

    def file(self, path: Path, master: pc.MasterKey, signer: pc.SigningKey) -> Path:
        save(path, master, signer)
        return with_jku(path, signer, enc=file_url(self.jku), sign=file_url(self.jku))

    def config(self) -> dict[str, Any]:
        return {"keys": self.code, "key_dirs": [self.key_dir], "jku_dirs": [self.jku_dir]}


@pytest.fixture
def sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Sources:
    return Sources(tmp_path, monkeypatch)


# ---------------------------------------------------------------------------------------------------------------
# Source order and kid matching


@pytest.mark.parametrize("kind", ["master", "verify"])
@pytest.mark.parametrize(("earlier", "later"), list(itertools.combinations(SOURCES, 2)))
@pytest.mark.parametrize("right_first", [True, False], ids=["right-first", "impostor-first"])
def test_source_order(sources, tmp_path, master_key, signing_key, kind, earlier, later, right_first):
    """Code beats CRYPTOTENSOR_KEYS beats key directories beats a file:// jku, for keys with the same kid."""
    path = sources.file(tmp_path / "m.ct", master_key, signing_key)
    if kind == "master":
        right, impostor, other = master_key, pc.generate_master_key(kid=master_key.kid), signing_key.verify_key
    else:
        right, impostor, other = (
            signing_key.verify_key,
            pc.generate_signing_key(kid=signing_key.kid).verify_key,
            master_key,
        )
    sources.put(earlier, [right if right_first else impostor])
    sources.put(later, [impostor if right_first else right])
    sources.code.append(other)
    if right_first:
        assert_loads(path, sources.config())
    else:
        with pytest.raises(pc.WrongKeyError if kind == "master" else pc.SignatureError):
            ct_np.load_file(path, config=sources.config())


def test_kid_matched_across_sources(sources, tmp_path, master_key, signing_key):
    """Each slot's kid is found in whichever source holds it, past keys with other kids in earlier sources."""
    path = sources.file(tmp_path / "m.ct", master_key, signing_key)
    sources.put("code", [pc.generate_master_key(kid="code-1"), pc.generate_master_key(kid="code-2")])
    sources.put("env", [pc.generate_master_key(kid="env-1"), pc.generate_signing_key(kid="env-2").verify_key])
    sources.put("dir", [master_key, pc.generate_signing_key(kid="dir-1").verify_key])
    sources.put("jku", [signing_key.verify_key])
    assert_loads(path, sources.config())


def test_single_code_key_used_whatever_kid(sources, tmp_path, master_key, signing_key):
    """One key of a kind passed in code is used for a file that names another kid (the reference's behaviour)."""
    path = sources.file(tmp_path / "m.ct", master_key, signing_key)
    sources.put("code", [renamed(master_key, "renamed"), renamed(signing_key.verify_key, None)])
    sources.put("dir", [pc.generate_master_key(kid="unrelated")])
    assert_loads(path, sources.config())


def test_kid_match_beats_single_code_key(sources, tmp_path, master_key, signing_key):
    """A key with the file's kid in any source is preferred to the single code key with another kid."""
    path = sources.file(tmp_path / "m.ct", master_key, signing_key)
    sources.put("code", [renamed(master_key, "renamed"), signing_key.verify_key])
    sources.put("dir", [pc.generate_master_key(kid=master_key.kid)])
    with pytest.raises(pc.WrongKeyError):
        ct_np.load_file(path, config=sources.config())


@pytest.mark.parametrize("source", ["env", "dir", "jku"])
def test_single_key_fallback_is_for_code_keys_only(sources, tmp_path, master_key, signing_key, source):
    path = sources.file(tmp_path / "m.ct", master_key, signing_key)
    sources.put("code", [signing_key.verify_key])
    sources.put(source, [renamed(master_key, "renamed")])
    with pytest.raises(pc.MissingKeyError, match="master key with kid 'enc-test'"):
        ct_np.load_file(path, config=sources.config())


def test_two_code_keys_without_the_kid_are_missing(tmp_path, master_key, signing_key):
    path = save(tmp_path / "m.ct", master_key, signing_key)
    keys = [renamed(master_key, "a"), pc.generate_master_key(kid="b"), signing_key.verify_key]
    with pytest.raises(pc.MissingKeyError):
        ct_np.load_file(path, config={"keys": keys})


def test_file_without_kid_takes_the_first_key(sources, tmp_path, master_key, signing_key):
    master, signer = renamed(master_key, None), renamed(signing_key, None)
    path = sources.file(tmp_path / "m.ct", master, signer)
    assert "kid" not in inner(split(path.read_bytes())[0], CRYPTO_KEYS)["enc"]
    wrong = pc.generate_master_key(kid="wrong")
    assert_loads(path, {"keys": [master_key, wrong, signing_key.verify_key]})
    with pytest.raises(pc.WrongKeyError):
        ct_np.load_file(path, config={"keys": [wrong, master_key, signing_key.verify_key]})
    # across sources, the first source with a key of the kind provides it
    sources.put("code", [signing_key.verify_key])
    sources.put("env", [wrong])
    sources.put("dir", [master_key])
    with pytest.raises(pc.WrongKeyError):
        ct_np.load_file(path, config=sources.config())
    sources.monkeypatch.delenv("CRYPTOTENSOR_KEYS")
    assert_loads(path, sources.config())


def test_use_environment_and_use_settings_flags(tmp_path, monkeypatch, master_key, signing_key):
    path = save(tmp_path / "m.ct", master_key, signing_key)
    monkeypatch.setenv("CRYPTOTENSOR_KEYS", json.dumps({"keys": [master_key.to_jwk()]}))
    ring = pc.KeyRing([signing_key.verify_key])
    assert_loads(path, pc.LoadOptions(ring))
    with pytest.raises(pc.MissingKeyError):
        ct_np.load_file(path, config=pc.LoadOptions(ring, use_environment=False))
    monkeypatch.delenv("CRYPTOTENSOR_KEYS")
    (tmp_path / "keys").mkdir()
    write_key_file(tmp_path / "keys" / "m.jwk", master_key)
    use_settings(monkeypatch, tmp_path / "settings", f"key_dirs = {toml_list(tmp_path / 'keys')}\n")
    assert_loads(path, pc.LoadOptions(ring))
    with pytest.raises(pc.MissingKeyError):
        ct_np.load_file(path, config=pc.LoadOptions(ring, use_settings=False))


# ---------------------------------------------------------------------------------------------------------------
# Key files and key directories


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("permissive_umask")
def test_key_file_modes(tmp_path, master_key, signing_key):
    write_key_file(tmp_path / "master.jwk", master_key)
    write_key_file(tmp_path / "signer.jwk", signing_key)
    write_key_file(tmp_path / "public.jwk", signing_key.verify_key)
    write_key_file(tmp_path / "mixed.jwks", [signing_key.verify_key, master_key])
    write_key_file(tmp_path / "publics.jwks", [signing_key.verify_key, pc.generate_signing_key().verify_key])
    assert mode(tmp_path / "master.jwk") == 0o600
    assert mode(tmp_path / "signer.jwk") == 0o600
    assert mode(tmp_path / "mixed.jwks") == 0o600
    assert mode(tmp_path / "public.jwk") == 0o644
    assert mode(tmp_path / "publics.jwks") == 0o644
    write_key_file(tmp_path / "public.jwk", master_key)  # replacing a public key file narrows its mode
    assert mode(tmp_path / "public.jwk") == 0o600
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["master.jwk", "mixed.jwks", "public.jwk", "publics.jwks", "signer.jwk"]  # no temp files


def test_key_file_is_rfc7517(tmp_path, master_key, signing_key):
    write_key_file(tmp_path / "master.jwk", master_key)
    write_key_file(tmp_path / "signer.jwk", signing_key)
    write_key_file(tmp_path / "set.jwks", [master_key, signing_key.verify_key])
    master = json.loads((tmp_path / "master.jwk").read_text())
    assert master == {"kty": "oct", "alg": "A256GCM", "k": master["k"], "kid": "enc-test"}
    assert "=" not in master["k"] and "+" not in master["k"] and "/" not in master["k"]
    signer = json.loads((tmp_path / "signer.jwk").read_text())
    assert {k: signer[k] for k in ("kty", "crv", "alg", "kid")} == {
        "kty": "OKP",
        "crv": "Ed25519",
        "alg": "EdDSA",
        "kid": "sign-test",
    }
    assert len(signer["x"]) == len(signer["d"]) == 43  # 32 bytes, base64url unpadded
    document = json.loads((tmp_path / "set.jwks").read_text())
    assert document == {"keys": [master_key.to_jwk(), signing_key.verify_key.to_jwk()]}
    assert "d" not in document["keys"][1]


@pytest.mark.parametrize("dialect", ["rfc", "reference"])
@pytest.mark.parametrize("as_set", [False, True], ids=["jwk", "jwks"])
def test_read_key_file_dialects(tmp_path, master_key, signing_key, dialect, as_set):
    keys = [master_key, signing_key, signing_key.verify_key]
    if as_set:
        (tmp_path / "k.jwks").write_text(json.dumps({"keys": [k.to_jwk(dialect) for k in keys]}))
        read = read_key_file(tmp_path / "k.jwks")
    else:
        read = []
        for i, key in enumerate(keys):
            (tmp_path / f"{i}.jwk").write_text(json.dumps(key.to_jwk(dialect)))
            read += read_key_file(tmp_path / f"{i}.jwk")
    assert [type(k) for k in read] == [pc.MasterKey, pc.SigningKey, pc.VerifyKey]
    assert [k.to_jwk() for k in read] == [k.to_jwk() for k in keys]
    write_key_file(tmp_path / "again.jwks", keys, dialect=dialect)
    assert [k.to_jwk() for k in read_key_file(tmp_path / "again.jwks")] == [k.to_jwk() for k in keys]


def test_read_key_file_errors(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "bad-set.jwks").write_text('{"keys": {"kty": "oct"}}')
    (tmp_path / "bad-key.jwk").write_text('{"kty": "oct", "k": "AAAA"}')
    for name in ("bad.json", "bad-set.jwks", "bad-key.jwk", "missing.jwk"):
        with pytest.raises(pc.KeyFormatError, match=name):
            read_key_file(tmp_path / name)


def test_read_key_dir(tmp_path, master_key, signing_key):
    other = pc.generate_master_key(kid="other")
    write_key_file(tmp_path / "b.jwks", [signing_key.verify_key, other])
    write_key_file(tmp_path / "a.jwk", master_key)
    (tmp_path / "c.json").write_text(json.dumps(signing_key.to_jwk("reference")))
    (tmp_path / "ignored.txt").write_text(json.dumps(pc.generate_master_key().to_jwk()))
    (tmp_path / "README").write_text("not a key")
    (tmp_path / "sub.jwk").mkdir()  # a directory, even with a key suffix, is skipped
    (tmp_path / "sub.jwk" / "nested.jwk").write_text(json.dumps(pc.generate_master_key().to_jwk()))
    keys = read_key_dir(tmp_path)
    assert [k.to_jwk() for k in keys] == [
        master_key.to_jwk(),
        signing_key.verify_key.to_jwk(),
        other.to_jwk(),
        signing_key.to_jwk(),
    ]  # by file name: a.jwk, b.jwks, c.json
    assert read_key_dir(tmp_path / "missing") == []


def test_key_dirs_from_config(tmp_path, master_key, signing_key):
    path = save(tmp_path / "m.ct", master_key, signing_key)
    masters, signers = tmp_path / "masters", tmp_path / "signers"
    masters.mkdir()
    signers.mkdir()
    write_key_file(masters / "m.jwk", master_key)
    write_key_file(signers / "s.jwk", signing_key.verify_key)
    assert_loads(path, {"key_dirs": [masters, str(signers)]})
    assert_loads(path, pc.LoadOptions(key_dirs=[masters, signers]))
    with pytest.raises(pc.MissingKeyError, match="verification key"):
        ct_np.load_file(path, config={"key_dirs": [masters]})


def test_key_dirs_from_settings(tmp_path, monkeypatch, master_key, signing_key):
    path = save(tmp_path / "m.ct", master_key, signing_key)
    home = tmp_path / "etc"
    (home / "keys").mkdir(parents=True)
    write_key_file(home / "keys" / "publisher.jwk", signing_key.verify_key)
    write_key_file(home / "keys" / "master.jwk", master_key)
    with pytest.raises(pc.MissingKeyError):
        ct_np.load_file(path)
    use_settings(monkeypatch, home, 'key_dirs = ["keys"]\n')  # relative to the settings file
    assert_loads(path)
    # settings directories add to the ones passed in code
    (home / "keys" / "master.jwk").unlink()
    (tmp_path / "mine").mkdir()
    write_key_file(tmp_path / "mine" / "master.jwk", master_key)
    assert_loads(path, {"key_dirs": [tmp_path / "mine"]})


def test_default_key_dir_when_settings_name_none(tmp_path, monkeypatch, master_key, signing_key):
    path = save(tmp_path / "m.ct", master_key, signing_key)
    default = tmp_path / "home" / ".config" / "pycryptotensors" / "keys"
    default.mkdir(parents=True)
    write_key_file(default / "keys.jwks", [master_key, signing_key.verify_key])
    use_settings(monkeypatch, tmp_path / "settings", "")
    assert_loads(path)


# ---------------------------------------------------------------------------------------------------------------
# file:// jku


@pytest.fixture
def jku_file(tmp_path, master_key, signing_key) -> tuple[Path, Path]:
    """A file whose slots both name a JWK Set in ``tmp_path/jku`` holding the master and verification keys."""
    jwks = tmp_path / "jku" / "keys.jwks"
    jwks.parent.mkdir()
    write_key_file(jwks, [master_key, signing_key.verify_key])
    path = save(tmp_path / "models" / "m.ct", master_key, signing_key)
    return with_jku(path, signing_key, enc=file_url(jwks), sign=file_url(jwks)), jwks


def test_jku_inside_allowed_dir(jku_file, tmp_path, monkeypatch):
    path, jwks = jku_file
    assert inner(split(path.read_bytes())[0], CRYPTO_KEYS)["enc"]["jku"] == file_url(jwks)
    with pytest.raises(pc.MissingKeyError):
        ct_np.load_file(path)
    assert_loads(path, {"jku_dirs": [tmp_path / "jku"]})
    assert_loads(path, pc.LoadOptions(jku_dirs=[tmp_path]))  # any ancestor directory
    with pytest.raises(pc.MissingKeyError):
        ct_np.load_file(path, config={"jku_dirs": [tmp_path / "models"]})
    use_settings(monkeypatch, tmp_path, 'jku_dirs = ["jku"]\n')  # relative to the settings file
    assert_loads(path)


def test_jku_localhost_and_symlinked_allowed_dir(tmp_path, master_key, signing_key):
    jwks = tmp_path / "real" / "keys.jwks"
    jwks.parent.mkdir()
    write_key_file(jwks, [master_key, signing_key.verify_key])
    (tmp_path / "alias").symlink_to(tmp_path / "real", target_is_directory=True)
    path = save(tmp_path / "m.ct", master_key, signing_key)
    url = "file://localhost" + os.fspath(tmp_path / "alias" / "keys.jwks")
    with_jku(path, signing_key, enc=url, sign=url)
    assert_loads(path, {"jku_dirs": [tmp_path / "real"]})
    assert_loads(path, {"jku_dirs": [tmp_path / "alias"]})


def escaping_jkus(tmp_path: Path) -> dict[str, str]:
    """jku values that name ``tmp_path/outside/keys.jwks`` while seeming to be inside ``tmp_path/jku``."""
    allowed, outside = tmp_path / "jku", tmp_path / "outside" / "keys.jwks"
    (allowed / "link.jwks").symlink_to(outside)
    (allowed / "linkdir").symlink_to(outside.parent, target_is_directory=True)
    return {
        "symlink": file_url(allowed / "link.jwks"),
        "symlinked-dir": file_url(allowed / "linkdir" / "keys.jwks"),
        "dotdot": file_url(f"{allowed}/../outside/keys.jwks"),
        "encoded-dotdot": file_url(f"{allowed}/%2e%2e/outside/keys.jwks"),
        "sibling-prefix": file_url(f"{allowed}-evil/keys.jwks"),
        "remote-host": "file://evil.example" + os.fspath(outside),
    }


@pytest.mark.parametrize(
    "trick", ["symlink", "symlinked-dir", "dotdot", "encoded-dotdot", "sibling-prefix", "remote-host"]
)
def test_jku_outside_allowed_dir_is_ignored(tmp_path, master_key, signing_key, trick):
    (tmp_path / "jku").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "jku-evil").mkdir()
    write_key_file(tmp_path / "outside" / "keys.jwks", [master_key, signing_key.verify_key])
    write_key_file(tmp_path / "jku-evil" / "keys.jwks", [master_key, signing_key.verify_key])
    url = escaping_jkus(tmp_path)[trick]
    path = with_jku(save(tmp_path / "m.ct", master_key, signing_key), signing_key, enc=url, sign=url)
    with pytest.raises(pc.MissingKeyError):
        ct_np.load_file(path, config={"jku_dirs": [tmp_path / "jku"]})
    # each key alone is refused too (the other coming from code)
    with pytest.raises(pc.MissingKeyError, match="master key"):
        ct_np.load_file(path, config={"jku_dirs": [tmp_path / "jku"], "keys": [signing_key.verify_key]})
    with pytest.raises(pc.MissingKeyError, match="verification key"):
        ct_np.load_file(path, config={"jku_dirs": [tmp_path / "jku"], "keys": [master_key]})


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_http_jku_is_never_fetched(tmp_path, master_key, signing_key, scheme):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"{scheme}://127.0.0.1:{listener.getsockname()[1]}/keys.jwks"
        path = with_jku(save(tmp_path / "m.ct", master_key, signing_key), signing_key, enc=url, sign=url)
        with pytest.raises(pc.MissingKeyError):
            ct_np.load_file(path, config={"jku_dirs": [tmp_path, "/"]})
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected


# ---------------------------------------------------------------------------------------------------------------
# Pinned publishers


@pytest.fixture
def publishers(tmp_path, master_key) -> dict[str, Any]:
    """Two publishers with their own kids, a file by each, and their public keys as files."""
    alice, bob = pc.generate_signing_key(kid="alice"), pc.generate_signing_key(kid="bob")
    (tmp_path / "pub").mkdir()
    write_key_file(tmp_path / "pub" / "alice.jwk", alice.verify_key)
    write_key_file(tmp_path / "pub" / "bob.jwk", bob.verify_key)
    return {
        "alice": alice,
        "bob": bob,
        "by_alice": save(tmp_path / "a.ct", master_key, alice),
        "by_bob": save(tmp_path / "b.ct", master_key, bob),
        "ring": [master_key, alice.verify_key, bob.verify_key],
    }


def test_pinned_signer_from_config(publishers):
    alice, by_alice, by_bob, ring = (publishers[k] for k in ("alice", "by_alice", "by_bob", "ring"))
    pin = {"keys": ring, "trusted_signers": [alice.verify_key.to_jwk()]}
    assert_loads(by_alice, pin)
    with pytest.raises(pc.SignatureError):
        ct_np.load_file(by_bob, config=pin)  # bob's key is in the ring, but bob is not pinned
    with pytest.raises(pc.SignatureError):
        ct_np.load_file(by_bob, config=pc.LoadOptions(pc.KeyRing(ring), trusted_signers=[alice.verify_key]))
    # a pinned private key pins its public half; the pinned key alone is enough to verify
    assert_loads(by_alice, {"keys": [ring[0]], "trusted_signers": [alice.to_jwk()]})
    with pytest.raises(pc.SignatureError):
        ct_np.load_file(by_bob, config={"keys": [ring[0]], "trusted_signers": [alice.verify_key]})
    with pytest.raises(pc.ConfigError):
        ct_np.load_file(by_alice, config={"keys": ring, "trusted_signers": [ring[0]]})


def test_pinned_signer_from_settings(publishers, tmp_path, monkeypatch):
    by_alice, by_bob, ring = publishers["by_alice"], publishers["by_bob"], publishers["ring"]
    use_settings(monkeypatch, tmp_path, 'trusted_signers = ["pub/alice.jwk"]\n')
    assert_loads(by_alice, {"keys": ring})
    assert_loads(by_alice, {"keys": ring[:1]})
    with pytest.raises(pc.SignatureError):
        ct_np.load_file(by_bob, config={"keys": ring})
    with pytest.raises(pc.SignatureError):
        ct_np.load_file(by_bob, config={"keys": [ring[0], publishers["bob"]]})  # bob's private key: still no
    # pins passed in code replace the settings' pins
    assert_loads(by_bob, {"keys": ring, "trusted_signers": [publishers["bob"].verify_key]})


def test_pinned_signer_with_unrelated_key_in_code(publishers):
    """A file by the pinned publisher loads although code also holds another publisher's key."""
    ring = [publishers["ring"][0], pc.generate_signing_key(kid="carol").verify_key]
    assert_loads(publishers["by_alice"], {"keys": ring, "trusted_signers": [publishers["alice"].verify_key]})


def test_several_pinned_signers(publishers):
    """Pinned keys are trusted keys: with two pinned publishers, the file's kid picks among them."""
    config = {"keys": publishers["ring"][:1], "trusted_signers": [publishers[k].verify_key for k in ("alice", "bob")]}
    assert_loads(publishers["by_alice"], config)
    assert_loads(publishers["by_bob"], config)


# ---------------------------------------------------------------------------------------------------------------
# Rules and require_encryption


@pytest.fixture
def layout(tmp_path, master_key, signing_key) -> dict[str, Path]:
    """secure/ and secure/lab/ (under rules) and public/, each with the same stripped (plain) file."""
    encrypted = save(tmp_path / "secure" / "enc.ct", master_key, signing_key)
    plain = {d: strip_crypto(encrypted, tmp_path / d / "plain.safetensors") for d in ("secure", "secure/lab", "public")}
    return {"encrypted": encrypted, **plain, "root": tmp_path}


def assert_plain_loads(path: Path, config: Any = None) -> None:
    out = ct_np.load_file(path, config=config)
    expected = st_np.load_file(path)
    assert set(out) == set(expected) and all(out[k].tobytes() == expected[k].tobytes() for k in out)  # NaN-safe
    assert not np.array_equal(out["w"], DATA["w"])  # the stripped file's "w" is ciphertext


def test_rule_requires_encryption(layout, monkeypatch, master_key, signing_key):
    keys = {"keys": [master_key, signing_key.verify_key]}
    assert_plain_loads(layout["secure"])
    use_settings(monkeypatch, layout["root"] / "etc", f"[[rule]]\npath = {toml_str(layout['root'] / 'secure')}\n")
    with pytest.raises(pc.NotEncryptedError):
        ct_np.load_file(layout["secure"])
    with pytest.raises(pc.NotEncryptedError):
        pc.safe_open(layout["secure"], framework="np")
    with pytest.raises(pc.NotEncryptedError):
        ct_np.load_file(layout["secure/lab"])  # a rule covers its whole tree
    assert_plain_loads(layout["public"])
    assert_loads(layout["encrypted"], keys)


def test_rule_path_relative_to_settings(layout, monkeypatch):
    use_settings(monkeypatch, layout["root"], '[[rule]]\npath = "secure"\nrequire_encryption = true\n')
    with pytest.raises(pc.NotEncryptedError):
        ct_np.load_file(layout["secure"])
    assert_plain_loads(layout["public"])


def test_most_specific_rule_wins(layout, monkeypatch):
    root = layout["root"]
    use_settings(
        monkeypatch,
        root,
        '[[rule]]\npath = "secure/lab"\nrequire_encryption = false\n\n[[rule]]\npath = "secure"\n',
    )
    with pytest.raises(pc.NotEncryptedError):
        ct_np.load_file(layout["secure"])
    assert_plain_loads(layout["secure/lab"])


def test_rule_signers(publishers, tmp_path, monkeypatch):
    """Outer directory pinned to alice, inner one to bob: each file must come from its directory's publisher."""
    ring = publishers["ring"]
    for where in ("outer", "outer/inner"):
        for who in ("alice", "bob"):
            (tmp_path / where).mkdir(exist_ok=True)
            (tmp_path / where / f"{who}.ct").write_bytes(publishers[f"by_{who}"].read_bytes())
    use_settings(
        monkeypatch,
        tmp_path,
        '[[rule]]\npath = "outer"\nsigners = ["pub/alice.jwk"]\nrequire_encryption = true\n\n'
        '[[rule]]\npath = "outer/inner"\nsigners = ["pub/bob.jwk"]\n',
    )
    assert_loads(tmp_path / "outer" / "alice.ct", {"keys": ring})
    assert_loads(tmp_path / "outer" / "inner" / "bob.ct", {"keys": ring})
    with pytest.raises(pc.SignatureError):
        ct_np.load_file(tmp_path / "outer" / "bob.ct", config={"keys": ring})
    with pytest.raises(pc.SignatureError):
        ct_np.load_file(tmp_path / "outer" / "inner" / "alice.ct", config={"keys": ring})
    assert_loads(publishers["by_bob"], {"keys": ring})  # no rule covers tmp_path itself


def test_rule_applies_through_symlink_into_its_directory(layout, monkeypatch):
    """A symlink placed in a rule's directory does not take a plain file out of the rule's reach."""
    root = layout["root"]
    (root / "secure" / "alias.safetensors").symlink_to(layout["public"])
    use_settings(monkeypatch, root, '[[rule]]\npath = "secure"\n')
    with pytest.raises(pc.NotEncryptedError):
        ct_np.load_file(root / "secure" / "alias.safetensors")


def test_rule_follows_symlinked_directory_to_real_path(layout, monkeypatch):
    root = layout["root"]
    (root / "shortcut").symlink_to(root / "secure", target_is_directory=True)
    use_settings(monkeypatch, root, '[[rule]]\npath = "secure"\n')
    with pytest.raises(pc.NotEncryptedError):
        ct_np.load_file(root / "shortcut" / "plain.safetensors")


def test_require_encryption_everywhere(layout, monkeypatch, master_key, signing_key):
    keys = [master_key, signing_key.verify_key]
    for path in (layout["public"], layout["secure"]):
        with pytest.raises(pc.NotEncryptedError):
            ct_np.load_file(path, config={"require_encryption": True})
        with pytest.raises(pc.NotEncryptedError):
            ct_np.load(path.read_bytes(), config=pc.LoadOptions(require_encryption=True))
        with pytest.raises(pc.NotEncryptedError):
            pc.safe_open(path, framework="np", config={"require_encryption": True})
    assert_loads(layout["encrypted"], {"keys": keys, "require_encryption": True})
    use_settings(monkeypatch, layout["root"], "require_encryption = true\n")
    with pytest.raises(pc.NotEncryptedError):
        ct_np.load_file(layout["public"])
    assert_loads(layout["encrypted"], {"keys": keys})


# ---------------------------------------------------------------------------------------------------------------
# Key providers


class Provider:
    """A key provider that answers with fixed keys and records what it was asked."""

    def __init__(self, answer: ProvidedKeys | None) -> None:
        self.answer = answer
        self.requests: list[KeyRequest] = []

    def provide(self, request: KeyRequest) -> ProvidedKeys | None:
        self.requests.append(request)
        return self.answer


def with_provider(keys: list[Any], *providers: Provider) -> pc.LoadOptions:
    return pc.LoadOptions(pc.KeyRing(keys), providers=list(providers))


def test_provider_not_asked_when_static_keys_suffice(tmp_path, master_key, signing_key):
    path = save(tmp_path / "m.ct", master_key, signing_key)
    provider = Provider(ProvidedKeys(master_key=pc.generate_master_key()))
    assert_loads(path, with_provider([master_key, signing_key.verify_key], provider))
    assert provider.requests == []


def test_provider_supplies_master_key(tmp_path, master_key, signing_key):
    path = save(tmp_path / "m.ct", master_key, signing_key)
    provider = Provider(ProvidedKeys(master_key=master_key))
    assert_loads(path, with_provider([signing_key.verify_key], provider))
    [request] = provider.requests
    assert request.path == os.fspath(path)
    assert request.header_bytes == header_bytes(path)
    assert request.crypto.enc.kid == "enc-test" and set(request.crypto.encrypted) == set(ENCRYPTED)


def test_provider_supplies_both_keys_asked_once(tmp_path, master_key, signing_key):
    path = save(tmp_path / "m.ct", master_key, signing_key)
    silent = Provider(None)
    provider = Provider(ProvidedKeys(verify_key=signing_key.verify_key, master_key=master_key))
    later = Provider(ProvidedKeys(master_key=pc.generate_master_key()))
    assert_loads(path, with_provider([], silent, provider, later))
    assert len(silent.requests) == len(provider.requests) == 1 and later.requests == []
    with pc.safe_open(path, framework="np", config=with_provider([], provider)) as handle:
        assert np.array_equal(handle.get_slice("w")[1:2], DATA["w"][1:2])


def test_provider_sees_in_memory_files(tmp_path, master_key, signing_key):
    path = save(tmp_path / "m.ct", master_key, signing_key)
    provider = Provider(ProvidedKeys(master_key=master_key))
    out = ct_np.load(path.read_bytes(), config=with_provider([signing_key.verify_key], provider))
    assert np.array_equal(out["w"], DATA["w"])
    assert provider.requests[0].header_bytes == header_bytes(path)


def test_provider_supplies_verify_key(tmp_path, master_key, signing_key):
    path = save(tmp_path / "m.ct", master_key, signing_key)
    assert_loads(path, with_provider([master_key], Provider(ProvidedKeys(verify_key=signing_key.verify_key))))
    impostor = pc.generate_signing_key(kid=signing_key.kid).verify_key
    with pytest.raises(pc.SignatureError):
        ct_np.load_file(path, config=with_provider([master_key], Provider(ProvidedKeys(verify_key=impostor))))
    pinned = pc.LoadOptions(
        pc.KeyRing([master_key]),
        trusted_signers=[pc.generate_signing_key().verify_key],
        providers=[Provider(ProvidedKeys(verify_key=signing_key.verify_key))],
    )
    with pytest.raises(pc.SignatureError):
        ct_np.load_file(path, config=pinned)  # a provider's key must be pinned too


def test_provider_supplies_data_keys(tmp_path, master_key, signing_key):
    path = save(tmp_path / "m.ct", master_key, signing_key)
    data_keys = unwrapped_data_keys(path, master_key)
    assert set(data_keys) == set(ENCRYPTED)
    provider = Provider(ProvidedKeys(data_keys=data_keys))
    assert_loads(path, with_provider([signing_key.verify_key], provider))
    assert len(provider.requests) == 1


@pytest.mark.parametrize("defect", ["missing", "extra", "short"])
def test_provider_data_keys_that_do_not_match(tmp_path, master_key, signing_key, defect):
    path = save(tmp_path / "m.ct", master_key, signing_key)
    data_keys = unwrapped_data_keys(path, master_key)
    if defect == "missing":
        del data_keys["v"]
    elif defect == "extra":
        data_keys["norm"] = bytes(32)
    else:
        data_keys["v"] = data_keys["v"][:16]
    with pytest.raises(pc.WrongKeyError):
        ct_np.load_file(
            path, config=with_provider([signing_key.verify_key], Provider(ProvidedKeys(data_keys=data_keys)))
        )


def test_provider_wrong_data_keys_never_yield_plaintext(tmp_path, master_key, signing_key):
    path = save(tmp_path / "m.ct", master_key, signing_key)
    wrong = {name: os.urandom(32) for name in ENCRYPTED}
    with pytest.raises(pc.IntegrityError, match="data key is wrong"):  # a data key fails at its first chunk's tag
        ct_np.load_file(path, config=with_provider([signing_key.verify_key], Provider(ProvidedKeys(data_keys=wrong))))


def test_provider_with_nothing_to_say(tmp_path, monkeypatch, master_key, signing_key):
    path = save(tmp_path / "m.ct", master_key, signing_key)
    (tmp_path / "keys").mkdir()
    decoys = [pc.generate_master_key(kid=f"decoy-{i}") for i in range(4)]  # two in code: no single-key fallback
    write_key_file(tmp_path / "keys" / "decoy.jwk", decoys[2])
    monkeypatch.setenv("CRYPTOTENSOR_KEYS", json.dumps(decoys[1].to_jwk()))
    provider = Provider(None)
    options = pc.LoadOptions(
        pc.KeyRing([decoys[0], decoys[3], signing_key]), key_dirs=[tmp_path / "keys"], providers=[provider]
    )
    with pytest.raises(pc.MissingKeyError) as caught:
        ct_np.load_file(path, config=options)
    assert len(provider.requests) == 1
    message = str(caught.value)
    for where in ("enc-test", os.fspath(path), "in code", "CRYPTOTENSOR_KEYS", "key directories", "1 key providers"):
        assert where in message
    for key in [*decoys, master_key]:
        for text in (key.to_jwk()["k"], key.to_jwk("reference")["k"], key.secret.hex()):
            assert text not in message and text not in repr(caught.value)
    seed = signing_key.to_jwk()["d"]
    assert seed not in message and signing_key.to_jwk("reference")["d"] not in message


# ---------------------------------------------------------------------------------------------------------------
# Settings file errors


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("key_dirs = [", id="invalid-toml"),
        pytest.param("key_dirs = []\nkey_dirs = []\n", id="duplicate-key"),
        pytest.param('trusted_signer = ["a.jwk"]\n', id="unknown-key"),
        pytest.param("[keys]\ndir = 'x'\n", id="unknown-table"),
        pytest.param('key_dirs = "keys"\n', id="key-dirs-not-a-list"),
        pytest.param("jku_dirs = [1]\n", id="jku-dirs-not-paths"),
        pytest.param("trusted_signers = 'pub.jwk'\n", id="signers-not-a-list"),
        pytest.param("[[rule]]\nrequire_encryption = true\n", id="rule-without-path"),
        pytest.param('[[rule]]\npath = "m"\nsigner = ["pub.jwk"]\n', id="rule-unknown-field"),
        pytest.param('[[rule]]\npath = "m"\nsigners = "pub.jwk"\n', id="rule-signers-not-a-list"),
        pytest.param('rule = ["m"]\n', id="rule-not-a-table"),
        pytest.param("rule = 5\n", id="rule-not-a-list"),
        pytest.param("[[rule]]\npath = 3\n", id="rule-path-not-a-string"),
        pytest.param('[[rule]]\npath = "m"\nrequire_encryption = "false"\n', id="rule-flag-not-a-boolean"),
        pytest.param('require_encryption = "no"\n', id="flag-not-a-boolean"),
        pytest.param('trusted_signers = ["master.jwk"]\n', id="signer-is-a-master-key"),
    ],
)
def test_bad_settings_are_config_errors(tmp_path, monkeypatch, master_key, signing_key, text):
    path = save(tmp_path / "m.ct", master_key, signing_key)
    (tmp_path / "etc").mkdir()
    write_key_file(tmp_path / "etc" / "master.jwk", master_key)
    use_settings(monkeypatch, tmp_path / "etc", text)
    with pytest.raises(pc.ConfigError):
        ct_np.load_file(path, config={"keys": [master_key, signing_key.verify_key]})


def test_unreadable_settings_are_config_errors(tmp_path, monkeypatch, master_key, signing_key):
    path = save(tmp_path / "m.ct", master_key, signing_key)
    monkeypatch.setenv("PYCRYPTOTENSORS_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(pc.ConfigError, match=r"missing\.toml"):
        ct_np.load_file(path, config={"keys": [master_key, signing_key.verify_key]})


def test_settings_missing_signer_file(tmp_path, monkeypatch, master_key, signing_key):
    path = save(tmp_path / "m.ct", master_key, signing_key)
    use_settings(monkeypatch, tmp_path, 'trusted_signers = ["nowhere.jwk"]\n')
    with pytest.raises(pc.KeyFormatError, match=r"cannot read key file .*nowhere\.jwk"):
        ct_np.load_file(path, config={"keys": [master_key, signing_key.verify_key]})


def test_settings_key_service_section_is_kept_for_plugins(tmp_path, monkeypatch, master_key, signing_key):
    path = save(tmp_path / "m.ct", master_key, signing_key)
    use_settings(monkeypatch, tmp_path, '[key_service]\nallowed = ["https://keys.example"]\n')
    assert_loads(path, {"keys": [master_key, signing_key.verify_key]})


def test_keys_md_provider_example(tmp_path, master_key, signing_key):
    """The provider class in docs/KEYS.md runs as written, and refuses kids that would leave its directory."""
    text = (Path(__file__).parents[1] / "docs" / "KEYS.md").read_text(encoding="utf-8")
    [code] = [block.split("```", 1)[0] for block in text.split("```python")[1:] if "class VaultDirProvider" in block]
    namespace: dict[str, Any] = {}
    exec(compile(code, "docs/KEYS.md", "exec"), namespace)
    (tmp_path / "vault").mkdir()
    write_key_file(tmp_path / "vault" / f"{master_key.kid}.jwk", master_key)
    provider = namespace["VaultDirProvider"](str(tmp_path / "vault"))
    path = save(tmp_path / "m.ct", master_key, signing_key)
    assert_loads(path, pc.LoadOptions(pc.KeyRing([signing_key.verify_key]), providers=[provider]))
    write_key_file(tmp_path / "escaped.jwk", master_key)
    sneaky = save(tmp_path / "s.ct", renamed(master_key, "../escaped"), signing_key)
    with pytest.raises(pc.MissingKeyError):
        ct_np.load_file(sneaky, config=pc.LoadOptions(pc.KeyRing([signing_key.verify_key]), providers=[provider]))
