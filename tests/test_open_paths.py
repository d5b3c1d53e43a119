"""The fast paths of opening and slicing (issue 14) keep every guarantee of the slow ones.

- Data keys are unwrapped one by one at first use, after the signature and the policy; a wrong master key
  still fails at open (one key is unwrapped there), and a key that does not unwrap fails at its tensor's
  first read with WrongKeyError, never as garbage.
- Parsed, verified headers are remembered by their exact bytes: a changed header is parsed and verified
  again, a failure is never remembered, and a verification is only reused for the same key.
- Duplicate JSON keys are still refused when the colon count would be fooled by an escaped colon; headers
  not laid out as our writer lays them out still verify (the canonical message is the fallback).
- Slices decrypt into a reusable buffer but return arrays the caller owns.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import pycryptotensors as pc
import pycryptotensors.numpy as pn
from _filecraft import ENCRYPTION, b64, edit, edit_inner, split, unb64
from pycryptotensors.cipher.aead import unwrap_keys, wrap_key
from pycryptotensors.errors import FormatError, SignatureError, WrongKeyError
from pycryptotensors.format.header import parse_header
from pycryptotensors.reading import headers, reader


@pytest.fixture(autouse=True)
def _nothing_remembered() -> None:
    headers.forget()


def tensors(count: int = 20) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(14)
    return {f"t{i:02d}": rng.standard_normal(8 + i).astype(np.float32) for i in range(count)}


@pytest.fixture
def many(tmp_path: Path, config: dict) -> tuple[Path, dict[str, np.ndarray]]:
    data = tensors()
    path = tmp_path / "many.ct"
    pn.save_file(data, path, config=config)
    return path, data


@pytest.fixture
def unwraps(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the data keys unwrapped, in order."""
    seen: list[str] = []

    def counting(alg, master, wrapped):  # type: ignore[no-untyped-def]
        seen.extend(wrapped)
        return unwrap_keys(alg, master, wrapped)

    monkeypatch.setattr(reader, "unwrap_keys", counting)
    return seen


def test_data_keys_are_unwrapped_at_first_use(many, load_config, unwraps) -> None:
    path, data = many
    with pc.safe_open(path, "np", config=load_config) as f:
        assert len(unwraps) == 1  # one at open: it checks the master key
        assert np.array_equal(f.get_tensor("t07"), data["t07"])
        assert np.array_equal(f.get_slice("t09")[2:5], data["t09"][2:5])
        assert np.array_equal(f.get_tensor("t07"), data["t07"])  # already unwrapped: not again
        assert sorted(unwraps[1:]) == ["t07", "t09"]
        assert all(np.array_equal(v, data[k]) for k, v in f.get_tensors().items())
        assert sorted(unwraps) == sorted(data)  # each exactly once


def test_wrong_master_key_still_fails_at_open(many, signing_key, unwraps) -> None:
    path, _ = many
    wrong = {"enc_key": pc.generate_master_key(kid="enc-test").to_jwk("reference"),
             "sign_key": signing_key.verify_key.to_jwk("reference")}  # fmt: skip
    with pytest.raises(WrongKeyError):
        pc.safe_open(path, "np", config=wrong)


def test_bad_signature_unwraps_nothing(many, load_config, unwraps) -> None:
    path, _ = many
    original = path.read_bytes()
    path.write_bytes(edit(original, lambda h: h["__metadata__"].update(note="changed")))  # not re-signed
    with pytest.raises(SignatureError):
        pc.safe_open(path, "np", config=load_config)
    assert unwraps == []


def test_a_key_wrapped_under_another_master_key_fails_at_its_first_read(
    many, master_key, signing_key, load_config
) -> None:
    """The publisher (who holds the signing key) wrapped one tensor's key under another master key: opening
    still works (the first tensor's key unwraps), and reading that tensor is a WrongKeyError."""
    path, data = many
    other = pc.generate_master_key()

    def rewrap_one(document: dict) -> None:
        entry = document["t05"]
        wrapped = {"t05": (unb64(entry["wrapped_key"]), unb64(entry["key_iv"]), unb64(entry["key_tag"]))}
        key = unwrap_keys(master_key.alg, master_key.secret, wrapped)["t05"]
        sealed, key_iv, key_tag = wrap_key(master_key.alg, other.secret, key)
        entry.update(wrapped_key=b64(sealed), key_iv=b64(key_iv), key_tag=b64(key_tag))

    path.write_bytes(edit_inner(path.read_bytes(), ENCRYPTION, rewrap_one, signer=signing_key))
    with pc.safe_open(path, "np", config=load_config) as f:
        assert np.array_equal(f.get_tensor("t04"), data["t04"])
        with pytest.raises(WrongKeyError):
            f.get_tensor("t05")
        with pytest.raises(WrongKeyError):
            f.get_slice("t05")[1:3]
        assert np.array_equal(f.get_tensor("t06"), data["t06"])


def test_reopening_reuses_the_parsed_header(many, load_config, monkeypatch) -> None:
    path, data = many
    calls: list[int] = []
    original = headers.parse_header
    monkeypatch.setattr(headers, "parse_header", lambda *a: calls.append(1) or original(*a))
    for _ in range(3):
        with pc.safe_open(path, "np", config=load_config) as f:
            assert np.array_equal(f.get_tensor("t03"), data["t03"])
    assert len(calls) == 1


