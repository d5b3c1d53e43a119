"""The plain-file sniff: only a header that may carry CryptoTensors' reserved keys goes to our strict parser.

safetensors writes ``\\u`` escapes for control characters; such a plain file must still be handed to
safetensors (whose rules then apply: it loads flax files, F8_E4M3FNUZ and more than 64 dimensions, which our
strict parser refuses), while a reserved key spelled in escapes, or hidden behind a duplicate key, must not
pass as plain.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import safetensors
import safetensors.numpy

import pycryptotensors as pc
import pycryptotensors.numpy as pn
from pycryptotensors.format.reserved import plainly_unencrypted


def _file(header: dict, data: bytes, *, ensure_ascii: bool = True) -> bytes:
    raw = json.dumps(header, ensure_ascii=ensure_ascii, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


CONTROL = {"note": "line\x01break"}  # json.dumps writes \u0001, as safetensors does


@pytest.mark.parametrize(
    ("case", "header", "data"),
    [
        ("flax", {"__metadata__": {**CONTROL, "format": "flax"}, "w": {"dtype": "F32", "shape": [2],
                                                                         "data_offsets": [0, 8]}}, bytes(8)),
        ("fnuz", {"__metadata__": CONTROL, "w": {"dtype": "F8_E4M3FNUZ", "shape": [4], "data_offsets": [0, 4]}},
         bytes(4)),
        ("65 dims", {"__metadata__": CONTROL, "w": {"dtype": "U8", "shape": [1] * 65, "data_offsets": [0, 1]}},
         bytes(1)),
    ],
)  # fmt: skip
def test_plain_files_with_escapes_go_to_safetensors(tmp_path, case: str, header: dict, data: bytes) -> None:
    blob = _file(header, data)
    assert b"\\u0001" in blob
    path = tmp_path / "plain.safetensors"
    path.write_bytes(blob)
    with safetensors.safe_open(path, "np") as real:
        expected_keys, expected_meta = real.keys(), real.metadata()
    with pc.safe_open(path, "np") as ours:  # handed to safetensors: same keys, same metadata, no refusal
        assert ours.keys() == expected_keys
        assert ours.metadata() == expected_meta


def test_plain_bytes_with_escapes_load_as_safetensors_does() -> None:
    blob = _file({"__metadata__": CONTROL, "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
                 np.array([1.5, -2.0], np.float32).tobytes())  # fmt: skip
    assert np.array_equal(pn.load(blob)["w"], safetensors.numpy.load(blob)["w"])


@pytest.mark.parametrize(
    "raw",
    [
        b'{"__metadata__":{"\\u005f_encryption__":"{}"}}',  # a reserved key spelled in escapes
        b'{"__metadata__":{"__pycryptotensors\\u005f_":"{}"}}',
        b'{"__metadata__":{"a":"\\u0001","a":"x"}}',  # a duplicate key: another reader may keep the other one
        b'{"__metadata__":{"n":"\\u0001"},"w":{"dtype":"F32","dtype":"U8"}}',
        b'{"__metadata__":{"n":"\\u0001"',  # broken JSON: the strict parser says why
    ],
)
def test_what_may_be_ours_is_not_plain(raw: bytes) -> None:
    assert not plainly_unencrypted(raw)


def test_a_reserved_key_in_escapes_is_parsed_strictly() -> None:
    header = b'{"__metadata__":{"\\u005f_encryption__":"{}"},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    header += b" " * (-len(header) % 8)
    blob = struct.pack("<Q", len(header)) + header + bytes(4)
    with pytest.raises(pc.FormatError):
        pn.load(blob)


def test_plain_without_escapes_is_plain() -> None:
    assert plainly_unencrypted(b'{"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}')
    assert plainly_unencrypted(b'{"__metadata__":{"note":"\\u0001"},"w":{"dtype":"F32"}}')
