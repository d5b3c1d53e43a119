"""The tamper matrix: change one thing in a valid, partly encrypted file and load it every way there is.

Every loader (``numpy.load_file``, ``numpy.load(bytes)``, ``safe_open`` + ``get_tensor`` per tensor, and the
same three with torch) must raise a :class:`~pycryptotensors.CryptoTensorsError`, of the precise class where
the layer that catches the change is clear, and must never return a tensor that differs from the original.
"No error" is acceptable only where every tensor comes back exactly as saved.

Header edits are made three ways: flipping bytes on disk, flipping a bit of a base64 character so that the
header still parses (only the signature can catch it), and editing the parsed JSON, optionally re-signed with
the signing key: a re-signed edit must still be caught by what lies under the signature (key wrapping, AEAD
tags, plaintext digests).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pycryptotensors as pc
import pycryptotensors.numpy as pn
from _filecraft import (
    B64_ALPHABET,
    CHUNK,
    CRYPTO_KEYS,
    ENCRYPTION,
    EXTENSIONS,
    POLICY,
    RESERVED,
    SIGNATURE,
    Header,
    Sample,
    assemble,
    b64,
    edit,
    edit_inner,
    flip,
    flip_b64_char,
    flip_decoded,
    header_size,
    inner,
    make_sample,
    put,
    resign,
    same,
    set_inner,
    split,
    unb64,
)
from pycryptotensors import (
    CryptoTensorsError,
    FormatError,
    IntegrityError,
    MissingKeyError,
    NotEncryptedError,
    PolicyDeniedError,
    SignatureError,
    UnsupportedError,
    WrongKeyError,
)

try:
    import pycryptotensors.torch as pt
except ImportError:  # pragma: no cover - torch is an optional dependency
    pt = None

# ---------------------------------------------------------------------------------------------------------------
# Loading a file every way there is, and judging the outcome


@dataclass
class Outcome:
    """What one loader did: the CryptoTensorsErrors it raised and the tensors it returned."""

    errors: list[CryptoTensorsError] = field(default_factory=list)
    returned: dict[str, Any] = field(default_factory=dict)


def _whole(load: Callable[[], dict[str, Any]]) -> Outcome:
    try:
        return Outcome(returned=load())
    except CryptoTensorsError as exc:
        return Outcome(errors=[exc])


def _lazy(path: Path, framework: str, config: Any) -> Outcome:
    """safe_open, then get_tensor of every tensor the handle lists, each on its own."""
    try:
        handle = pc.safe_open(path, framework, config=config)
    except CryptoTensorsError as exc:
        return Outcome(errors=[exc])
    outcome = Outcome()
    with handle:
        for name in handle.offset_keys():
            try:
                outcome.returned[name] = handle.get_tensor(name)
            except CryptoTensorsError as exc:
                outcome.errors.append(exc)
    return outcome


def load_every_way(data: bytes, tmp_path: Path, config: Any) -> dict[str, Outcome]:
    path = tmp_path / "case.cts"
    path.write_bytes(data)
    outcomes = {
        "numpy.load_file": _whole(lambda: pn.load_file(path, config=config)),
        "numpy.load": _whole(lambda: pn.load(data, config=config)),
        "safe_open(np)": _lazy(path, "np", config),
    }
    if pt is not None:
        outcomes["torch.load_file"] = _whole(lambda: pt.load_file(path, config=config))
        outcomes["torch.load"] = _whole(lambda: pt.load(data, config=config))
        outcomes["safe_open(pt)"] = _lazy(path, "pt", config)
    return outcomes


def _assert_nothing_altered(sample: Sample, loader: str, outcome: Outcome) -> None:
    for name, value in outcome.returned.items():
        assert name in sample.tensors, f"{loader} returned a tensor {name!r} that was never saved"
        assert same(value, sample.tensors[name]), f"{loader} returned altered values for {name!r}"
    if not outcome.errors:
        assert set(outcome.returned) == set(sample.tensors), f"{loader} returned {sorted(outcome.returned)}"


def assert_refused(
    sample: Sample, data: bytes, tmp_path: Path, expected: Any, *, exact: bool = False, config: Any = None
) -> None:
    """Every loader raises ``expected`` (``exact``: that very class, not a subclass) and alters nothing."""
    kinds = expected if isinstance(expected, tuple) else (expected,)
    config = sample.load_config if config is None else config
    for loader, outcome in load_every_way(data, tmp_path, config).items():
        _assert_nothing_altered(sample, loader, outcome)
        assert outcome.errors, f"{loader} loaded the tampered file without an error"
        for error in outcome.errors:
            matches = type(error) in kinds if exact else isinstance(error, kinds)
            assert matches, (
                f"{loader} raised {type(error).__name__}({error}), expected {' or '.join(k.__name__ for k in kinds)}"
            )


def assert_unchanged(sample: Sample, data: bytes, tmp_path: Path, config: Any = None) -> None:
    """Every loader loads the file, and every tensor is exactly the original."""
    config = sample.load_config if config is None else config
    for loader, outcome in load_every_way(data, tmp_path, config).items():
        assert not outcome.errors, f"{loader} raised {outcome.errors[0]!r}"
        _assert_nothing_altered(sample, loader, outcome)


# ---------------------------------------------------------------------------------------------------------------
# Mutations: each turns the sample into tampered bytes

Mutation = Callable[[Sample], bytes]
UNCHANGED = "unchanged"  # must load, identical


def at(locate: Callable[[Sample], int], mask: int = 0xFF) -> Mutation:
    """XOR the byte at an absolute offset."""
    return lambda s: flip(s.data, locate(s), mask)


def after(needle: str, index: int = 0) -> Callable[[Sample], int]:
    """Locator: the byte ``index`` bytes into a string that occurs once in the header."""
    return lambda s: s.find(needle) + index


def after_end(needle: str) -> Callable[[Sample], int]:
    """Locator: the byte just past a string that occurs once in the header."""
    return after(needle, len(needle.encode("utf-8")))


def b64_char(value: Callable[[Sample], str], where: str, replacement: str | None = None) -> Mutation:
    """Flip one bit of one character of a base64 value on disk, staying inside the alphabet (so the header
    still parses), or put ``replacement`` there."""

    def mutate(s: Sample) -> bytes:
        text = value(s)
        digits = len(text.rstrip("="))
        index = {"first": 0, "middle": digits // 2, "last": digits - 1}[where]
        char = replacement if replacement is not None else flip_b64_char(text[index])
        return put(s.data, s.find(text) + index, char.encode())

    return mutate


def b64_last_digit(value: Callable[[Sample], str], mask: int) -> Mutation:
    """XOR the 6-bit value of the last base64 digit (before the padding) with ``mask``."""

    def mutate(s: Sample) -> bytes:
        text = value(s)
        index = len(text.rstrip("=")) - 1
        char = B64_ALPHABET[B64_ALPHABET.index(text[index]) ^ mask]
        return put(s.data, s.find(text) + index, char.encode())

    return mutate


def json_edit(change: Callable[[Header, Sample], Any], *, resigned: bool = False) -> Mutation:
    return lambda s: edit(s.data, lambda h: change(h, s), signer=s.signer if resigned else None)


def inner_edit(key: str, change: Callable[[Any, Sample], Any], *, resigned: bool = False) -> Mutation:
    return lambda s: edit_inner(s.data, key, lambda d: change(d, s), signer=s.signer if resigned else None)


def enc_field(name: str, field_name: str) -> Callable[[Sample], str]:
    """A field of a tensor's ``__encryption__`` entry; ``iv`` / ``tags`` mean the version's own names."""

    def value(s: Sample) -> str:
        real = {"iv": s.iv_field, "tags": s.tag_field}.get(field_name, field_name)
        return s.encryption(name)[real]

    return value


def set_enc(name: str, field_name: str, new: Callable[[str], str]) -> Callable[[Any, Sample], None]:
    def change(document: Any, s: Sample) -> None:
        real = {"iv": s.iv_field, "tags": s.tag_field}.get(field_name, field_name)
        document[name][real] = new(document[name][real])

    return change


def swap_enc(a: str, b: str, fields: tuple[str, ...] | None = None) -> Callable[[Any, Sample], None]:
    def change(document: Any, s: Sample) -> None:
        names = fields or tuple(document[a])
        real = [{"iv": s.iv_field, "tags": s.tag_field}.get(f, f) for f in names]
        for f in real:
            document[a][f], document[b][f] = document[b][f], document[a][f]

    return change


def rename_key(mapping: dict[str, Any], old: str, new: str) -> None:
    """Rename a key in place, keeping its position."""
    items = [(new if k == old else k, v) for k, v in mapping.items()]
    mapping.clear()
    mapping.update(items)


def rename_tensor(old: str, new: str, *, in_encryption: bool = False, in_integrity: bool = False) -> Callable:
    def change(header: Header, s: Sample) -> None:
        rename_key(header, old, new)
        if in_encryption:
            document = inner(header, ENCRYPTION)
            rename_key(document, old, new)
            set_inner(header, ENCRYPTION, document)
        if in_integrity:
            document = inner(header, EXTENSIONS)
            rename_key(document["integrity"]["tensors"], old, new)
            set_inner(header, EXTENSIONS, document)

    return change


def set_entry(name: str, field_name: str, value: Any) -> Callable[[Header, Sample], None]:
    def change(header: Header, s: Sample) -> None:
        header[name][field_name] = value

    return change


def swap_entries(a: str, b: str, field_name: str) -> Callable[[Header, Sample], None]:
    def change(header: Header, s: Sample) -> None:
        header[a][field_name], header[b][field_name] = header[b][field_name], header[a][field_name]

    return change


def set_metadata(key: str, value: str | None) -> Callable[[Header, Sample], None]:
    def change(header: Header, s: Sample) -> None:
        if value is None:
            del header["__metadata__"][key]
        else:
            header["__metadata__"][key] = value

    return change


def set_digest(name: str, new: Callable[[str], str]) -> Callable[[Any, Sample], None]:
    def change(document: Any, s: Sample) -> None:
        tensors = document["integrity"]["tensors"]
        tensors[name] = new(tensors[name])

    return change


def swap_data(a: tuple[str, int, int], b: tuple[str, int, int]) -> Mutation:
    """Exchange two byte ranges given as (tensor, start, end) relative to the tensors' data."""

    def mutate(s: Sample) -> bytes:
        (na, a0, a1), (nb, b0, b1) = a, b
        pa, pb = s.offsets(na)[0], s.offsets(nb)[0]
        first, second = s.data[pa + a0 : pa + a1], s.data[pb + b0 : pb + b1]
        return put(put(s.data, pa + a0, second), pb + b0, first)

    return mutate


