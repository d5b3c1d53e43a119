"""Taking CryptoTensors files apart and putting them back together, for the tests that attack them.

``split`` / ``assemble`` are byte-exact for files our writer produces (compact JSON padded with spaces to a
multiple of 8), so an edit changes exactly what it means to change. ``resign`` recomputes the header
signature from the rule in the format document, independently of the library: a re-signed edit models an
attacker who holds the signing key but not the master key, and isolates the layers under the signature
(key wrapping, AEAD tags, plaintext digests).
"""

from __future__ import annotations

import base64
import json
import string
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import pycryptotensors as pc
import pycryptotensors.numpy as pn
from helpers import same  # noqa: F401 - the fuzz and tamper tests import it from here

CRYPTO_KEYS, ENCRYPTION, POLICY, SIGNATURE, EXTENSIONS = (
    "__crypto_keys__",
    "__encryption__",
    "__policy__",
    "__signature__",
    "__pycryptotensors__",
)
RESERVED = (CRYPTO_KEYS, ENCRYPTION, POLICY, SIGNATURE, EXTENSIONS)
B64_ALPHABET = string.ascii_uppercase + string.ascii_lowercase + string.digits + "+/"
CHUNK = 64

Header = dict[str, Any]


# ---------------------------------------------------------------------------------------------------------------
# Raw layout


def header_size(data: bytes) -> int:
    return struct.unpack("<Q", data[:8])[0]


def split(data: bytes) -> tuple[Header, bytes]:
    """The parsed outer header (key order kept) and the data area."""
    n = header_size(data)
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def encode_header(header: Header, *, ensure_ascii: bool = False, indent: int | None = None) -> bytes:
    separators = (",", ":") if indent is None else (",", ": ")
    return json.dumps(header, separators=separators, ensure_ascii=ensure_ascii, indent=indent).encode("utf-8")


def assemble(
    header: Header | bytes,
    body: bytes = b"",
    *,
    trailing: bytes = b"",
    pad: int = 8,
    length: int | None = None,
    **encoding: Any,
) -> bytes:
    """8-byte length, header JSON (+ ``trailing``, then spaces up to a multiple of ``pad``), data area.

    ``length`` overrides the length prefix, to build files that lie about it.
    """
    raw = header if isinstance(header, bytes) else encode_header(header, **encoding)
    raw += trailing
    raw += b" " * (-len(raw) % pad)
    return struct.pack("<Q", len(raw) if length is None else length) + raw + body


def flip(data: bytes, offset: int, mask: int = 0xFF) -> bytes:
    return data[:offset] + bytes([data[offset] ^ mask]) + data[offset + 1 :]


