"""Fuzzing the reader with hypothesis.

(a) Bytes that are not a file we wrote: pure noise, a plausible length prefix over noise, a generated JSON
header, and a real header with one of its reserved documents rewritten at a random place (optionally
re-signed). ``numpy.load`` must raise a CryptoTensorsError, or, for a plain file it hands to safetensors,
behave exactly as ``safetensors.numpy.load`` does on the same bytes. Nothing else may escape. A refusal of
bytes that ``safetensors.numpy.load`` accepts must be one of the documented differences (DOCUMENTED_REFUSALS,
docs/FORMAT.md §13), with that difference's error class.

(b) A valid encrypted file (versions 1 and 2) with bytes changed at random places: every loader must raise
a CryptoTensorsError or return exactly the saved tensors.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pycryptotensors as pc
import pycryptotensors.numpy as pn
from _filecraft import (
    B64_ALPHABET,
    CRYPTO_KEYS,
    ENCRYPTION,
    EXTENSIONS,
    POLICY,
    RESERVED,
    Sample,
    edit,
    inner,
    make_sample,
    same,
    set_inner,
)
from pycryptotensors import CryptoTensorsError

MASTER = pc.generate_master_key(kid="enc-fuzz")
SIGNER = pc.generate_signing_key(kid="sign-fuzz")
SAMPLES = {version: make_sample(MASTER, SIGNER, version) for version in ("1", "2")}
LOAD_CONFIG = SAMPLES["2"].load_config
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------------------------------------------
# (a) arbitrary input


def is_plain(data: bytes) -> bool:
    """Whether our reader hands these bytes to safetensors (it returns no handle for plain data)."""
    try:
        handle = pc.safe_open.from_bytes(data, "np", LOAD_CONFIG)
    except CryptoTensorsError:
        return False
    if handle is not None:
        handle.close()
    return handle is None


# The only reasons we may refuse a file that safetensors loads: docs/FORMAT.md §13 ("Files safetensors loads
# and pycryptotensors refuses") lists the same four. Each is a property of the bytes, computed here without the
# library, with the error class the refusal must have. Any other refusal of a loadable file fails the test.
READING_ERRORS = (pc.FormatError, pc.IntegrityError, pc.KeyAccessError, pc.PolicyDeniedError)
DOCUMENTED_REFUSALS: dict[str, tuple[tuple[type[CryptoTensorsError], ...], str]] = {
    "crypto-metadata": (READING_ERRORS, "__metadata__ names a reserved key: a CryptoTensors file (§9.7, §10)"),
    "duplicate-keys": ((pc.FormatError,), "a header our parser reads repeats a JSON key (§9.3)"),
    "leading-bytes": ((pc.FormatError,), "a header that spells a reserved name does not start with '{' (§9.2)"),
    "entry-fields": ((pc.FormatError,), "a header that spells a reserved name has an entry with other fields (§9.5)"),
}
ENTRY_FIELDS = {"dtype", "shape", "data_offsets"}


def documented_reasons(data: bytes) -> set[str]:
    """Which of DOCUMENTED_REFUSALS apply to ``data`` (read as safetensors would read it)."""
    size = int.from_bytes(data[:8], "little")
    raw = data[8 : 8 + size]
    spelled = any(key.encode() in raw for key in RESERVED)  # §10.1: a reserved name written out
    duplicates = False

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal duplicates
        duplicates = duplicates or len({key for key, _ in items}) != len(items)
        return dict(items)

    try:
        header = json.loads(raw, object_pairs_hook=pairs)
    except (ValueError, RecursionError):
        return set()
    if not isinstance(header, dict):
        return set()
    reasons = set()
    metadata = header.get("__metadata__")
    if isinstance(metadata, dict) and not set(RESERVED).isdisjoint(metadata):
        reasons.add("crypto-metadata")
    ours = spelled or (b"\\u" in raw and (duplicates or reserved_anywhere(header)))  # §10.1's sniff
    if ours and duplicates:
        reasons.add("duplicate-keys")
    if spelled and not raw.startswith(b"{"):
        reasons.add("leading-bytes")
    entries = [value for name, value in header.items() if name != "__metadata__"]
    if spelled and any(isinstance(entry, dict) and set(entry) != ENTRY_FIELDS for entry in entries):
        reasons.add("entry-fields")
    return reasons


def reserved_anywhere(node: Any) -> bool:
    if isinstance(node, dict):
        return not set(RESERVED).isdisjoint(node) or any(reserved_anywhere(v) for v in node.values())
    return isinstance(node, list) and any(reserved_anywhere(v) for v in node)


def check_refusal_is_documented(data: bytes, error: CryptoTensorsError) -> None:
    """We refused ``data``; if safetensors loads it, the refusal must be one of DOCUMENTED_REFUSALS."""
    try:
        safetensors.numpy.load(data)
    except Exception:
        return  # safetensors refuses it too
    reasons = documented_reasons(data)
    allowed = [r for r in reasons if isinstance(error, DOCUMENTED_REFUSALS[r][0])]
    assert allowed, (
        f"refused a file safetensors loads, for no documented reason ({type(error).__name__}: {error}; "
        f"reasons that apply: {sorted(reasons) or 'none'}): {data[:300]!r}"
    )


def check_arbitrary(data: bytes) -> None:
    try:
        result = pn.load(data, config=LOAD_CONFIG)
    except CryptoTensorsError as error:
        check_refusal_is_documented(data, error)
        return
    except Exception as exc:
        assert is_plain(data), f"{type(exc).__name__} escaped for a CryptoTensors candidate: {exc}"
        with pytest.raises(type(exc)):  # a plain file fails exactly as safetensors makes it fail
            safetensors.numpy.load(data)
        return
    assert is_plain(data), "bytes nobody signed loaded as a CryptoTensors file"
    expected = safetensors.numpy.load(data)
    assert set(result) == set(expected)
    assert all(same(result[name], expected[name]) for name in expected)


def prefixed(header: bytes, body: bytes, length: int | None = None) -> bytes:
    return struct.pack("<Q", len(header) if length is None else length) + header + body


@FUZZ
@given(st.binary(max_size=512))
def test_noise(data: bytes) -> None:
    check_arbitrary(data)


@FUZZ
@given(st.binary(max_size=300), st.integers(min_value=0, max_value=310))
def test_noise_behind_a_plausible_length(payload: bytes, length: int) -> None:
    check_arbitrary(prefixed(payload, b"", length=length))


@FUZZ
@given(st.binary(max_size=200), st.sampled_from([b'{"__metadata__":{"__crypto_keys__":', b'{"', b"{", b'{"\\u']))
def test_noise_behind_a_header_opening(payload: bytes, opening: bytes) -> None:
    check_arbitrary(prefixed(opening + payload, b""))


ENTRY = '"dtype":"U8","shape":[1],"data_offsets":[0,1]'


def small_file(template: str) -> bytes:
    """A one-byte file whose header is ``template`` with each ``@`` replaced by a valid U8 entry's fields."""
    return prefixed(template.replace("@", ENTRY).encode(), b"x")