def data_byte(name: str, where: str, mask: int = 0xFF) -> Mutation:
    def mutate(s: Sample) -> bytes:
        start, end = s.offsets(name)
        offset = {"first": start, "middle": (start + end) // 2, "last": end - 1}[where]
        return flip(s.data, offset, mask)

    return mutate


def set_length(delta: int | None = None, value: Callable[[Sample], int] | None = None) -> Mutation:
    def mutate(s: Sample) -> bytes:
        n = header_size(s.data) + delta if value is None else value(s)
        return n.to_bytes(8, "little") + s.data[8:]

    return mutate


# ---------------------------------------------------------------------------------------------------------------
# The matrix


@dataclass(frozen=True)
class Case:
    id: str
    mutate: Mutation
    expect: Any  # an exception class or tuple, or UNCHANGED
    exact: bool = False  # the very class (IntegrityError, not its subclass SignatureError)
    versions: str = "12"


def _required_key_cases() -> list[Case]:
    cases = []
    for key in RESERVED:
        renamed = FormatError if key != EXTENSIONS else SignatureError  # a missing required key vs. an edit
        cases += [
            Case(
                f"metadata-key-{key}-renamed",
                json_edit(lambda h, s, k=key: rename_key(h["__metadata__"], k, "__x" + k[2:])),
                renamed,
            ),
            Case(f"metadata-key-{key}-byte-0xff", at(after(f'"{key}"', 3)), FormatError),
        ]
        if key != SIGNATURE:
            cases += [
                Case(f"metadata-{key}-inner-json-broken", at(after_end(f'"{key}":"'), 0x01), FormatError),
                Case(f"metadata-{key}-empty-string", json_edit(set_metadata(key, "")), FormatError),
                Case(f"metadata-{key}-not-an-object", json_edit(set_metadata(key, "[]")), FormatError),
            ]
    return cases


def _encryption_cases() -> list[Case]:
    cases = []
    for f in ("wrapped_key", "key_iv", "key_tag", "iv", "tags"):
        for where in ("first", "middle", "last"):
            cases.append(
                Case(f"encryption-{f}-b64-bit-{where}", b64_char(enc_field("enc_a", f), where), SignatureError)
            )
        cases += [
            Case(f"encryption-{f}-invalid-b64-char", b64_char(enc_field("enc_a", f), "first", "!"), FormatError),
            Case(
                f"encryption-{f}-not-utf8",
                lambda s, f=f: flip(s.data, s.find(enc_field("enc_a", f)(s)), 0x80),
                FormatError,
            ),
        ]
    for f in ("wrapped_key", "key_iv", "key_tag"):  # under a valid signature, the key wrap catches it
        for byte in (0, -1):
            cases.append(
                Case(
                    f"encryption-{f}-resigned-bit-{byte}",
                    inner_edit(ENCRYPTION, set_enc("enc_a", f, lambda v, b=byte: flip_decoded(v, b)), resigned=True),
                    WrongKeyError,
                )
            )
    for f in ("iv", "tags"):  # ... and the data AEAD catches these
        for byte in (0, -1):
            cases.append(
                Case(
                    f"encryption-{f}-resigned-bit-{byte}",
                    inner_edit(ENCRYPTION, set_enc("enc_a", f, lambda v, b=byte: flip_decoded(v, b)), resigned=True),
                    IntegrityError,
                    exact=True,
                )
            )
    swaps = {"all": None, "key-wrap": ("wrapped_key", "key_iv", "key_tag"), "iv": ("iv",), "tags": ("tags",)}
    for label, fields in swaps.items():
        swap = inner_edit(ENCRYPTION, swap_enc("enc_a", "enc_b", fields), resigned=True)
        cases.append(Case(f"encryption-swap-{label}-resigned", swap, IntegrityError, exact=True))
    cases += [
        Case("encryption-swap-all", inner_edit(ENCRYPTION, swap_enc("enc_a", "enc_b")), SignatureError),
        Case("encryption-entry-removed", inner_edit(ENCRYPTION, lambda d, s: d.pop("enc_a")), FormatError),
        Case(
            "encryption-entry-removed-resigned",
            inner_edit(ENCRYPTION, lambda d, s: d.pop("enc_a"), resigned=True),
            FormatError,
        ),
        Case(
            "encryption-field-renamed",
            inner_edit(ENCRYPTION, lambda d, s: rename_key(d["enc_a"], s.iv_field, "nonce")),
            FormatError,
        ),
        Case(
            "encryption-empty-tensor-tag-resigned",
            inner_edit(ENCRYPTION, set_enc("enc_empty", "tags", flip_decoded), resigned=True),
            IntegrityError,
            exact=True,
            versions="2",
        ),
        Case(
            "encryption-wrapped-key-of-other-file",
            inner_edit(ENCRYPTION, set_enc("enc_a", "wrapped_key", lambda v: b64(bytes(32))), resigned=True),
            WrongKeyError,
        ),
    ]
    return cases


def _crypto_keys_cases() -> list[Case]:
    def setter(path: tuple[str, ...], value: Any) -> Callable[[Any, Sample], None]:
        def change(document: Any, s: Sample) -> None:
            target = document
            for part in path[:-1]:
                target = target[part]
            if value is None:
                del target[path[-1]]
            else:
                target[path[-1]] = value

        return change

    return [
        Case("crypto-keys-version-3", inner_edit(CRYPTO_KEYS, setter(("version",), "3")), UnsupportedError),
        Case(
            "crypto-keys-version-other",
            inner_edit(CRYPTO_KEYS, lambda d, s: d.update(version="1" if s.version == "2" else "2")),
            FormatError,
        ),
        Case(
            "crypto-keys-enc-alg-unknown",
            inner_edit(CRYPTO_KEYS, setter(("enc", "alg"), "aes512gcm")),
            UnsupportedError,
        ),
        Case("crypto-keys-enc-alg-aes128", inner_edit(CRYPTO_KEYS, setter(("enc", "alg"), "aes128gcm")), FormatError),
        Case(
            "crypto-keys-enc-alg-respelled",
            inner_edit(CRYPTO_KEYS, setter(("enc", "alg"), "AES-256-GCM")),
            SignatureError,
        ),
        Case(
            "crypto-keys-enc-alg-chacha",
            inner_edit(CRYPTO_KEYS, setter(("enc", "alg"), "chacha20poly1305")),
            SignatureError,
        ),
        Case(
            "crypto-keys-enc-alg-chacha-resigned",
            inner_edit(CRYPTO_KEYS, setter(("enc", "alg"), "chacha20poly1305"), resigned=True),
            WrongKeyError,
        ),
        Case(
            "crypto-keys-sign-alg-unknown", inner_edit(CRYPTO_KEYS, setter(("sign", "alg"), "rs256")), UnsupportedError
        ),
        Case("crypto-keys-enc-kid", inner_edit(CRYPTO_KEYS, setter(("enc", "kid"), "other")), SignatureError),
        Case("crypto-keys-sign-kid", inner_edit(CRYPTO_KEYS, setter(("sign", "kid"), "other")), SignatureError),
        Case("crypto-keys-extra-field", inner_edit(CRYPTO_KEYS, setter(("extra",), 1)), SignatureError),
        Case("crypto-keys-key-material", inner_edit(CRYPTO_KEYS, setter(("enc", "k"), b64(bytes(32)))), FormatError),
        Case(
            "crypto-keys-chunk-size-32", inner_edit(CRYPTO_KEYS, setter(("chunk_size",), 32)), FormatError, versions="2"
        ),
        Case(
            "crypto-keys-chunk-size-65",
            inner_edit(CRYPTO_KEYS, setter(("chunk_size",), 65)),
            SignatureError,
            versions="2",
        ),
        Case(
            "crypto-keys-chunk-size-65-resigned",
            inner_edit(CRYPTO_KEYS, setter(("chunk_size",), 65), resigned=True),
            IntegrityError,
            exact=True,
            versions="2",
        ),
        Case(
            "crypto-keys-chunk-size-removed",
            inner_edit(CRYPTO_KEYS, setter(("chunk_size",), None)),
            FormatError,
            versions="2",
        ),
        Case(
            "crypto-keys-chunk-size-added",
            inner_edit(CRYPTO_KEYS, setter(("chunk_size",), 64)),
            SignatureError,
            versions="1",
        ),
        Case("crypto-keys-digit-on-disk", at(after_end('"{\\"chunk_size\\":'), 0x01), FormatError, versions="2"),
    ]


def _policy_cases() -> list[Case]:
    deny = "package model\nallow = false"
    return [
        Case("policy-local-denies", inner_edit(POLICY, lambda d, s: d.update(local=deny)), SignatureError),
        Case(
            "policy-local-denies-resigned",
            inner_edit(POLICY, lambda d, s: d.update(local=deny), resigned=True),
            PolicyDeniedError,
        ),
        Case("policy-remote-changed", inner_edit(POLICY, lambda d, s: d.update(remote=deny)), SignatureError),
        Case("policy-local-removed", inner_edit(POLICY, lambda d, s: d.pop("local")), SignatureError),
        Case(
            "policy-reformatted",
            json_edit(lambda h, s: set_metadata(POLICY, json.dumps(inner(h, POLICY)))(h, s)),
            SignatureError,
        ),
        Case("policy-char-on-disk", at(after_end('local\\":\\"'), 0x01), SignatureError),
        Case("policy-extra-field", inner_edit(POLICY, lambda d, s: d.update(extra="x")), FormatError),
    ]


def _signature_cases() -> list[Case]:
    def signature(s: Sample) -> str:
        return s.header["__metadata__"][SIGNATURE]

    def by_other_key(h: Header, s: Sample) -> None:
        resign(h, pc.generate_signing_key(kid=s.signer.kid))

    return [
        Case("signature-b64-bit-first", b64_char(signature, "first"), SignatureError),
        Case("signature-b64-bit-middle", b64_char(signature, "middle"), SignatureError),
        # The last digit before "==" carries 2 bits of the signature and 4 unused ones: a change of a data bit
        # is a wrong signature; one of an unused bit decodes to the same 64 bytes, so the file is unchanged.
        Case("signature-b64-last-data-bit", b64_last_digit(signature, 0b100000), SignatureError),
        Case("signature-b64-last-unused-bit", b64_last_digit(signature, 0b000001), UNCHANGED),
        Case("signature-invalid-b64", b64_char(signature, "middle", "!"), FormatError),
        Case("signature-empty", json_edit(set_metadata(SIGNATURE, "")), FormatError),
        Case(
            "signature-63-bytes",
            json_edit(lambda h, s: set_metadata(SIGNATURE, b64(unb64(signature(s))[:63]))(h, s)),
            FormatError,
        ),
        Case(
            "signature-decoded-bit",
            json_edit(lambda h, s: set_metadata(SIGNATURE, flip_decoded(signature(s), 40))(h, s)),
            SignatureError,
        ),
        Case(
            "signature-of-other-message",
            json_edit(lambda h, s: set_metadata(SIGNATURE, b64(s.signer.private.sign(b"{}")))(h, s)),
            SignatureError,
        ),
        Case("signature-by-other-key", json_edit(by_other_key), SignatureError),
    ]


def _integrity_cases() -> list[Case]:
    def digests(name: str) -> Callable[[Sample], str]:
        return lambda s: s.digests(name)

    cases = [
        Case(f"integrity-digest-b64-bit-{where}", b64_char(digests("plain_d"), where), SignatureError)
        for where in ("first", "middle", "last")
    ]
    cases += [
        Case("integrity-invalid-b64", b64_char(digests("plain_e"), "first", "!"), FormatError),
        Case(
            "integrity-alg-unknown",
            inner_edit(EXTENSIONS, lambda d, s: d["integrity"].update(alg="sha512")),
            UnsupportedError,
        ),
        Case(
            "integrity-chunk-size-32",
            inner_edit(EXTENSIONS, lambda d, s: d["integrity"].update(chunk_size=32)),
            FormatError,
        ),
        Case(
            "integrity-chunk-size-65-resigned",
            inner_edit(EXTENSIONS, lambda d, s: d["integrity"].update(chunk_size=65), resigned=True),
            IntegrityError,
            exact=True,
        ),
        Case(
            "integrity-tensor-unlisted",
            inner_edit(EXTENSIONS, lambda d, s: d["integrity"]["tensors"].pop("plain_e")),
            FormatError,
        ),
        Case("integrity-removed", inner_edit(EXTENSIONS, lambda d, s: d.pop("integrity")), SignatureError),
        Case("integrity-version", inner_edit(EXTENSIONS, lambda d, s: d.update(version=2)), UnsupportedError),
        Case("integrity-unknown-member", inner_edit(EXTENSIONS, lambda d, s: d.update(extra=1)), UnsupportedError),
        Case("integrity-extension-removed", json_edit(set_metadata(EXTENSIONS, None)), SignatureError),
        Case(
            "integrity-swap-digests-resigned",
            inner_edit(EXTENSIONS, lambda d, s: _swap_digests(d, "plain_d", "plain_f"), resigned=True),
            IntegrityError,
            exact=True,
        ),
    ]
    for name in ("plain_d", "plain_e", "plain_empty"):
        for byte in (0, -1):
            cases.append(
                Case(
                    f"integrity-{name}-digest-bit-{byte}-resigned",
                    inner_edit(EXTENSIONS, set_digest(name, lambda v, b=byte: flip_decoded(v, b)), resigned=True),
                    IntegrityError,
                    exact=True,
                )
            )
    return cases


def _swap_digests(document: Any, a: str, b: str) -> None:
    tensors = document["integrity"]["tensors"]
    tensors[a], tensors[b] = tensors[b], tensors[a]


def _user_metadata_cases() -> list[Case]:
    return [
        Case("user-metadata-value", json_edit(set_metadata("format", "np")), SignatureError),
        Case("user-metadata-removed", json_edit(set_metadata("format", None)), SignatureError),
        Case("user-metadata-added", json_edit(set_metadata("extra", "1")), SignatureError),
        Case(
            "user-metadata-renamed",
            json_edit(lambda h, s: rename_key(h["__metadata__"], "note", "notf")),
            SignatureError,
        ),
        Case("user-metadata-byte-on-disk", at(after("héllo", 0), 0x01), SignatureError),
        Case("user-metadata-utf8-broken", at(after("héllo", 1), 0x40), FormatError),
    ]


def _tensor_entry_cases() -> list[Case]:
    return [
        # names
        Case("name-encrypted-renamed", json_edit(rename_tensor("enc_a", "enc_z")), FormatError),
        Case("name-plain-renamed", json_edit(rename_tensor("plain_d", "plain_z")), FormatError),
        Case("name-renamed-with-entry", json_edit(rename_tensor("enc_a", "enc_z", in_encryption=True)), SignatureError),
        Case(
            "name-plain-renamed-with-digest",
            json_edit(rename_tensor("plain_e", "plain_z", in_integrity=True)),
            SignatureError,
        ),
        Case("name-byte-on-disk", at(after('"enc_a":{"dtype"', 1), 0x01), FormatError),
        Case("name-duplicated-on-disk", lambda s: put(s.data, s.find('"enc_b":{"dtype"'), b'"enc_a"'), FormatError),
        # dtypes
        Case("dtype-F32-as-I32", json_edit(set_entry("enc_a", "dtype", "I32")), SignatureError),
        Case("dtype-F32-as-U32-plain", json_edit(set_entry("plain_f", "dtype", "U32")), SignatureError),
        Case("dtype-I16-as-F16", json_edit(set_entry("plain_e", "dtype", "F16")), SignatureError),
        Case("dtype-size-changed", json_edit(set_entry("enc_a", "dtype", "F64")), FormatError),
        Case("dtype-unknown-on-disk", at(after('"enc_a":{"dtype":"F32"', 19), 0x01), FormatError),
        # shapes
        Case("shape-transposed-plain", json_edit(set_entry("plain_d", "shape", [5, 6])), SignatureError),
        Case("shape-transposed-encrypted", json_edit(set_entry("enc_b", "shape", [8, 7])), SignatureError),
        Case("shape-flattened", json_edit(set_entry("enc_b", "shape", [56])), SignatureError),
        Case("shape-empty-changed", json_edit(set_entry("enc_empty", "shape", [0, 7])), SignatureError),
        Case("shape-empty-transposed", json_edit(set_entry("plain_empty", "shape", [3, 0])), SignatureError),
        Case("shape-size-changed", json_edit(set_entry("enc_a", "shape", [51])), FormatError),
        Case("shape-digit-on-disk", at(after('"shape":[6,5]', 9), 0x01), FormatError),
        # offsets
        Case("offsets-swapped", json_edit(swap_entries("enc_a", "plain_f", "data_offsets")), SignatureError),
        Case(
            "offsets-swapped-resigned",
            json_edit(swap_entries("enc_a", "plain_f", "data_offsets"), resigned=True),
            IntegrityError,
            exact=True,
        ),
        Case("offsets-empty-moved", json_edit(set_entry("enc_empty", "data_offsets", [944, 944])), SignatureError),
        Case("offsets-shifted", json_edit(set_entry("enc_c", "data_offsets", [945, 952])), FormatError),
        Case("offsets-digit-on-disk", at(after('"data_offsets":[240,440]', 17), 0x01), FormatError),
    ]


def _structure_cases() -> list[Case]:
    locators = {
        "open-brace": lambda s: 8,
        "close-brace": lambda s: s.json_end - 1,
        "metadata-colon": after('"__metadata__":', 14),
        "metadata-brace": after('"__metadata__":', 15),
        "entry-comma": after('},"enc_a":', 1),
        "name-quote": after('"plain_e":{', 0),
        "shape-bracket": after('"shape":[6,5]', 8),
        "offsets-comma": after('"data_offsets":[0,240]', 17),
    }
    return [
        Case(f"structure-{label}-{mask:#04x}", at(locate, mask), FormatError)
        for label, locate in locators.items()
        for mask in (0x01, 0xFF)
    ]


def _length_prefix_cases() -> list[Case]:
    cases = [Case(f"length-prefix-byte-{i}", at(lambda s, i=i: i), FormatError) for i in range(8)]
    for delta in (-8, -1, 1, 8):
        cases.append(Case(f"length-prefix-{delta:+d}", set_length(delta), FormatError))
    cases += [
        Case("length-prefix-zero", set_length(value=lambda s: 0), FormatError),
        Case("length-prefix-whole-file", set_length(value=lambda s: len(s.data) - 8), FormatError),
    ]
    return cases


def _data_cases() -> list[Case]:
    cases = []
    for name in ("enc_a", "enc_b", "enc_c", "plain_d", "plain_e", "plain_f"):
        for where in ("first", "middle", "last"):
            cases.append(Case(f"data-{name}-{where}", data_byte(name, where), IntegrityError, exact=True))
        cases.append(Case(f"data-{name}-low-bit", data_byte(name, "middle", 0x01), IntegrityError, exact=True))
    cases += [
        Case(
            "data-encrypted-chunks-swapped",
            swap_data(("enc_a", 0, CHUNK), ("enc_a", CHUNK, 2 * CHUNK)),
            IntegrityError,
            exact=True,
        ),
        Case(
            "data-plain-chunks-swapped",
            swap_data(("plain_d", 0, CHUNK), ("plain_d", CHUNK, 2 * CHUNK)),
            IntegrityError,
            exact=True,
        ),
        Case("data-tensors-swapped", swap_data(("enc_a", 0, 200), ("plain_f", 0, 200)), IntegrityError, exact=True),
        Case(
            "data-encrypted-zeroed", lambda s: put(s.data, s.offsets("enc_c")[0], bytes(7)), IntegrityError, exact=True
        ),
    ]
    return cases


CASES = [
    *_length_prefix_cases(),
    *_structure_cases(),
    *_required_key_cases(),
    *_crypto_keys_cases(),
    *_encryption_cases(),
    *_policy_cases(),
    *_signature_cases(),
    *_integrity_cases(),
    *_user_metadata_cases(),
    *_tensor_entry_cases(),
    *_data_cases(),
]
assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"


@pytest.fixture(params=["2", "1"], ids=["v2", "v1"])
def version(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def sample(master_key: pc.MasterKey, signing_key: pc.SigningKey, version: str) -> Sample:
    return make_sample(master_key, signing_key, version)


def _matrix() -> list[Any]:
    return [pytest.param(v, case, id=f"v{v}-{case.id}") for case in CASES for v in case.versions]


@pytest.mark.parametrize(("version", "case"), _matrix())
def test_tamper_matrix(sample: Sample, case: Case, tmp_path: Path) -> None:
    tampered = case.mutate(sample)
    assert tampered != sample.data, "the mutation changed nothing"
    if case.expect == UNCHANGED:
        assert_unchanged(sample, tampered, tmp_path)
    else:
        assert_refused(sample, tampered, tmp_path, case.expect, exact=case.exact)


# ---------------------------------------------------------------------------------------------------------------
# Sanity: the untouched file loads, and the helpers rebuild it byte for byte


def test_untouched_file_loads(sample: Sample, tmp_path: Path) -> None:
    assert assemble(*split(sample.data)) == sample.data
    resigned = edit(sample.data, lambda h: None, signer=sample.signer)
    assert resigned == sample.data, "our re-signing must reproduce the library's signature exactly"
    assert_unchanged(sample, sample.data, tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# What must NOT matter: whitespace and key order on disk (the signature is rebuilt from the parsed header)


def _with_padding(sample: Sample, replacement: bytes = b" ") -> bytes:
    """The file re-serialized with 8 more bytes of padding, one of them replaced."""
    header, body = split(sample.data)
    return assemble(header, body, trailing=b" " * 3 + replacement + b" " * 4)


@pytest.mark.parametrize("whitespace", [b" ", b"\t", b"\n", b"\r"], ids=["space", "tab", "newline", "cr"])
def test_padding_whitespace_does_not_matter(sample: Sample, whitespace: bytes, tmp_path: Path) -> None:
    assert_unchanged(sample, _with_padding(sample, whitespace), tmp_path)


@pytest.mark.parametrize("garbage", [b"!", b"\x00", b"\xa0", b"}"], ids=["bang", "nul", "nbsp-byte", "brace"])
def test_padding_garbage_is_refused(sample: Sample, garbage: bytes, tmp_path: Path) -> None:
    assert_refused(sample, _with_padding(sample, garbage), tmp_path, FormatError)


def _reversed(mapping: dict[str, Any]) -> dict[str, Any]:
    return dict(reversed(list(mapping.items())))


@pytest.mark.parametrize("layout", ["indented", "ascii-escaped", "tensors-reversed", "metadata-reversed"])
def test_layout_on_disk_does_not_matter(sample: Sample, layout: str, tmp_path: Path) -> None:
    header, body = split(sample.data)
    if layout == "indented":
        data = assemble(header, body, indent=2)
    elif layout == "ascii-escaped":
        data = assemble(header, body, ensure_ascii=True)
    elif layout == "tensors-reversed":
        metadata = header.pop("__metadata__")
        data = assemble({**_reversed(header), "__metadata__": metadata}, body)
    else:
        header["__metadata__"] = _reversed(header["__metadata__"])
        data = assemble(header, body)
    assert data != sample.data
    assert_unchanged(sample, data, tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# Keys


def test_wrong_master_key(sample: Sample, signing_key: pc.SigningKey, tmp_path: Path) -> None:
    other = pc.generate_master_key(kid="enc-test")
    config = {"enc_key": other.to_jwk("reference"), "sign_key": signing_key.verify_key.to_jwk("reference")}
    assert_refused(sample, sample.data, tmp_path, WrongKeyError, config=config)


def test_wrong_verify_key(sample: Sample, master_key: pc.MasterKey, tmp_path: Path) -> None:
    other = pc.generate_signing_key(kid="sign-test")  # same kid: only the key itself differs
    config = {"enc_key": master_key.to_jwk("reference"), "sign_key": other.verify_key.to_jwk("reference")}
    assert_refused(sample, sample.data, tmp_path, SignatureError, config=config)


@pytest.mark.parametrize("given", ["nothing", "only-verify-key", "only-master-key"])
def test_missing_key(
    sample: Sample, master_key: pc.MasterKey, signing_key: pc.SigningKey, given: str, tmp_path: Path
) -> None:
    config = {
        "nothing": {},
        "only-verify-key": {"sign_key": signing_key.verify_key.to_jwk("reference")},
        "only-master-key": {"enc_key": master_key.to_jwk("reference")},
    }[given]
    assert_refused(sample, sample.data, tmp_path, MissingKeyError, config=config)


def test_no_config_at_all(sample: Sample, tmp_path: Path) -> None:
    """config=None and no CRYPTOTENSOR_KEYS (conftest removes it): nothing to decrypt with."""
    path = tmp_path / "model.cts"
    path.write_bytes(sample.data)
    with pytest.raises(MissingKeyError):
        pn.load_file(path)
    with pytest.raises(MissingKeyError):
        pn.load(sample.data)
    with pytest.raises(MissingKeyError):
        pc.safe_open(path, "np")


# ---------------------------------------------------------------------------------------------------------------
# Truncation, trailing bytes, stripped crypto metadata


def test_truncated_at_every_length_in_memory(sample: Sample) -> None:
    for length in range(len(sample.data)):
        with pytest.raises(FormatError):
            pn.load(sample.data[:length], config=sample.load_config)


def test_truncated_files(sample: Sample, tmp_path: Path) -> None:
    boundaries = {
        0,
        1,
        7,
        8,
        9,
        sample.json_end,
        sample.data_start - 1,
        sample.data_start,
        sample.data_start + 1,
        len(sample.data) - 1,
    }
    for length in sorted(boundaries | set(range(0, len(sample.data), 97))):
        assert_refused(sample, sample.data[:length], tmp_path, FormatError)


@pytest.mark.parametrize("extra", [b"\x00", b" ", bytes(8), b"x" * 4096], ids=["nul", "space", "8-zeros", "4k"])
def test_trailing_bytes(sample: Sample, extra: bytes, tmp_path: Path) -> None:
    assert_refused(sample, sample.data + extra, tmp_path, FormatError)


@pytest.mark.parametrize("resigned", [False, True], ids=["as-is", "resigned"])
@pytest.mark.parametrize(
    "stripped",
    [
        (ENCRYPTION,),
        (CRYPTO_KEYS,),
        (POLICY,),
        (SIGNATURE,),
        (ENCRYPTION, SIGNATURE),
        (CRYPTO_KEYS, ENCRYPTION),
        (CRYPTO_KEYS, ENCRYPTION, POLICY, SIGNATURE),
    ],
    ids="+".join,
)
def test_partly_stripped_crypto_metadata_is_refused(
    sample: Sample, stripped: tuple[str, ...], resigned: bool, tmp_path: Path
) -> None:
    """Not loaded as a plain file (which would hand out ciphertext as weights)."""

    def strip(header: Header) -> None:
        for key in stripped:
            del header["__metadata__"][key]

    data = edit(sample.data, strip, signer=sample.signer if resigned and SIGNATURE not in stripped else None)
    assert_refused(sample, data, tmp_path, FormatError)


def test_fully_stripped_file_is_refused_when_encryption_is_required(sample: Sample, tmp_path: Path) -> None:
    """Without any reserved key the file is plain safetensors (ciphertext as weights): only a reader that
    requires encryption can tell, and it must."""
    data = edit(sample.data, lambda h: [h["__metadata__"].pop(key) for key in RESERVED])
    config = {**sample.load_config, "require_encryption": True}
    assert_refused(sample, data, tmp_path, NotEncryptedError, config=config)
    assert_unchanged(sample, sample.data, tmp_path, config)  # the genuine file still loads under that option


# ---------------------------------------------------------------------------------------------------------------
# Lazy, chunk-granular authentication through get_slice


FRAMEWORKS = ["np"] + (["pt"] if pt is not None else [])


def _as_numpy(value: Any) -> np.ndarray:
    return value if isinstance(value, np.ndarray) else value.numpy()


def _check_slices(
    path: Path, config: Any, framework: str, name: str, original: np.ndarray, good: list[Any], bad: list[Any]
) -> None:
    with pc.safe_open(path, framework, config=config) as handle:
        view = handle.get_slice(name)
        for index in bad:
            with pytest.raises(IntegrityError) as caught:
                view[index]
            assert not isinstance(caught.value, SignatureError)
        for index in good:  # after a failure too: the handle stays usable for untouched chunks
            assert same(_as_numpy(view[index]), np.asarray(original[index])), f"{name}[{index}]"
        with pytest.raises(IntegrityError):
            handle.get_tensor(name)
        for other in handle.offset_keys():
            if other != name:
                handle.get_tensor(other)


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize(
    ("name", "chunk", "good", "bad"),
    [
        # F32[50]: 16 elements a chunk; chunk 2 holds elements 32..47
        (
            "enc_a",
            2,
            [slice(0, 16), slice(16, 32), slice(48, 50), 31, 48, slice(0, 32, 3)],
            [slice(32, 48), 40, slice(30, 34), slice(40, 50), slice(None), slice(49, 0, -1)],
        ),
        # I16[40]: 32 elements a chunk; chunk 1 holds 32..39
        ("plain_e", 1, [slice(0, 32), 0, 31, slice(None, 32, 2)], [32, slice(30, 40), slice(-1, None)]),
        # F64[6,5]: 8 elements a chunk; chunk 1 holds flat elements 8..15 (rows 1 to 3)
        (
            "plain_d",
            1,
            [0, (0, slice(None)), slice(4, 6), (1, 2), (3, 1)],
            [2, slice(1, 3), (1, 3), (3, 0), (slice(None), 0)],
        ),
    ],
)
def test_get_slice_authenticates_only_the_chunks_it_reads(
    master_key: pc.MasterKey,
    signing_key: pc.SigningKey,
    framework: str,
    name: str,
    chunk: int,
    good: list[Any],
    bad: list[Any],
    tmp_path: Path,
) -> None:
    sample = make_sample(master_key, signing_key, "2")
    start = sample.offsets(name)[0] + chunk * CHUNK + 5
    path = tmp_path / "model.cts"
    path.write_bytes(flip(sample.data, start))
    _check_slices(path, sample.load_config, framework, name, sample.tensors[name], good, bad)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_changes_after_open_are_caught(sample: Sample, framework: str, tmp_path: Path) -> None:
    """Reads are lazy: bytes changed or cut off after safe_open verified the header are caught when read."""
    path = tmp_path / "model.cts"
    path.write_bytes(sample.data)
    with pc.safe_open(path, framework, config=sample.load_config) as handle:
        with path.open("r+b") as f:  # same inode, changed under the open handle
            for name in ("enc_a", "plain_d"):
                start = sample.offsets(name)[0]
                f.seek(start)
                f.write(bytes([sample.data[start] ^ 0xFF]))  # a flip: ciphertext may already hold 0xff
        for name in ("enc_a", "plain_d"):
            with pytest.raises(IntegrityError):
                handle.get_tensor(name)
        assert same(_as_numpy(handle.get_tensor("enc_b")), sample.tensors["enc_b"])
        with path.open("r+b") as f:
            f.truncate(sample.offsets("enc_b")[0] + 10)
        for name in ("enc_b", "plain_e", "enc_c"):
            with pytest.raises(FormatError):
                handle.get_tensor(name)


@pytest.mark.parametrize("target", ["enc_big", "plain_big"])
@pytest.mark.parametrize("version", ["2", "1"])
def test_tamper_in_the_last_parallel_span(
    master_key: pc.MasterKey, signing_key: pc.SigningKey, version: str, target: str, tmp_path: Path
) -> None:
    """Tensors over 16 MiB are read in several spans on a thread pool: a change near the end is caught too."""
    rng = np.random.default_rng(7)
    tensors = {name: rng.standard_normal(5_000_000).astype(np.float32) for name in ("enc_big", "plain_big")}
    config = {
        "enc_key": master_key.to_jwk("reference"),
        "sign_key": signing_key.to_jwk("reference"),
        "tensors": ["enc_big"],
        "version": version,
    }
    load_config = {"enc_key": master_key.to_jwk("reference"), "sign_key": signing_key.verify_key.to_jwk("reference")}
    sample = Sample(pn.save(tensors, config=config), tensors, version, signing_key, load_config)
    assert_refused(sample, flip(sample.data, sample.offsets(target)[1] - 3), tmp_path, IntegrityError, exact=True)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_version_1_authenticates_whole_tensors(
    master_key: pc.MasterKey, signing_key: pc.SigningKey, framework: str, tmp_path: Path
) -> None:
    """Version 1 has one tag per tensor: a slice of an untouched region fails too."""
    sample = make_sample(master_key, signing_key, "1")
    path = tmp_path / "model.cts"
    path.write_bytes(flip(sample.data, sample.offsets("enc_a")[1] - 1))
    _check_slices(path, sample.load_config, framework, "enc_a", sample.tensors["enc_a"], [], [slice(0, 4), 0])
