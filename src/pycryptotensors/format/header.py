"""Parsing and validating the safetensors layer of a file: the untrusted outer header.

Everything here treats input as hostile. The checks run before anything is allocated or decrypted, so a
crafted header can neither crash the process nor make it allocate more than the file's own size. The rules
are safetensors' own (size limit, UTF-8, JSON, dtype x shape = byte length, contiguous offsets starting at
0, no trailing bytes) plus a few stricter ones: duplicate JSON keys and unknown fields are refused, because
two parsers that resolve them differently would see two different files behind one signature.
"""

from __future__ import annotations

import itertools
import json
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple

import msgspec

from ..errors import FormatError
from .dtypes import DTYPES, DType, nbytes_of

MAX_HEADER_SIZE = 100_000_000  # safetensors' limit on N
PREFIX_SIZE = 8
_ENTRY_FIELDS = frozenset({"dtype", "shape", "data_offsets"})
MAX_RANK = 64  # numpy's limit; also keeps a hostile shape from costing a long big-integer product
_COLON_ESCAPE = re.compile("u003")  # in a \\u003a escape; a compiled search is twice as fast as `in`


class TensorEntry(NamedTuple):
    """One tensor as the outer header describes it; offsets are relative to the start of the data area.

    A named tuple rather than a dataclass: a header of thousands of tensors builds thousands of these at
    every open, and a tuple costs a third of a frozen dataclass to make.
    """

    name: str
    dtype: DType
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Header:
    """A validated outer header: metadata (str -> str) and tensors in on-disk order."""

    metadata: dict[str, str]
    tensors: dict[str, TensorEntry]
    data_start: int  # absolute file offset of the data area (8 + N)
    data_len: int

    def in_offset_order(self) -> list[TensorEntry]:
        """Tensors by data offset; ties (zero-size tensors) keep their on-disk order."""
        return list(self._offset_order)

    @cached_property
    def _offset_order(self) -> tuple[TensorEntry, ...]:
        return _offset_order(self.tensors)


def _offset_order(tensors: dict[str, TensorEntry]) -> tuple[TensorEntry, ...]:
    entries = tuple(tensors.values())
    if all(a.end <= b.start for a, b in itertools.pairwise(entries)):  # the usual layout: already in order
        return entries
    return tuple(sorted(entries, key=lambda e: (e.start, e.end)))


def read_prefix(prefix: bytes, total_size: int) -> int:
    """Decode the 8-byte header length and check it against the limit and the file's size."""
    if len(prefix) < PREFIX_SIZE or total_size < PREFIX_SIZE:
        raise FormatError(f"file too small to be safetensors: {total_size} bytes")
    n: int
    (n,) = struct.unpack("<Q", prefix[:PREFIX_SIZE])
    if n > MAX_HEADER_SIZE:
        raise FormatError(f"header length {n} exceeds the limit of {MAX_HEADER_SIZE} bytes")
    if n > total_size - PREFIX_SIZE:
        raise FormatError(f"header length {n} runs past the end of the file ({total_size} bytes): truncated")
    if n < 2:
        raise FormatError(f"header length {n} is too small to hold a JSON object")
    return n


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise FormatError(f"duplicate key {key!r} in header JSON")
            seen.add(key)
    return result


def _no_constants(name: str) -> Any:
    raise FormatError(f"non-standard JSON constant {name} in header")


