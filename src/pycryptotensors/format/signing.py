"""What the Ed25519 header signature covers, and signing / verifying it.

The message is compact JSON of ``{"__metadata__": {all metadata but __signature__, keys sorted}, then each
tensor in data-offset order: {"dtype", "shape", "data_offsets"}}``. Zero-size tensors share offsets and so
tie; the reference signs ties in its writer's order (dtype rank descending, then name), which is also their
order on disk, but its verifier breaks ties at random. We sign in that order and verify against the on-disk
order first and the writer's order second: both are deterministic, and both describe the same tensors.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import FormatError, SignatureError
from .header import Header, TensorEntry
from .reserved import SIGNATURE


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


def sign_header(private_key: Ed25519PrivateKey, metadata: dict[str, str], ordered: list[TensorEntry]) -> bytes:
    return private_key.sign(signed_message(metadata, ordered))


def _as_written(header: Header, raw: bytes) -> bytes | None:
    """The signed message cut out of the header as written, or None when it was not written that way.

    Writers (ours, the reference's) lay a header out as its signed message plus the signature: compact,
    metadata first with its keys sorted, tensors in data order. Then the message is the raw tensor entries
    behind the re-serialized metadata, with no per-tensor work. It is safe to verify: the raw text is
    ``{"__metadata__":`` + the exact serialization of the parsed metadata + ``rest``, and the message is the
    same with the signature left out, so both parse to the same tensors (a second ``__metadata__`` in
    ``rest`` was refused as a duplicate key when the header was parsed). A ``\\u`` escape in ``rest`` takes
    the canonical path: only it refuses a tensor name holding a lone surrogate (``"\\ud800"``, §9.3), which
    bytes as written would carry through into the verified header.
    """
    metadata = header.metadata
    try:
        members = {
            k: json.dumps(k, ensure_ascii=False) + ":" + json.dumps(metadata[k], ensure_ascii=False)
            for k in sorted(metadata)
        }
        written = ('{"__metadata__":{' + ",".join(members.values()) + "}").encode("utf-8")
        signed = ",".join(v for k, v in members.items() if k != SIGNATURE)
    except UnicodeEncodeError:
        return None
    if not raw.startswith(written):
        return None
    rest = raw[len(written) :].rstrip(b" ")
    if not (rest == b"}" or rest.startswith(b",")) or b"\\u" in rest:
        return None
    return ('{"__metadata__":{' + signed + "}").encode("utf-8") + rest


def verify_header(
    public_keys: Ed25519PublicKey | Sequence[Ed25519PublicKey],
    header: Header,
    signature: bytes,
    raw: bytes | None = None,
) -> None:
    """Accept the header if one of the trusted keys verifies it (in either deterministic tie order).

    With ``raw`` (the header bytes as read), a header written the usual way is checked against its own bytes
    first (:func:`_as_written`), which costs no per-tensor work; the canonical messages are the fallback.
    """
    keys = [public_keys] if isinstance(public_keys, Ed25519PublicKey) else list(public_keys)
    message = _as_written(header, raw) if raw is not None else None
    if message is not None:
        for key in keys:
            try:
                key.verify(signature, message)
                return
            except InvalidSignature:
                continue
    for ordered in _candidate_orders(header):
        message = signed_message(header.metadata, ordered)
        for key in keys:
            try:
                key.verify(signature, message)
                return
            except InvalidSignature:
                continue
    raise SignatureError("the header signature does not verify under the trusted signing key")