def put(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


def flip_b64_char(char: str) -> str:
    """The character with one bit of its ASCII code flipped that is still in the base64 alphabet."""
    for bit in (0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40):
        other = chr(ord(char) ^ bit)
        if other in B64_ALPHABET:
            return other
    raise AssertionError(f"no single-bit neighbour of {char!r} in the base64 alphabet")


def flip_decoded(value: str, byte: int = 0, mask: int = 0x01) -> str:
    """A base64 string whose decoded bytes differ in one bit (``byte`` may be negative)."""
    raw = bytearray(base64.b64decode(value))
    raw[byte] ^= mask
    return base64.b64encode(bytes(raw)).decode("ascii")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(value: str) -> bytes:
    return base64.b64decode(value)


# ---------------------------------------------------------------------------------------------------------------
# Reserved metadata documents and the signature


def inner(header: Header, key: str) -> Any:
    """A reserved metadata entry's JSON document, parsed (key order kept)."""
    return json.loads(header["__metadata__"][key])


def set_inner(header: Header, key: str, value: Any) -> None:
    header["__metadata__"][key] = json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def signed_message(header: Header) -> bytes:
    """The format document's rule: metadata minus the signature, keys sorted, then tensors by offset."""
    metadata = header.get("__metadata__", {})
    document: dict[str, Any] = {"__metadata__": {k: metadata[k] for k in sorted(metadata) if k != SIGNATURE}}
    tensors = [(name, entry) for name, entry in header.items() if name != "__metadata__"]
    for name, entry in sorted(tensors, key=lambda item: tuple(item[1]["data_offsets"])):  # stable: ties keep disk order
        document[name] = {"dtype": entry["dtype"], "shape": entry["shape"], "data_offsets": entry["data_offsets"]}
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def resign(header: Header, signing_key: pc.SigningKey) -> None:
    header["__metadata__"][SIGNATURE] = b64(signing_key.private.sign(signed_message(header)))


def edit(
    data: bytes, change: Callable[[Header], Any], *, signer: pc.SigningKey | None = None, **encoding: Any
) -> bytes:
    """Apply ``change`` to the parsed header, re-sign when ``signer`` is given, and re-serialize."""
    header, body = split(data)
    change(header)
    if signer is not None:
        resign(header, signer)
    return assemble(header, body, **encoding)


def edit_inner(data: bytes, key: str, change: Callable[[Any], Any], *, signer: pc.SigningKey | None = None) -> bytes:
    """Edit one reserved metadata document: ``change`` mutates the parsed document (its result is ignored)."""

    def apply(header: Header) -> None:
        document = inner(header, key)
        change(document)
        set_inner(header, key, document)

    return edit(data, apply, signer=signer)


# ---------------------------------------------------------------------------------------------------------------
# A partly encrypted sample file


ENCRYPTED = ("enc_a", "enc_b", "enc_c", "enc_empty")
PLAIN = ("plain_d", "plain_e", "plain_f", "plain_empty")
USER_METADATA = {"note": "héllo wörld", "format": "pt"}


def sample_tensors() -> dict[str, np.ndarray]:
    """Several chunks per tensor at CHUNK=64; enc_a and plain_f have equal sizes, enc_a and enc_b equal chunk
    counts, plain_d and plain_f equal chunk counts (for swap attacks); the two zero-size F32 tensors share one
    offset, so the signature's tie order is exercised."""
    rng = np.random.default_rng(20240601)
    return {
        "enc_a": rng.standard_normal(50).astype(np.float32),  # 200 B, 4 chunks
        "enc_b": rng.integers(-(2**31), 2**31 - 1, size=(7, 8), dtype=np.int32),  # 224 B, 4 chunks
        "enc_c": rng.integers(0, 255, size=7, dtype=np.uint8),  # 7 B, 1 chunk
        "enc_empty": np.zeros(0, dtype=np.float32),
        "plain_d": rng.standard_normal((6, 5)),  # F64, 240 B, 4 chunks
        "plain_e": rng.integers(-(2**15), 2**15 - 1, size=40, dtype=np.int16),  # 80 B, 2 chunks
        "plain_f": rng.standard_normal(50).astype(np.float32),  # 200 B, 4 chunks
        "plain_empty": np.zeros((0, 3), dtype=np.float32),  # ties with enc_empty at one offset
    }


@dataclass
class Sample:
    """A saved file with everything a test needs to attack it and to judge what a loader returned."""

    data: bytes
    tensors: dict[str, np.ndarray]
    version: str
    signer: pc.SigningKey
    load_config: dict[str, Any]
    header: Header = field(init=False)
    json_end: int = field(init=False)  # absolute offset just past the header JSON (before padding)

    def __post_init__(self) -> None:
        self.header, _ = split(self.data)
        self.json_end = 8 + len(self.data[8 : 8 + header_size(self.data)].rstrip(b" "))

    @property
    def data_start(self) -> int:
        return 8 + header_size(self.data)

    @property
    def iv_field(self) -> str:
        return "base_iv" if self.version == "2" else "iv"

    @property
    def tag_field(self) -> str:
        return "tags" if self.version == "2" else "tag"

    def offsets(self, name: str) -> tuple[int, int]:
        """Absolute file offsets of a tensor's bytes."""
        start, end = self.header[name]["data_offsets"]
        return self.data_start + start, self.data_start + end

    def find(self, needle: str | bytes) -> int:
        """Absolute offset of a string that occurs exactly once in the header."""
        raw = self.data[: self.data_start]
        needle = needle.encode("utf-8") if isinstance(needle, str) else needle
        assert raw.count(needle) == 1, f"{needle!r} occurs {raw.count(needle)} times in the header"
        return raw.index(needle)

    def encryption(self, name: str) -> dict[str, str]:
        return inner(self.header, ENCRYPTION)[name]

    def digests(self, name: str) -> str:
        return inner(self.header, EXTENSIONS)["integrity"]["tensors"][name]


def make_sample(master_key: pc.MasterKey, signing_key: pc.SigningKey, version: str = "2") -> Sample:
    config = {
        "enc_key": master_key.to_jwk("reference"),
        "sign_key": signing_key.to_jwk("reference"),
        "tensors": list(ENCRYPTED),
        "version": version,
        "chunk_size": CHUNK,  # version 1 uses it only for the digests of plain tensors
    }
    tensors = sample_tensors()
    data = pn.save(tensors, metadata=USER_METADATA, config=config)
    load_config = {"enc_key": master_key.to_jwk("reference"), "sign_key": signing_key.verify_key.to_jwk("reference")}
    return Sample(data, tensors, version, signing_key, load_config)