def loads_strict(text: str | bytes, what: str) -> Any:
    """JSON without duplicate keys or NaN/Infinity; every failure becomes a FormatError."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except FormatError:
        raise
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"{what} is not valid JSON: {exc}") from None


def loads_unchecked(text: str | bytes, what: str) -> Any:
    """JSON like :func:`loads_strict` but without its per-object duplicate-key hook, which costs a Python call
    for each of thousands of objects. The caller validates the structure, then calls :func:`no_duplicates`.

    Parsed by ``msgspec`` (in C, twice as fast as ``json`` on a header of thousands of tensors, and like it
    refusing NaN and Infinity); it keeps the last of duplicate keys, which :func:`no_duplicates` then refuses.
    """
    try:
        return msgspec.json.decode(text)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise FormatError(f"{what} is not valid JSON: {exc}") from None


def no_duplicates(text: str, what: str, members: int, strings: Iterable[str]) -> None:
    """Refuse ``text`` if it holds a duplicate key, given what its parse was validated to hold: ``members``
    key-value pairs in all, and no other strings than ``strings`` that may contain a colon.

    In JSON a colon outside a string separates a key from its value, so the text holds ``count(':')`` minus
    the colons written inside its strings members. With no ``\\u003a`` escape (the only other way to write a
    colon), those are at least the colons of the parsed strings. When the counts agree, the text holds no
    more members than its parse: no key was dropped as a duplicate. Otherwise the strict parser decides.
    """
    colons = members + "".join(strings).count(":")  # one count over the joined text: no call per string
    if _COLON_ESCAPE.search(text) or text.count(":") != colons:
        loads_strict(text, what)


def _entry(name: str, raw: Any) -> TensorEntry:
    # ``type(x) is int`` rather than isinstance: JSON true/false must not pass as 1/0.
    if type(raw) is not dict or len(raw) != 3 or not _ENTRY_FIELDS.issuperset(raw):
        raise FormatError(f"tensor {name!r}: entry must have exactly the fields dtype, shape, data_offsets")
    dtype = DTYPES.get(raw["dtype"]) if type(raw["dtype"]) is str else None
    if dtype is None:
        raise FormatError(f"tensor {name!r}: unknown dtype {raw['dtype']!r}")
    shape, offsets = raw["shape"], raw["data_offsets"]
    if type(shape) is not list or not all(type(d) is int and d >= 0 for d in shape):
        raise FormatError(f"tensor {name!r}: shape must be a list of non-negative integers")
    if len(shape) > MAX_RANK:
        raise FormatError(f"tensor {name!r}: {len(shape)} dimensions exceed the limit of {MAX_RANK}")
    if type(offsets) is not list or len(offsets) != 2 or not all(type(o) is int and o >= 0 for o in offsets):
        raise FormatError(f"tensor {name!r}: data_offsets must be two non-negative integers")
    start, end = offsets
    if start > end:
        raise FormatError(f"tensor {name!r}: data_offsets [{start}, {end}] run backwards")
    expected = nbytes_of(dtype, tuple(shape))
    if expected is None or expected != end - start:
        raise FormatError(
            f"tensor {name!r}: {dtype.name}{shape} needs {expected} bytes but data_offsets span {end - start}"
        )
    return TensorEntry(name, dtype, tuple(shape), start, end)


def _entries(document: dict[str, Any]) -> tuple[dict[str, TensorEntry], int]:
    """Every tensor entry, validated. One tight loop for the valid case (thousands of tensors are opened at
    every load); any entry it does not accept goes through :func:`_entry`, which names the defect.

    Also returns where the tensors end when, in this order, each starts where the previous one ended (the
    usual layout: the tiling is then checked already, in the same loop), and -1 otherwise.
    """
    tensors: dict[str, TensorEntry] = {}
    dtypes, new = DTYPES, tuple.__new__
    position = 0  # -1 once out of order: no start (>= 0) matches it again
    for name, raw in document.items():
        if type(raw) is dict and len(raw) == 3:
            dtype_name, shape, offsets = raw.get("dtype"), raw.get("shape"), raw.get("data_offsets")
            dtype = dtypes.get(dtype_name) if type(dtype_name) is str else None
            if (
                dtype is not None
                and type(shape) is list
                and len(shape) <= MAX_RANK
                and type(offsets) is list
                and len(offsets) == 2
            ):
                start, end = offsets
                if type(start) is int and type(end) is int and 0 <= start <= end:
                    count = 1
                    for dim in shape:
                        if type(dim) is not int or dim < 0:
                            break
                        count *= dim
                    else:
                        bits = count * dtype.bits
                        if not bits % 8 and bits // 8 == end - start:
                            tensors[name] = new(TensorEntry, (name, dtype, tuple(shape), start, end))
                            position = end if start == position else -1
                            continue
        entry = tensors[name] = _entry(name, raw)
        position = entry.end if entry.start == position else -1
    return tensors, position


def parse_header(header_bytes: bytes, data_start: int, data_len: int | None) -> Header:
    """Validate the JSON header of a file whose data area holds exactly ``data_len`` bytes.

    ``data_len=None`` validates a header on its own (a key service sees no data): the offsets must still tile
    a contiguous area from 0, whose length is then taken as the data length.
    """
    try:
        text = header_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError("header is not valid UTF-8") from None
    if not text.startswith("{"):
        raise FormatError("header does not start with '{'")
    document = loads_unchecked(text, "header")
    if not isinstance(document, dict):
        raise FormatError("header is not a JSON object")
    top_members = len(document)

    metadata = document.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise FormatError("__metadata__ must map strings to strings")

    tensors, tiled_to = _entries(document)
    # Every entry holds three members (dtype, shape, data_offsets: no other strings); metadata, strings only.
    members = top_members + len(metadata) + 3 * len(tensors)
    no_duplicates(text, "header", members, itertools.chain(tensors, metadata, metadata.values()))
    if tiled_to >= 0:  # in order and contiguous from 0, as writers lay files out
        ordered, position = tuple(tensors.values()), tiled_to
    else:
        ordered, position = _offset_order(tensors), 0
        for entry in ordered:
            if entry.start != position:
                problem = "overlaps the previous tensor" if entry.start < position else "leaves a gap before it"
                raise FormatError(f"tensor {entry.name!r} at offset {entry.start} {problem} (expected {position})")
            position = entry.end
    if data_len is None:
        data_len = position
    if position != data_len:
        raise FormatError(
            f"tensors cover {position} bytes but the data area holds {data_len}: "
            + ("truncated file" if position > data_len else "trailing bytes")
        )
    header = Header(metadata, tensors, data_start, data_len)
    header.__dict__["_offset_order"] = ordered  # the order just checked, for whoever asks next
    return header


def serialize_header(metadata: dict[str, str] | None, entries: list[TensorEntry]) -> bytes:
    """Compact header JSON as safetensors writes it: metadata first (keys sorted), then entries in order."""
    document: dict[str, Any] = {}
    if metadata is not None:
        document["__metadata__"] = {k: metadata[k] for k in sorted(metadata)}
    for e in entries:
        document[e.name] = {"dtype": e.dtype.name, "shape": list(e.shape), "data_offsets": [e.start, e.end]}
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def frame_header(header_json: bytes, size: int | None = None) -> bytes:
    """The 8-byte length prefix and the header, padded with spaces to ``size`` (default: a multiple of 8)."""
    if size is None:
        size = len(header_json) + (-len(header_json) % 8)
    if len(header_json) > size:
        raise ValueError("header does not fit its reserved space")
    return struct.pack("<Q", size) + header_json + b" " * (size - len(header_json))
