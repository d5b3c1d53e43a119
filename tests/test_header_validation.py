"""Hostile headers, handcrafted as bytes: each is refused with FormatError (or its subclass UnsupportedError),
quickly and without allocating more than a few MiB, through ``safe_open(path)`` and ``numpy.load(bytes)``.

Checks on the 8-byte length prefix apply to every file. A header that names no reserved key is plain
safetensors and goes to the ``safetensors`` package untouched (docs/FORMAT.md §10), so the hostile JSON
below is planted in CryptoTensors headers, which our strict parser (§9) must refuse. Crypto-field defects are
re-signed with the signing key, so that the defect is the only thing wrong with the file.
"""

from __future__ import annotations

import struct
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors
import safetensors.numpy

import pycryptotensors as pc
import pycryptotensors.numpy as pn
from _filecraft import (
    CRYPTO_KEYS,
    ENCRYPTION,
    EXTENSIONS,
    POLICY,
    SIGNATURE,
    Header,
    Sample,
    assemble,
    b64,
    edit,
    edit_inner,
    make_sample,
    same,
    split,
    unb64,
)
from pycryptotensors import CryptoTensorsError, FormatError, UnsupportedError

# A hostile header is refused in bounded work: the allocation bound is the precise check (deterministic); the
# time bound only catches a hang or a super-linear blow-up (each case takes milliseconds), so that a loaded CI
# machine cannot fail it. Speed itself is measured by bench/, not here.
TIME_LIMIT_S = 10.0
ALLOCATION_LIMIT = 8 * 2**20