def test_a_changed_header_is_parsed_and_verified_again(many, signing_key, load_config) -> None:
    path, _ = many
    with pc.safe_open(path, "np", config=load_config) as f:
        assert f.metadata() is None
    resigned = edit(path.read_bytes(), lambda h: h["__metadata__"].update(note="v2"), signer=signing_key)
    path.write_bytes(resigned)
    with pc.safe_open(path, "np", config=load_config) as f:
        assert f.metadata() == {"note": "v2"}
    tampered = edit(resigned, lambda h: h["__metadata__"].update(note="v3"))  # same layout, not re-signed
    path.write_bytes(tampered)
    for _ in range(2):  # a failure is not remembered either way
        with pytest.raises(SignatureError):
            pc.safe_open(path, "np", config=load_config)
    path.write_bytes(resigned)
    with pc.safe_open(path, "np", config=load_config) as f:
        assert f.metadata() == {"note": "v2"}


def test_a_verification_is_reused_only_for_the_same_key(many, load_config, master_key) -> None:
    path, _ = many
    with pc.safe_open(path, "np", config=load_config):
        pass
    stranger = {"enc_key": master_key.to_jwk("reference"),
                "sign_key": pc.generate_signing_key(kid="sign-test").verify_key.to_jwk("reference")}  # fmt: skip
    with pytest.raises(SignatureError):
        pc.safe_open(path, "np", config=stranger)


def test_a_header_in_another_layout_still_verifies(many, load_config) -> None:
    """Indented JSON is the same header: the signature is checked against the canonical message."""
    path, data = many
    path.write_bytes(edit(path.read_bytes(), lambda h: None, indent=2))
    with pc.safe_open(path, "np", config=load_config) as f:
        assert np.array_equal(f.get_tensor("t11"), data["t11"])


ENTRY = '{"dtype":"U8","shape":[1],"data_offsets":[%d,%d]}'


@pytest.mark.parametrize(
    "text",
    [
        # a duplicate whose colon an escaped colon in a name would hide from a plain count
        '{"a\\u003ab":' + ENTRY % (0, 1) + ',"c":' + ENTRY % (1, 2) + ',"c":' + ENTRY % (1, 2) + "}",
        '{"__metadata__":{"k":"v","k":"w\\u003a"},"a":' + ENTRY % (0, 1) + "}",
        # plain duplicates
        '{"a":' + ENTRY % (0, 1) + ',"a":' + ENTRY % (0, 1) + "}",
        '{"a":{"dtype":"U8","dtype":"U8","shape":[1],"data_offsets":[0,1]}}',
    ],
)
def test_duplicate_keys_are_refused(text: str) -> None:
    raw = text.encode()
    with pytest.raises(FormatError, match="duplicate"):
        parse_header(raw, 8 + len(raw), None)


def test_escaped_colons_without_duplicates_parse() -> None:
    raw = ('{"__metadata__":{"x:y":"a\\u003ab"},"a\\u003ab":' + ENTRY % (0, 1) + "}").encode()
    header = parse_header(raw, 8 + len(raw), None)
    assert list(header.tensors) == ["a:b"] and header.metadata == {"x:y": "a:b"}


def test_slices_are_owned_after_the_buffer_is_reused(tmp_path, config, load_config) -> None:
    big = np.arange(1024 * 1024, dtype=np.float32).reshape(1024, 1024)  # 4 MiB: several 1 MiB chunks
    path = tmp_path / "big.ct"
    pn.save_file({"big": big, "small": big[:2].copy()}, path, config=config)
    with pc.safe_open(path, "np", config=load_config) as f:
        first = f.get_slice("big")[10:12, 5:9]
        second = f.get_slice("big")[900:901, :]
        third = f.get_slice("small")[1, 3:7]
        assert np.array_equal(first, big[10:12, 5:9])
        assert np.array_equal(second, big[900:901, :])
        assert np.array_equal(third, big[1, 3:7])
        assert not np.shares_memory(first, second) and not np.shares_memory(first, third)
        assert first.base is None or first.base.nbytes == first.nbytes  # its own buffer, not a window of one
        first[...] = -1
        assert np.array_equal(f.get_slice("big")[10:12, 5:9], big[10:12, 5:9])


def test_a_tampered_chunk_under_a_slice_fails_and_leaves_nothing(tmp_path, config, load_config) -> None:
    big = np.arange(1024 * 1024, dtype=np.float32).reshape(1024, 1024)
    path = tmp_path / "big.ct"
    pn.save_file({"big": big}, path, config=config)
    data = bytearray(path.read_bytes())
    header, _ = split(bytes(data))
    start = 8 + int.from_bytes(data[:8], "little")
    data[start + 3 * 1024 * 1024 + 100] ^= 1  # inside the fourth 1 MiB chunk
    path.write_bytes(bytes(data))
    with pc.safe_open(path, "np", config=load_config) as f:
        assert np.array_equal(f.get_slice("big")[0:2, :], big[0:2, :])  # first chunk: fine
        with pytest.raises(pc.IntegrityError):
            f.get_slice("big")[800:801, :]
        assert np.array_equal(f.get_slice("big")[5:6, 1:3], big[5:6, 1:3])
    assert json.dumps(header)  # the header itself was not touched


def test_a_header_that_did_not_verify_is_not_remembered(many, master_key, load_config, monkeypatch) -> None:
    path, _ = many
    calls: list[int] = []
    original = headers.parse_header
    monkeypatch.setattr(headers, "parse_header", lambda *a: calls.append(1) or original(*a))
    stranger = {"enc_key": master_key.to_jwk("reference"),
                "sign_key": pc.generate_signing_key(kid="sign-test").verify_key.to_jwk("reference")}  # fmt: skip
    for _ in range(2):
        with pytest.raises(SignatureError):
            pc.safe_open(path, "np", config=stranger)
    assert len(calls) == 2  # parsed each time: nothing unverified is kept
    with pc.safe_open(path, "np", config=load_config):
        pass
    with pc.safe_open(path, "np", config=load_config):
        pass
    assert len(calls) == 3
