"""Security review of the fast open and slice paths (issue 14): what an attacker who writes the file can do.

Two attackers: one holds no key (every edit breaks the signature), one holds the signing key but not the
master key (edits are re-signed, here over the header bytes exactly as written, which the fast signature check
reads). The fast paths must refuse everything the strict parser and the canonical signed message refuse:

- a tensor name holding a lone surrogate (``"\\ud800"``, FORMAT.md §9.3), signed over the bytes as written;
- duplicate keys hidden by escapes (``"\\u0064type"``, ``"\\u005f_metadata__"``), in the header and inside
  ``__encryption__``, also when the duplicate is re-signed;
- a remembered header for another file size, data area or trusted key;
- a wrong master key of any kind (WrongKeyError, nothing else);
- the per-thread slice buffer: wiped on a failed tag, and never lent again after a call whose pool tasks may
  outlive it (an interrupt while waiting), so that their writes cannot land in a later call's result.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pycryptotensors as pc
import pycryptotensors.numpy as pn
from _filecraft import (
    ENCRYPTION,
    SIGNATURE,
    assemble,
    b64,
    encode_header,
    inner,
    make_sample,
    resign,
    set_inner,
    split,
)
from pycryptotensors.cipher import chunks
from pycryptotensors.errors import FormatError, IntegrityError, SignatureError, WrongKeyError
from pycryptotensors.reading import headers

PLACEHOLDER = "A" * 86 + "=="  # a signature-sized base64 value, replaced once the message is signed


@pytest.fixture(autouse=True)
def _nothing_remembered() -> None:
    headers.forget()


def _signed_as_written(doc: dict[str, Any], signer: pc.SigningKey, fix: Callable[[bytes, bytes], tuple[bytes, bytes]]):
    """Header bytes signed the way the fast check reads them: the compact bytes as written, minus the signature
    member. ``fix(metadata_part, rest)`` edits the raw text first (escapes json.dumps would not write)."""
    doc["__metadata__"][SIGNATURE] = PLACEHOLDER
    raw = encode_header(doc)
    opening = json.dumps({"__metadata__": doc["__metadata__"]}, separators=(",", ":"), ensure_ascii=False)
    metadata_part, rest = raw[: len(opening) - 1], raw[len(opening) - 1 :]
    raw = b"".join(fix(metadata_part, rest))
    member = b'"' + SIGNATURE.encode() + b'":"' + PLACEHOLDER.encode() + b'",'
    assert raw.count(member) == 1
    signature = b64(signer.private.sign(raw.replace(member, b""))).encode()
    return raw.replace(PLACEHOLDER.encode(), signature)


def _renamed(doc: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    renamed = {new if k == old else k: v for k, v in doc.items()}
    encryption = inner(renamed, ENCRYPTION)
    set_inner(renamed, ENCRYPTION, {new if k == old else k: v for k, v in encryption.items()})
    return renamed


def _refused(data: bytes, tmp_path: Path, config: dict, expected: type[Exception] = FormatError) -> None:
    path = tmp_path / "hostile.ct"
    path.write_bytes(data)
    with pytest.raises(expected):
        pc.safe_open(path, "np", config=config)
    headers.forget()
    with pytest.raises(expected):
        pn.load(data, config=config)


@pytest.mark.parametrize("version", ["1", "2"])
def test_a_lone_surrogate_tensor_name_signed_as_written_is_refused(version, master_key, signing_key, tmp_path):
    """The signing-key holder signs the raw bytes of a header whose encrypted tensor is named "enc_a\\ud800":
    the canonical message cannot even be built for it (§9.3), so the fast check must not accept it either."""
    sample = make_sample(master_key, signing_key, version)
    doc, body = split(sample.data)
    doc = _renamed(doc, "enc_a", "enc_aQQ")

    def surrogate(metadata_part: bytes, rest: bytes) -> tuple[bytes, bytes]:
        # inside __encryption__ (a JSON string in a JSON string) the escape is escaped once more
        return metadata_part.replace(b"QQ", b"\\\\ud800"), rest.replace(b"QQ", b"\\ud800")

    data = assemble(_signed_as_written(doc, signing_key, surrogate), body)
    _refused(data, tmp_path, sample.load_config)


def test_escaped_names_signed_as_written_still_verify(master_key, signing_key, tmp_path):
    """The fallback for escapes is the canonical message: a name written with a (valid) escape still opens."""
    sample = make_sample(master_key, signing_key)
    doc, body = split(sample.data)
    doc = _renamed(doc, "enc_a", "enc_a\u00e9")
    resign(doc, signing_key)
    raw = encode_header(doc).replace("enc_a\u00e9".encode(), b"enc_a\\u00e9")  # same name, escaped
    path = tmp_path / "escaped.ct"
    path.write_bytes(assemble(raw, body))
    with pc.safe_open(path, "np", config=sample.load_config) as f:
        assert np.array_equal(f.get_tensor("enc_a\u00e9"), sample.tensors["enc_a"])


def _text_edit(old: str, new: str) -> Callable[[bytes, bytes], tuple[bytes, bytes]]:
    def fix(metadata_part: bytes, rest: bytes) -> tuple[bytes, bytes]:
        text = metadata_part + rest
        assert text.count(old.encode()) == 1, old
        text = text.replace(old.encode(), new.encode())
        return text[: len(metadata_part)], text[len(metadata_part) :]

    return fix


DUPLICATES = {
    # an entry's field repeated through an escape: Python keeps the last, another parser may keep the first
    "escaped-dtype": ('"plain_e":{"dtype":"I16",', '"plain_e":{"dtype":"I16","\\u0064type":"F16",'),
    "escaped-name": ('"plain_e":{', '"plain_\\u0065":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},"plain_e":{'),
    "second-metadata": ('"plain_e":{', '"\\u005f_metadata__":{},"plain_e":{'),
    "metadata-key": ('"format":"pt"', '"format":"pt","\\u0066ormat":"tf"'),
    "colon-in-name": (
        '"plain_e":{',
        '"a:b":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},"a:b":{"dtype":"U8",'
        '"shape":[0],"data_offsets":[0,0]},"plain_e":{',
    ),
    # inside __encryption__ (JSON in a JSON string): a field, and a whole entry, repeated through an escape
    "encryption-field": ('\\"enc_c\\":{', '\\"enc_c\\":{\\"\\\\u0077rapped_key\\":\\"AAAA\\",'),
    "encryption-entry": ('\\"enc_c\\":{', '\\"enc_\\\\u0063\\":{},\\"enc_c\\":{'),
}


@pytest.mark.parametrize("edit", DUPLICATES.values(), ids=DUPLICATES.keys())
def test_duplicates_hidden_by_escapes_are_refused_even_when_signed(edit, master_key, signing_key, tmp_path):
    sample = make_sample(master_key, signing_key)
    doc, body = split(sample.data)
    data = assemble(_signed_as_written(doc, signing_key, _text_edit(*edit)), body)
    _refused(data, tmp_path, sample.load_config)


def test_a_remembered_header_is_not_used_for_another_size_data_or_key(master_key, signing_key, tmp_path):
    sample = make_sample(master_key, signing_key)
    path = tmp_path / "good.ct"
    path.write_bytes(sample.data)
    with pc.safe_open(path, "np", config=sample.load_config) as f:
        assert np.array_equal(f.get_tensor("enc_b"), sample.tensors["enc_b"])
    # the same header bytes, one trailing byte more: the offsets no longer tile the data area
    longer = tmp_path / "longer.ct"
    longer.write_bytes(sample.data + b"\0")
    with pytest.raises(FormatError, match="trailing"):
        pc.safe_open(longer, "np", config=sample.load_config)
    # the same header, other ciphertext: the header is remembered, the data still authenticated
    start, _ = sample.offsets("enc_b")
    tampered = bytearray(sample.data)
    tampered[start] ^= 1
    other = tmp_path / "tampered.ct"
    other.write_bytes(bytes(tampered))
    with pc.safe_open(other, "np", config=sample.load_config) as f, pytest.raises(IntegrityError):
        f.get_tensor("enc_b")
    # the same bytes, another trusted signer: verified again, and refused
    stranger_key = pc.generate_signing_key(kid="sign-test").verify_key.to_jwk("reference")
    stranger = dict(sample.load_config, sign_key=stranger_key)
    with pytest.raises(SignatureError):
        pc.safe_open(path, "np", config=stranger)


@pytest.mark.parametrize(
    "wrong",
    [
        lambda: pc.generate_master_key(kid="enc-test"),  # right size, wrong key
        lambda: pc.generate_master_key(kid="enc-test", alg="aes128gcm"),  # wrong size
        lambda: pc.generate_master_key(kid="enc-test", alg="chacha20poly1305"),  # right size, other algorithm
    ],
    ids=["other-key", "short-key", "other-alg"],
)
def test_a_wrong_master_key_is_wrong_key_error_at_open(wrong, master_key, signing_key, tmp_path):
    sample = make_sample(master_key, signing_key)
    config = dict(sample.load_config, enc_key=wrong().to_jwk("reference"))
    _refused(sample.data, tmp_path, config, WrongKeyError)


def test_the_slice_buffer_is_wiped_when_a_chunk_fails(master_key, signing_key, tmp_path):
    sample = make_sample(master_key, signing_key)
    start, _ = sample.offsets("enc_a")
    tampered = bytearray(sample.data)
    tampered[start + 3] ^= 1  # first 64-byte chunk of enc_a
    path = tmp_path / "tampered.ct"
    path.write_bytes(bytes(tampered))
    with pc.safe_open(path, "np", config=sample.load_config) as f:
        assert np.array_equal(f.get_slice("enc_b")[1:3, 2:5], sample.tensors["enc_b"][1:3, 2:5])  # fills it
        lent = chunks._scratch.plain
        with pytest.raises(IntegrityError):
            f.get_slice("enc_a")[2:9]  # chunk 0 of enc_a: the first 64 bytes of the buffer
    assert not lent[:64].any()  # neither the unauthenticated chunk nor enc_b's bytes survive where it was written


class _Interrupted(BaseException):  # like KeyboardInterrupt, which it stands for
    pass


class _GatedSource:
    """A file whose read at ``gate_offset`` waits for ``gate``, served by its own pool, one chunk per span."""

    def __init__(self, inner_source: Any, gate_offset: int, span_bytes: int) -> None:
        self._inner, self.gate_offset, self.span_bytes = inner_source, gate_offset, span_bytes
        self.path, self.size = inner_source.path, inner_source.size
        self.gate = threading.Event()
        self.executor = ThreadPoolExecutor(max_workers=4)

    def readinto(self, offset: int, buf: memoryview) -> None:
        self._inner.readinto(offset, buf)
        if offset == self.gate_offset and not self.gate.is_set():
            self.gate.wait(10)

    def read(self, offset: int, size: int) -> bytes:
        return self._inner.read(offset, size)

    def close(self) -> None:
        self.gate.set()
        self.executor.shutdown(wait=True)
        self._inner.close()


def test_a_task_left_running_by_an_interrupt_cannot_write_into_a_later_result(tmp_path, config, load_config):
    """An interrupt (Ctrl-C) while the pool decrypts a slice leaves a task running. Its late write must not land
    in the buffer that the thread's next slice is decrypted into (then copied out of)."""
    rng = np.random.default_rng(7)
    first, second = rng.standard_normal(64).astype(np.float32), rng.standard_normal(64).astype(np.float32)
    path = tmp_path / "two.ct"
    pn.save_file({"first": first, "second": second}, path, config=dict(config, chunk_size=64))
    with pc.safe_open(path, "np", config=load_config) as f:
        opened = f._file
        gated = _GatedSource(opened.source, opened.header.data_start + opened.header.tensors["first"].start + 64, 64)
        opened.source = gated

        def interrupt(*_: Any) -> None:
            raise _Interrupted

        # SIGUSR1, not SIGALRM: pytest-timeout's alarm stays as it is
        previous = signal.signal(signal.SIGUSR1, interrupt)
        timer = threading.Timer(0.2, signal.pthread_kill, (threading.main_thread().ident, signal.SIGUSR1))
        try:
            timer.start()
            with pytest.raises(_Interrupted):
                opened.range_bytes("first", 0, 160, borrow=True)  # chunks 0-2: the task for chunk 1 is held
        finally:
            timer.cancel()
            signal.signal(signal.SIGUSR1, previous)
        later, at = opened.range_bytes("second", 0, 256, borrow=True)
        expected = second.view(np.uint8)[at : at + len(later)].copy()
        assert np.array_equal(later, expected)
        gated.gate.set()  # the interrupted call's task now finishes and writes chunk 1 of "first"
        gated.executor.shutdown(wait=True)
        assert np.array_equal(later, expected), "a task of an interrupted call wrote into a later result"
