"""What the Ed25519 header signature covers (the signing itself is :mod:`pycryptotensors.cipher.signature`).

The message is compact JSON of ``{"__metadata__": {all metadata but __signature__, keys sorted}, then each
tensor in data-offset order: {"dtype", "shape", "data_offsets"}}``. Zero-size tensors share offsets and so
tie; the reference signs ties in its writer's order (dtype rank descending, then name), which is also their
order on disk, but its verifier breaks ties at random. We sign in that order and verify against the on-disk
order first and the writer's order second: both are deterministic, and both describe the same tensors.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator

from ..errors import FormatError
from .header import Header, TensorEntry
from .reserved import SIGNATURE

_ESCAPE = re.compile(rb"\\u")  # a compiled search: twice as fast as `in` on backslash-heavy headers


def writer_order(entries: Iterable[TensorEntry]) -> list[TensorEntry]:
    """The order safetensors-style writers lay data out in: larger dtypes first, then by name."""
    return sorted(entries, key=lambda e: (-e.dtype.rank, e.name))


def signed_message(metadata: dict[str, str], ordered: list[TensorEntry]) -> bytes:
    document: dict[str, object] = {
        "__metadata__": {k: metadata[k] for k in sorted(metadata) if k != SIGNATURE},
    }
    for entry in ordered:
        document[entry.name] = {
            "dtype": entry.dtype.name,
            "shape": list(entry.shape),
            "data_offsets": [entry.start, entry.end],
        }
    try:
        return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate escape ("\ud800") in a name or metadata string
        raise FormatError("header holds a string that is not valid Unicode") from None


def _candidate_orders(header: Header) -> list[list[TensorEntry]]:
    on_disk = header.in_offset_order()  # stable sort: ties keep their on-disk order
    by_writer = sorted(writer_order(header.tensors.values()), key=lambda e: (e.start, e.end))
    return [on_disk] if by_writer == on_disk else [on_disk, by_writer]


def _as_written(header: Header, raw: bytes) -> bytes | None:
    """The signed message cut out of the header as written, or None when it was not written that way.

    Writers (ours, the reference's) lay a header out as its signed message with the signature member added:
    compact, metadata first with its keys sorted, tensors in data order, then padding. The message is then
    the raw bytes less ``,"__signature__":"<base64>"`` and the padding: one search, no re-serialization, no
    per-tensor work. It is safe to verify: ``,"`` cannot occur inside a JSON string (a quote there is always
    escaped), so the cut text is a member of an object; the header parsed, so that object is
    ``__metadata__`` (a tensor entry or a top-level member holding a string is refused) and it occurs once.
    The message therefore parses to exactly the verified header less its signature. A ``\\u`` escape
    anywhere takes the canonical path: only it refuses a name holding a lone surrogate (``"\\ud800"``,
    §9.3), which bytes as written would carry through into the verified header.
    """
    signature = header.metadata.get(SIGNATURE)
    if not isinstance(signature, str) or not signature.isascii() or _ESCAPE.search(raw):
        return None
    member = b',"' + SIGNATURE.encode() + b'":' + json.dumps(signature).encode("ascii")
    at = raw.find(member)
    if at < 0 or raw.find(member, at + 1) >= 0:
        return None
    return raw[:at] + raw[at + len(member) :].rstrip(b" ")


def signed_messages(header: Header, raw: bytes | None = None) -> Iterator[bytes]:
    """Every message a valid signature of ``header`` may cover, cheapest first.

    With ``raw`` (the header bytes as read), a header written the usual way yields its own bytes first
    (:func:`_as_written`), which costs no per-tensor work; then the canonical messages in both deterministic
    tie orders.
    """
    message = _as_written(header, raw) if raw is not None else None
    if message is not None:
        yield message
    for ordered in _candidate_orders(header):
        yield signed_message(header.metadata, ordered)