DOCUMENTED_EXAMPLES = {  # one file per documented difference: safetensors loads it, we refuse it
    "crypto-metadata": '{"__metadata__":{"__crypto_keys__":"{}"},"a":{@}}',
    "duplicate-keys": '{"__metadata__":{"note":"__policy__"},"a":{@},"a":{@}}',
    "leading-bytes": ' {"__metadata__":{"note":"__policy__"},"a":{@}}',
    "entry-fields": '{"__metadata__":{"note":"__policy__"},"a":{@,"extra":1}}',
}


@pytest.mark.parametrize("reason", sorted(DOCUMENTED_REFUSALS))
def test_each_documented_refusal(reason: str) -> None:
    """The list is real: each entry names a file that safetensors loads and we refuse, with its error class,
    and the classifier the fuzz tests use recognises it (and only it, so the reasons do not overlap here)."""
    data = small_file(DOCUMENTED_EXAMPLES[reason])
    assert set(safetensors.numpy.load(data)) == {"a"}
    with pytest.raises(DOCUMENTED_REFUSALS[reason][0]):
        pn.load(data, config=LOAD_CONFIG)
    assert documented_reasons(data) == {reason}
    check_arbitrary(data)


@pytest.mark.parametrize(
    "header",
    [
        '{"a":{@,"extra":1}}',  # no reserved name: safetensors' rules
        '{"a":{@},"a":{@}}',
        ' {"a":{@}}',
        '{"\\u0061":{@}}',  # an escape that decodes to nothing reserved
        '{"__metadata__":{"note":"x"},"__policy__":{@}}',  # a reserved name as a tensor name
    ],
)
def test_loadable_plain_files_are_not_refused(header: str) -> None:
    """The other side: files that safetensors loads and none of the documented differences covers load."""
    data = small_file(header)
    assert documented_reasons(data) == set()
    loaded = pn.load(data, config=LOAD_CONFIG)
    expected = safetensors.numpy.load(data)
    assert set(loaded) == set(expected) and all(same(loaded[k], expected[k]) for k in expected)


