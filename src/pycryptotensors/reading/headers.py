"""Parsed and verified headers, remembered for the process: opening the same file again costs no parsing.

Frameworks open a file more than once (transformers: once for its metadata, once to load it). Parsing and
validating a header of thousands of tensors, and hashing it for the signature, is most of what an open
costs, and both are functions of the header bytes alone (and of the file size, which the validation checks
the offsets against). So the results are kept, keyed by the exact bytes: a file whose header changed in any
byte is parsed and verified afresh. Only headers that verified under a trusted key are kept (a hostile file
pins nothing), failures never, at most ``CACHED_HEADERS`` headers of up to ``CACHED_HEADER_BYTES`` each.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..cipher.signature import verify_header
from ..format.crypto_header import CryptoHeader, parse_crypto_header
from ..format.header import PREFIX_SIZE, Header, parse_header

CACHED_HEADERS = 8
CACHED_HEADER_BYTES = 1024 * 1024

_lock = threading.Lock()
_parsed: OrderedDict[tuple[bytes, int], tuple[Header, CryptoHeader | None]] = OrderedDict()
_verified: OrderedDict[tuple[bytes, bytes], None] = OrderedDict()


_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


def _remember(cache: OrderedDict[_K, _V], key: _K, value: _V) -> None:
    with _lock:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > CACHED_HEADERS:
            cache.popitem(last=False)


def parsed(header_bytes: bytes, file_size: int) -> tuple[Header, CryptoHeader | None]:
    """The validated header and crypto layer (None for plain safetensors) of a file of ``file_size`` bytes."""
    key = (header_bytes, file_size)
    found = _parsed.get(key) if len(header_bytes) <= CACHED_HEADER_BYTES else None
    if found is not None:
        return found
    data_start = PREFIX_SIZE + len(header_bytes)
    header = parse_header(header_bytes, data_start, file_size - data_start)
    return header, parse_crypto_header(header)  # remembered by :func:`verified`, once the signature holds


def verified(
    public_keys: Sequence[Ed25519PublicKey], header: Header, crypto: CryptoHeader, header_bytes: bytes, file_size: int
) -> None:
    """:func:`~..cipher.signature.verify_header`, skipped for bytes one of these keys has verified already.
    A header that verifies is remembered, parsed, for the next :func:`parsed` of the same bytes and size."""
    raw = [k.public_bytes(Encoding.Raw, PublicFormat.Raw) for k in public_keys]
    if any((header_bytes, r) in _verified for r in raw):
        return
    verify_header(public_keys, header, crypto.signature, header_bytes)
    if len(header_bytes) <= CACHED_HEADER_BYTES:
        _remember(_parsed, (header_bytes, file_size), (header, crypto))
        for key, r in zip(public_keys, raw, strict=True):  # remember the key that verified it
            if len(public_keys) == 1 or _verifies(key, header, crypto, header_bytes):
                _remember(_verified, (header_bytes, r), None)
                break


def _verifies(key: Ed25519PublicKey, header: Header, crypto: CryptoHeader, header_bytes: bytes) -> bool:
    try:
        verify_header([key], header, crypto.signature, header_bytes)
    except Exception:
        return False
    return True


def forget() -> None:
    """Drop everything remembered (benchmarks measure a first open with it)."""
    with _lock:
        _parsed.clear()
        _verified.clear()