def _measured(load: Callable[[], Any], expected: type[Exception]) -> None:
    """``load`` raises ``expected`` within the time limit, with a bounded peak of traced allocations."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(expected):
            result = load()
            if isinstance(result, pc.safe_open):
                result.close()
    finally:
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert elapsed < TIME_LIMIT_S, f"took {elapsed:.2f} s"
    assert peak < ALLOCATION_LIMIT, f"allocated {peak / 2**20:.1f} MiB"


def assert_refused(data: bytes, tmp_path: Path, config: Any, expected: type[Exception] = FormatError) -> None:
    path = tmp_path / "hostile.safetensors"
    path.write_bytes(data)
    _measured(lambda: pc.safe_open(path, "np", config=config), expected)
    _measured(lambda: pn.load(data, config=config), expected)


def raw_file(header: bytes, body: bytes = b"", length: int | None = None) -> bytes:
    return struct.pack("<Q", len(header) if length is None else length) + header + body


# ---------------------------------------------------------------------------------------------------------------
# The length prefix: checked for every file, plain or not


PREFIX_CASES = {
    "empty-file": b"",
    "shorter-than-prefix": b"\x02\x00\x00\x00",
    "prefix-only": struct.pack("<Q", 0),
    "length-zero": raw_file(b"", b"{}", length=0),
    "length-one": raw_file(b"{", b"}"),
    "length-over-limit": raw_file(b"{}", b" " * 64, length=100_000_001),
    "length-2^63": raw_file(b"{}", length=2**63),
    "length-2^64-1": raw_file(b"{}", length=2**64 - 1),
    "length-past-end": raw_file(b'{"__metadata__":{"__signature__":""}}', length=200),
    "length-past-end-by-one": raw_file(b"{}  ", length=5),
}


@pytest.mark.parametrize("data", PREFIX_CASES.values(), ids=PREFIX_CASES.keys())
def test_length_prefix(data: bytes, tmp_path: Path, load_config: dict) -> None:
    assert_refused(data, tmp_path, load_config)


def test_length_over_limit_in_a_file_that_big(tmp_path: Path, load_config: dict) -> None:
    """N just over 100 MB in a (sparse) file long enough to hold it: refused before reading the header."""
    path = tmp_path / "huge.safetensors"
    with path.open("wb") as f:
        f.write(struct.pack("<Q", 100_000_001) + b'{"__metadata__":{"__signature__":"')
        f.truncate(100_000_200)
    _measured(lambda: pc.safe_open(path, "np", config=load_config), FormatError)
    _measured(lambda: pn.load_file(path, config=load_config), FormatError)


# ---------------------------------------------------------------------------------------------------------------
# The outer header, planted in a CryptoTensors header


@dataclass(frozen=True)
class Hostile:
    id: str
    build: Callable[[Sample], bytes]
    expected: type[Exception] = FormatError
    version: str = "2"


def text(old: str, new: str, *, signed: bool = False) -> Callable[[Sample], bytes]:
    """Replace a string that occurs once in the header JSON (the length prefix is recomputed); ``signed``
    re-signs the result, which must then still parse as JSON."""

    def build(s: Sample) -> bytes:
        header = s.data[8 : s.data_start].rstrip(b" ").decode("utf-8")
        assert header.count(old) == 1, f"{old!r} occurs {header.count(old)} times"
        data = assemble(header.replace(old, new).encode("utf-8"), s.data[s.data_start :])
        return edit(data, lambda h: None, signer=s.signer) if signed else data

    return build


def raw(header: bytes, body: bytes = b"") -> Callable[[Sample], bytes]:
    return lambda s: raw_file(header, body)


def outer(change: Callable[[Header], Any], **encoding: Any) -> Callable[[Sample], bytes]:
    """Edit the parsed outer header (not re-signed: §9 refuses it before the signature is checked)."""
    return lambda s: edit(s.data, change, **encoding)


def field(key: str, change: Callable[[Any], Any]) -> Callable[[Sample], bytes]:
    """Edit a reserved metadata document and re-sign, so that the defect is all that is wrong."""
    return lambda s: edit_inner(s.data, key, change, signer=s.signer)


def metadata(key: str, value: str) -> Callable[[Sample], bytes]:
    """Replace a reserved metadata string (not the signature) wholesale, re-signed."""

    def change(h: Header) -> None:
        h["__metadata__"][key] = value

    return lambda s: edit(s.data, change, signer=s.signer)


def entry(name: str, **values: Any) -> Callable[[Sample], bytes]:
    return outer(lambda h: h[name].update(values))


def pop(mapping_path: tuple[str, ...], key: str) -> Callable[[Any], None]:
    def change(document: Any) -> None:
        target = document
        for part in mapping_path:
            target = target[part]
        del target[key]

    return change


def update(mapping_path: tuple[str, ...], **values: Any) -> Callable[[Any], None]:
    def change(document: Any) -> None:
        target = document
        for part in mapping_path:
            target = target[part]
        target.update(values)

    return change


RESERVED_PREFIX = b'{"__metadata__":{"__crypto_keys__":'  # makes any header a CryptoTensors candidate
DEEP = 100_000
ENC_C = '"enc_c":{"dtype":"U8","shape":[7],"data_offsets":[944,951]}'

OUTER_CASES = [
    # encoding and syntax
    Hostile("not-utf8", raw(RESERVED_PREFIX + b'"\xff"}}')),
    Hostile("utf8-encoded-surrogate", raw(RESERVED_PREFIX + b'"\xed\xa0\x80"}}')),
    Hostile("overlong-utf8", raw(RESERVED_PREFIX + b'"\xc0\xaf"}}')),
    Hostile("not-json", raw(RESERVED_PREFIX + b"}}")),
    Hostile("json-cut-short", raw(RESERVED_PREFIX + b'"{}"')),
    Hostile("json-then-garbage", raw(RESERVED_PREFIX + b'"{}"}} x')),
    Hostile("json-array", raw(b'["__crypto_keys__"]')),
    Hostile("json-string", raw(b'"__crypto_keys__"')),
    Hostile("json-number", raw(b"12345678 /* __crypto_keys__ */")),
    Hostile("leading-whitespace", lambda s: raw_file(b" " + s.data[8 : s.data_start], s.data[s.data_start :])),
    Hostile("byte-order-mark", lambda s: raw_file(b"\xef\xbb\xbf" + s.data[8 : s.data_start], s.data[s.data_start :])),
    Hostile(
        "nul-padding", lambda s: raw_file(s.data[8 : s.data_start].rstrip(b" ") + b"\x00" * 8, s.data[s.data_start :])
    ),
    Hostile("deep-nesting", text('"format":"pt"', '"format":' + "[" * DEEP + "]" * DEEP)),
    Hostile("deep-nesting-unclosed", text('"format":"pt"', '"format":' + "[" * DEEP)),
    # duplicate keys, each of which a last-wins parser would accept
    Hostile("duplicate-metadata-object", text('{"__metadata__":{', '{"__metadata__":{},"__metadata__":{')),
    Hostile("duplicate-metadata-key", text('"format":"pt"', '"format":"np","format":"pt"')),
    Hostile("duplicate-tensor", text(ENC_C, ENC_C + "," + ENC_C)),
    Hostile("duplicate-entry-field", text('"enc_c":{"dtype":"U8"', '"enc_c":{"dtype":"I8","dtype":"U8"')),
    Hostile("duplicate-in-crypto-keys", text('{\\"chunk_size\\":64', '{\\"chunk_size\\":32,\\"chunk_size\\":64')),
    Hostile("duplicate-in-encryption", text('{\\"enc_a\\":{', '{\\"enc_a\\":{\\"key_iv\\":\\"AAAA\\",')),
    Hostile("duplicate-in-policy", text('{\\"local\\":', '{\\"local\\":\\"package x\\",\\"local\\":')),
    Hostile("duplicate-in-integrity", text('\\"tensors\\":{', '\\"tensors\\":{\\"plain_d\\":\\"AAAA\\",')),
    # non-standard constants and invalid strings
    Hostile("nan-in-shape", text('"shape":[7]', '"shape":[NaN]')),
    Hostile("infinity-in-offsets", text("[944,951]", "[944,Infinity]")),
    Hostile("minus-infinity-in-shape", text('"shape":[7]', '"shape":[-Infinity]')),
    Hostile("nan-in-crypto-keys", text('{\\"chunk_size\\":64', '{\\"chunk_size\\":NaN')),
    Hostile("lone-surrogate-metadata-value", text('"format":"pt"', '"format":"\\ud800"')),
    Hostile("lone-surrogate-metadata-key", text('"format":"pt"', '"\\udfff":"pt"')),
    Hostile("lone-surrogate-in-policy", text('true\\",\\"remote', 'true\\\\ud800\\",\\"remote', signed=True)),
    # dtype
    Hostile("dtype-unknown", entry("enc_c", dtype="U9")),
    Hostile("dtype-lowercase", entry("enc_c", dtype="u8")),
    Hostile("dtype-padded", entry("enc_c", dtype="U8 ")),
    Hostile("dtype-number", entry("enc_c", dtype=8)),
    Hostile("dtype-null", entry("enc_c", dtype=None)),
    Hostile("dtype-sub-byte-remainder", entry("enc_c", dtype="F4")),  # 7 x 4 bits is not whole bytes
    # shape
    Hostile("shape-negative", entry("enc_c", shape=[-7])),
    Hostile("shape-negative-pair", entry("enc_b", shape=[-7, -8])),
    Hostile("shape-bool", entry("enc_c", shape=[True])),
    Hostile("shape-float", entry("enc_c", shape=[7.0])),
    Hostile("shape-string", entry("enc_c", shape=["7"])),
    Hostile("shape-nested", entry("enc_c", shape=[[7]])),
    Hostile("shape-not-a-list", entry("enc_c", shape=7)),
    Hostile("shape-null", entry("enc_c", shape=None)),
    Hostile("shape-mismatch", entry("enc_c", shape=[8])),
    Hostile("shape-rank-65", entry("enc_c", shape=[1] * 64 + [7])),
    Hostile("shape-product-huge", entry("enc_c", shape=[2**62, 2**62])),
    Hostile("shape-dim-10^4000", entry("enc_c", shape=[10**4000])),
    # data_offsets
    Hostile("offsets-reversed", entry("enc_c", data_offsets=[951, 944])),
    Hostile("offsets-gap", entry("enc_c", shape=[6], data_offsets=[945, 951])),
    Hostile("offsets-overlap", entry("enc_c", data_offsets=[943, 950])),
    Hostile("offsets-past-end", entry("enc_c", shape=[8], data_offsets=[944, 952])),
    Hostile("offsets-claim-4TiB", entry("enc_c", shape=[2**42], data_offsets=[944, 944 + 2**42])),
    Hostile("offsets-size-mismatch", entry("enc_c", data_offsets=[944, 950])),
    Hostile("offsets-three", entry("enc_c", data_offsets=[944, 951, 951])),
    Hostile("offsets-one", entry("enc_c", data_offsets=[944])),
    Hostile("offsets-negative", entry("enc_a", data_offsets=[-200, 0])),
    Hostile("offsets-float", entry("enc_c", data_offsets=[944.0, 951])),
    Hostile("offsets-bool", entry("plain_empty", data_offsets=[True, True])),
    Hostile("offsets-string", entry("enc_c", data_offsets=["944", "951"])),
    Hostile("offsets-null", entry("enc_c", data_offsets=None)),
    Hostile("trailing-bytes", lambda s: s.data + b"\x00" * 8),
    Hostile("missing-bytes", lambda s: s.data[:-1]),
    # entries
    Hostile("entry-unknown-field", entry("enc_c", extra=1)),
    Hostile("entry-missing-field", outer(lambda h: h["enc_c"].pop("shape"))),
    Hostile("entry-not-an-object", outer(lambda h: h.update(enc_c=[7]))),
    Hostile("entry-null", outer(lambda h: h.update(enc_c=None))),
    # metadata
    Hostile("metadata-integer-value", outer(lambda h: h["__metadata__"].update(format=1))),
    Hostile("metadata-null-value", outer(lambda h: h["__metadata__"].update(format=None))),
    Hostile("metadata-list-value", outer(lambda h: h["__metadata__"].update(format=["pt"]))),
    Hostile("metadata-object-value", outer(lambda h: h["__metadata__"].update(format={"a": "b"}))),
    Hostile("metadata-bool-value", outer(lambda h: h["__metadata__"].update(format=True))),
    Hostile("metadata-reserved-as-object", outer(lambda h: h["__metadata__"].update({CRYPTO_KEYS: {"version": "2"}}))),
    Hostile("metadata-is-a-list", outer(lambda h: h.update(__metadata__=[CRYPTO_KEYS]))),
    Hostile("metadata-is-a-string", outer(lambda h: h.update(__metadata__=CRYPTO_KEYS))),
]


# ---------------------------------------------------------------------------------------------------------------
# The reserved entries


def _enc(field_name: str, value: Any, tensor: str = "enc_a") -> Callable[[Sample], bytes]:
    return field(ENCRYPTION, update((tensor,), **{field_name: value}))


def _enc_bytes(field_name: str, size_change: int, tensor: str = "enc_a") -> Callable[[Sample], bytes]:
    """A field re-encoded with ``size_change`` bytes more (positive) or fewer (negative)."""

    def change(document: Any) -> None:
        blob = unb64(document[tensor][field_name])
        document[tensor][field_name] = b64(blob + bytes(size_change) if size_change > 0 else blob[:size_change])

    return field(ENCRYPTION, change)


def _digests(value: Callable[[str], str] | str, tensor: str = "plain_e") -> Callable[[Sample], bytes]:
    def change(document: Any) -> None:
        tensors = document["integrity"]["tensors"]
        tensors[tensor] = value(tensors[tensor]) if callable(value) else value

    return field(EXTENSIONS, change)


INVALID_BASE64 = {
    "bang": "!!!!",
    "unpadded": "AAAAAA",
    "urlsafe": "-_-_",
    "space": "AAAA AAAA",
    "newline": "AAAA\nAAAA",
    "padding-inside": "AA==AAAA",
    "non-ascii": "ÀÀÀÀ",
    "number": 1234,
    "null": None,
    "list": ["AAAA"],
}

FIELD_CASES = [
    *[
        Hostile(f"b64-{label}-{f}", _enc(f, value))
        for f in ("wrapped_key", "key_iv", "key_tag", "base_iv", "tags")
        for label, value in INVALID_BASE64.items()
    ],
    *[Hostile(f"b64-{label}-digest", _digests(value)) for label, value in INVALID_BASE64.items()],
    Hostile("b64-invalid-signature", outer(lambda h: h["__metadata__"].update({SIGNATURE: "!" * 88}))),
    Hostile(
        "b64-urlsafe-signature",
        lambda s: edit(
            s.data,
            lambda h: h["__metadata__"].update(
                {SIGNATURE: h["__metadata__"][SIGNATURE].replace("+", "-").replace("/", "_").rstrip("=")}
            ),
        ),
    ),
    # lengths
    *[
        Hostile(f"length-{f}{delta:+d}", _enc_bytes(f, delta))
        for f in ("wrapped_key", "key_iv", "key_tag", "base_iv")
        for delta in (-1, 1)
    ],
    Hostile("length-wrapped-key-empty", _enc("wrapped_key", "")),
    Hostile("length-tags-partial", _enc_bytes("tags", -1)),
    Hostile("length-tags-one-short", _enc_bytes("tags", -16)),
    Hostile("length-tags-one-extra", _enc_bytes("tags", 16)),
    Hostile("length-tags-none", _enc("tags", "")),
    Hostile("length-empty-tensor-without-tag", _enc("tags", "", tensor="enc_empty")),
    Hostile(
        "length-signature-63",
        lambda s: edit(
            s.data, lambda h: h["__metadata__"].update({SIGNATURE: b64(unb64(h["__metadata__"][SIGNATURE])[:63])})
        ),
    ),
    Hostile(
        "length-signature-65",
        lambda s: edit(
            s.data, lambda h: h["__metadata__"].update({SIGNATURE: b64(unb64(h["__metadata__"][SIGNATURE]) + b"\x00")})
        ),
    ),
    Hostile("length-digest-partial", _digests(lambda v: b64(unb64(v)[:-1]))),
    Hostile("length-digest-one-short", _digests(lambda v: b64(unb64(v)[:-32]))),
    Hostile("length-digest-one-extra", _digests(lambda v: b64(unb64(v) + bytes(32)))),
    Hostile("counter-overflow", _enc("base_iv", b64(bytes(8) + b"\xff\xff\xff\xfe"))),
    # version 1 entries
    Hostile("v1-iv-11-bytes", _enc_bytes("iv", -1), version="1"),
    Hostile("v1-tag-17-bytes", _enc_bytes("tag", 1), version="1"),
    Hostile("v1-iv-empty-for-data", _enc("iv", ""), version="1"),
    Hostile("v1-tag-empty-for-data", _enc("tag", ""), version="1"),
    Hostile("v1-empty-tensor-with-half-iv", _enc("iv", b64(bytes(12)), tensor="enc_empty"), version="1"),
    Hostile(
        "v1-entry-with-v2-fields",
        field(
            ENCRYPTION,
            lambda d: d.update(
                enc_a={k: v for k, v in d["enc_a"].items() if k not in ("iv", "tag")}
                | {"base_iv": d["enc_a"]["iv"], "tags": d["enc_a"]["tag"]}
            ),
        ),
        version="1",
    ),
    # __encryption__ structure
    Hostile("encryption-names-missing-tensor", field(ENCRYPTION, lambda d: d.update(ghost=d["enc_c"]))),
    Hostile("encryption-names-metadata", field(ENCRYPTION, lambda d: d.update(__metadata__=d["enc_c"]))),
    Hostile("encryption-entry-missing-field", field(ENCRYPTION, pop(("enc_a",), "key_tag"))),
    Hostile("encryption-entry-unknown-field", field(ENCRYPTION, update(("enc_a",), extra="AAAA"))),
    Hostile("encryption-entry-v1-fields", field(ENCRYPTION, lambda d: d["enc_a"].update(iv="AAAA"))),
    Hostile("encryption-entry-not-object", field(ENCRYPTION, lambda d: d.update(enc_a="AAAA"))),
    Hostile("encryption-not-object", metadata(ENCRYPTION, "[]")),
    Hostile("encryption-not-json", metadata(ENCRYPTION, "{enc_a}")),
    # __crypto_keys__
    *[
        Hostile(f"chunk-size-{label}", field(CRYPTO_KEYS, update((), chunk_size=value)))
        for label, value in {
            "0": 0,
            "negative": -64,
            "string": "64",
            "true": True,
            "false": False,
            "float": 64.0,
            "null": None,
            "list": [64],
        }.items()
    ],
    *[
        Hostile(f"version-{label}", field(CRYPTO_KEYS, update((), version=value)), UnsupportedError)
        for label, value in {"3": "3", "0": "0", "int": 2, "02": "02", "empty": "", "null": None, "list": ["2"]}.items()
    ],
    Hostile("version-missing", field(CRYPTO_KEYS, pop((), "version")), UnsupportedError),
    Hostile("enc-alg-unknown", field(CRYPTO_KEYS, update(("enc",), alg="aes512gcm")), UnsupportedError),
    Hostile("enc-alg-empty", field(CRYPTO_KEYS, update(("enc",), alg="")), UnsupportedError),
    Hostile("enc-alg-none", field(CRYPTO_KEYS, update(("enc",), alg="none")), UnsupportedError),
    Hostile("enc-alg-number", field(CRYPTO_KEYS, update(("enc",), alg=256))),
    Hostile("enc-alg-missing", field(CRYPTO_KEYS, pop(("enc",), "alg"))),
    Hostile("sign-alg-unknown", field(CRYPTO_KEYS, update(("sign",), alg="rs256")), UnsupportedError),
    Hostile("sign-alg-null", field(CRYPTO_KEYS, update(("sign",), alg=None))),
    Hostile("enc-missing", field(CRYPTO_KEYS, pop((), "enc"))),
    Hostile("enc-not-object", field(CRYPTO_KEYS, update((), enc="aes256gcm"))),
    Hostile("kid-not-string", field(CRYPTO_KEYS, update(("enc",), kid=1))),
    Hostile("jku-not-string", field(CRYPTO_KEYS, update(("sign",), jku=["file:///etc/passwd"]))),
    *[
        Hostile(f"key-material-{role}-{k}", field(CRYPTO_KEYS, update((role,), **{k: b64(bytes(32))})))
        for role, k in (("enc", "k"), ("sign", "d"), ("sign", "x"), ("enc", "p"))
    ],
    Hostile("crypto-keys-not-object", metadata(CRYPTO_KEYS, '"2"')),
    Hostile("crypto-keys-not-json", metadata(CRYPTO_KEYS, "version=2")),
    # __policy__
    Hostile("policy-unknown-member", field(POLICY, update((), extra="x"))),
    Hostile("policy-local-not-string", field(POLICY, update((), local=True))),
    Hostile("policy-remote-null", field(POLICY, update((), remote=None))),
    Hostile("policy-not-object", metadata(POLICY, '"package model"')),
    # __pycryptotensors__
    Hostile("integrity-alg-unknown", field(EXTENSIONS, update(("integrity",), alg="md5")), UnsupportedError),
    Hostile("integrity-alg-list", field(EXTENSIONS, update(("integrity",), alg=["sha256"]))),
    Hostile("integrity-alg-object", field(EXTENSIONS, update(("integrity",), alg={"sha256": 1}))),
    Hostile("integrity-chunk-size-0", field(EXTENSIONS, update(("integrity",), chunk_size=0))),
    Hostile("integrity-chunk-size-string", field(EXTENSIONS, update(("integrity",), chunk_size="64"))),
    Hostile("integrity-chunk-size-true", field(EXTENSIONS, update(("integrity",), chunk_size=True))),
    Hostile("integrity-missing-field", field(EXTENSIONS, pop(("integrity",), "alg"))),
    Hostile("integrity-unknown-field", field(EXTENSIONS, update(("integrity",), extra=1))),
    Hostile("integrity-tensors-list", field(EXTENSIONS, update(("integrity",), tensors=["plain_e"]))),
    Hostile("integrity-tensor-missing", field(EXTENSIONS, pop(("integrity", "tensors"), "plain_e"))),
    Hostile(
        "integrity-lists-encrypted", field(EXTENSIONS, lambda d: d["integrity"]["tensors"].update(enc_c=b64(bytes(32))))
    ),
    Hostile(
        "integrity-lists-ghost", field(EXTENSIONS, lambda d: d["integrity"]["tensors"].update(ghost=b64(bytes(32))))
    ),
    Hostile("extension-unknown-version", field(EXTENSIONS, update((), version=99)), UnsupportedError),
    Hostile("extension-not-object", metadata(EXTENSIONS, "[]")),
    # partial crypto metadata
    *[
        Hostile(f"partial-without-{key}", outer(lambda h, k=key: h["__metadata__"].pop(k)))
        for key in (CRYPTO_KEYS, ENCRYPTION, POLICY, SIGNATURE)
    ],
    Hostile(
        "partial-only-signature", outer(lambda h: h.update(__metadata__={SIGNATURE: h["__metadata__"][SIGNATURE]}))
    ),
    Hostile(
        "partial-only-extension", outer(lambda h: h.update(__metadata__={EXTENSIONS: h["__metadata__"][EXTENSIONS]}))
    ),
]

CASES = OUTER_CASES + FIELD_CASES
assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_header(case: Hostile, master_key: pc.MasterKey, signing_key: pc.SigningKey, tmp_path: Path) -> None:
    sample = make_sample(master_key, signing_key, case.version)
    data = case.build(sample)
    assert data != sample.data
    assert_refused(data, tmp_path, sample.load_config, case.expected)


def test_the_sample_itself_loads(master_key: pc.MasterKey, signing_key: pc.SigningKey) -> None:
    """Guard: every case above starts from a file that loads."""
    for version in ("1", "2"):
        sample = make_sample(master_key, signing_key, version)
        loaded = pn.load(sample.data, config=sample.load_config)
        assert all(same(loaded[name], original) for name, original in sample.tensors.items())


# ---------------------------------------------------------------------------------------------------------------
# A valid header may still claim an enormous chunk size: memory must follow the tensors, not the claim


@pytest.mark.parametrize("chunk_size", [2**31, 2**40, 2**62])
def test_huge_chunk_size_allocates_nothing_extra(
    master_key: pc.MasterKey, signing_key: pc.SigningKey, chunk_size: int, tmp_path: Path
) -> None:
    """Tensors of at most one 64-byte chunk are the same file under any chunk size of 64 or more; re-signed
    with a huge one, the file is valid (§9.8: a positive integer, one tag per tensor) and must load, exactly,
    without allocating the claimed size."""
    tensors = {"w": np.arange(16, dtype=np.float32), "b": np.arange(5, dtype=np.int16)}
    config = {
        "enc_key": master_key.to_jwk("reference"),
        "sign_key": signing_key.to_jwk("reference"),
        "tensors": ["w"],
        "chunk_size": 64,
    }
    data = pn.save(tensors, config=config)
    data = edit_inner(data, CRYPTO_KEYS, update((), chunk_size=chunk_size))
    data = edit_inner(data, EXTENSIONS, update(("integrity",), chunk_size=chunk_size), signer=signing_key)
    load_config = {"enc_key": master_key.to_jwk("reference"), "sign_key": signing_key.verify_key.to_jwk("reference")}
    path = tmp_path / "model.cts"
    path.write_bytes(data)

    def load_all() -> dict[str, Any]:
        with pc.safe_open(path, "np", config=load_config) as handle:
            return {name: handle.get_tensor(name) for name in handle.offset_keys()}

    for load in (load_all, lambda: pn.load(data, config=load_config)):
        tracemalloc.start()
        try:
            loaded = load()
        finally:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        assert peak < ALLOCATION_LIMIT, f"allocated {peak / 2**20:.1f} MiB for 74 bytes of tensors"
        assert set(loaded) == set(tensors)
        assert all(same(loaded[name], tensors[name]) for name in tensors)


# ---------------------------------------------------------------------------------------------------------------
# Plain files: handed to safetensors, which applies its own rules; a reader that requires encryption refuses


PLAIN_HOSTILE = {
    "not-utf8": b'{"a":"\xff"}',
    "not-json": b"{a}",
    "json-array": b"[]",
    "unknown-dtype": b'{"t":{"dtype":"X","shape":[1],"data_offsets":[0,1]}}',
    "negative-shape": b'{"t":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}}',
    "offsets-past-end": b'{"t":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}',
    "size-mismatch": b'{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,1]}}',
    "metadata-number": b'{"__metadata__":{"a":1}}',
    "nan": b'{"t":{"dtype":"U8","shape":[NaN],"data_offsets":[0,1]}}',
}


@pytest.mark.parametrize("header", PLAIN_HOSTILE.values(), ids=PLAIN_HOSTILE.keys())
def test_hostile_plain_header(header: bytes, tmp_path: Path, load_config: dict) -> None:
    data = raw_file(header, b"\x01")
    path = tmp_path / "plain.safetensors"
    path.write_bytes(data)
    for load in (lambda: pn.load(data), lambda: pn.load_file(path), lambda: pc.safe_open(path, "np")):
        with pytest.raises(FormatError):  # safetensors' refusal, raised as our documented error
            load()
    strict = {**load_config, "require_encryption": True}
    assert_refused(data, tmp_path, strict, CryptoTensorsError)


def test_plain_file_still_loads() -> None:
    """Guard for the test above: a well-formed plain file loads through the same function."""
    data = safetensors.numpy.save({"t": np.arange(3, dtype=np.int16)}, metadata={"a": "b"})
    assert split(data)[0]["__metadata__"] == {"a": "b"}
    np.testing.assert_array_equal(pn.load(data)["t"], np.arange(3, dtype=np.int16))