def test_an_undocumented_refusal_fails_the_check() -> None:
    """The oracle itself can fail: a refusal of a loadable file with no documented reason is reported."""
    data = small_file('{"a":{@}}')
    with pytest.raises(AssertionError, match="no documented reason"):
        check_refusal_is_documented(data, pc.FormatError("made up"))
    spelled = small_file(DOCUMENTED_EXAMPLES["entry-fields"])
    with pytest.raises(AssertionError, match="no documented reason"):  # documented, but with another class
        check_refusal_is_documented(spelled, pc.IntegrityError("wrong class"))


FIELD_NAMES = [
    "version",
    "chunk_size",
    "enc",
    "sign",
    "alg",
    "kid",
    "jku",
    "kty",
    "k",
    "x",
    "d",
    "local",
    "remote",
    "integrity",
    "tensors",
    "wrapped_key",
    "key_iv",
    "key_tag",
    "base_iv",
    "tags",
    "iv",
    "tag",
    "enc_a",
    "plain_d",
]
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.sampled_from(["2", "1", "aes256gcm", "ed25519", "sha256", "AAAA", "A" * 16 + "=="]),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
DTYPE_NAMES = ["F32", "F16", "BF16", "I64", "U8", "BOOL", "F4", "F6_E2M3", "F8_E8M0", "C64", "X", "f32"]


