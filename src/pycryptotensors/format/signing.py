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


def verify_header(public_keys: Ed25519PublicKey | Sequence[Ed25519PublicKey], header: Header, signature: bytes) -> None:
    """Accept the header if one of the trusted keys verifies it (in either deterministic tie order)."""
    keys = [public_keys] if isinstance(public_keys, Ed25519PublicKey) else list(public_keys)
    for ordered in _candidate_orders(header):
        message = signed_message(header.metadata, ordered)
        for key in keys:
            try:
                key.verify(signature, message)
                return
            except InvalidSignature:
                continue
    raise SignatureError("the header signature does not verify under the trusted signing key")