@st.composite
def generated_files(draw: st.DrawFn) -> bytes:
    """A JSON header shaped like safetensors, with reserved metadata drawn from the crypto vocabulary."""
    header: dict[str, Any] = {}
    if draw(st.booleans()):
        keys = st.sampled_from([*RESERVED, "note"]) | st.text(max_size=8)
        values = st.one_of(st.text(max_size=16), JSON_VALUES.map(json.dumps))
        header["__metadata__"] = draw(st.dictionaries(keys, values, max_size=6))
    position = 0
    for name in draw(st.lists(st.text(min_size=1, max_size=6), max_size=4, unique=True)):
        shape = draw(st.lists(st.integers(-1, 6), max_size=3))
        dtype = draw(st.sampled_from(DTYPE_NAMES) | JSON_VALUES)
        if draw(st.booleans()):  # a consistent U8 entry, so that some files get past the offsets check
            count = int(np.prod([max(d, 0) for d in shape])) if shape else 1
            entry = {"dtype": "U8", "shape": [max(d, 0) for d in shape], "data_offsets": [position, position + count]}
            position += count
        else:
            entry = {"dtype": dtype, "shape": shape, "data_offsets": draw(st.lists(st.integers(-1, 40), max_size=3))}
        if draw(st.integers(0, 9)) == 0:
            entry[draw(st.sampled_from(["extra", "dtype"]))] = draw(JSON_VALUES)
        header[name] = entry
    body = draw(st.binary(min_size=position, max_size=position + 2)) if draw(st.booleans()) else bytes(position)
    raw = json.dumps(header, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    return prefixed(raw, body)


@FUZZ
@given(generated_files())
def test_generated_headers(data: bytes) -> None:
    check_arbitrary(data)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON document (the root included) that a value can be put."""
    found = [prefix]
    if isinstance(node, dict):
        for key, child in node.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found += _paths(child, (*prefix, index))
    return found


def _put(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    target = document
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return document


@FUZZ
@given(
    version=st.sampled_from(["1", "2"]),
    key=st.sampled_from([CRYPTO_KEYS, ENCRYPTION, POLICY, EXTENSIONS]),
    where=st.integers(min_value=0),
    value=JSON_VALUES,
    resign=st.booleans(),
)
def test_reserved_documents_rewritten(version: str, key: str, where: int, value: Any, resign: bool) -> None:
    """A real header with one value of a reserved document replaced; re-signed half of the time, so the
    parser and the layers under the signature see it too. Refused, or exactly the saved tensors."""
    sample = SAMPLES[version]

    def change(header: dict[str, Any]) -> None:
        document = inner(header, key)
        paths = _paths(document)
        set_inner(header, key, _put(document, paths[where % len(paths)], value))

    try:
        data = edit(sample.data, change, signer=SIGNER if resign else None)
    except UnicodeEncodeError:  # a drawn lone surrogate: not representable as a UTF-8 file by this helper
        return
    check_refused_or_original(sample, data)


# ---------------------------------------------------------------------------------------------------------------
# (b) random changes to a valid encrypted file


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "model.cts"


def check_refused_or_original(sample: Sample, data: bytes, path: Path | None = None) -> None:
    try:
        loaded = pn.load(data, config=sample.load_config)
    except CryptoTensorsError:
        pass
    else:
        assert set(loaded) == set(sample.tensors), sorted(loaded)
        for name, original in sample.tensors.items():
            assert same(loaded[name], original), f"numpy.load returned altered {name!r}"
    if path is None:
        return
    path.write_bytes(data)
    try:
        handle = pc.safe_open(path, "np", config=sample.load_config)
    except CryptoTensorsError:
        return
    with handle:
        for name in handle.offset_keys():
            try:
                value = handle.get_tensor(name)
            except CryptoTensorsError:
                continue
            assert same(value, sample.tensors[name]), f"get_tensor returned altered {name!r}"


def _apply(data: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    buffer = bytearray(data)
    for kind, where, value in edits:
        at = where % len(buffer)
        if kind == "xor":
            buffer[at] ^= value
        elif kind == "base64":  # keeps base64 text base64, so edits reach the signature check
            buffer[at] = ord(B64_ALPHABET[value % 64])
        elif kind == "digit":
            buffer[at] = ord("0123456789"[value % 10])
        elif kind == "insert":
            buffer.insert(at, value)
        else:
            del buffer[at]
    return bytes(buffer)


EDITS = st.lists(
    st.tuples(
        st.sampled_from(["xor", "xor", "base64", "digit", "insert", "delete"]),
        st.integers(min_value=0, max_value=2**20),
        st.integers(min_value=1, max_value=255),
    ),
    min_size=1,
    max_size=4,
)


@FUZZ
@given(version=st.sampled_from(["1", "2"]), edits=EDITS, in_header=st.booleans())
def test_mutated_file(version: str, edits: list[tuple[str, int, int]], in_header: bool, scratch: Path) -> None:
    sample = SAMPLES[version]
    span = sample.data_start if in_header else len(sample.data)  # half the time, aim at the header
    data = _apply(sample.data, [(kind, where % span, value) for kind, where, value in edits])
    check_refused_or_original(sample, data, scratch)


@FUZZ
@given(version=st.sampled_from(["1", "2"]), length=st.integers(min_value=0), tail=st.binary(max_size=16))
def test_cut_and_extended_file(version: str, length: int, tail: bytes, scratch: Path) -> None:
    sample = SAMPLES[version]
    data = sample.data[: length % len(sample.data)] + tail
    check_refused_or_original(sample, data, scratch)


def test_samples_load() -> None:
    """Guard: the fuzzed files are valid to begin with."""
    for sample in SAMPLES.values():
        loaded = pn.load(sample.data, config=sample.load_config)
        assert all(same(loaded[name], original) for name, original in sample.tensors.items())
