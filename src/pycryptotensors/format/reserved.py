"""The ``__metadata__`` names the CryptoTensors layer reserves, and the sniff that tells a plain safetensors
header from one that may be ours.

Kept to the standard library on purpose: transparent mode runs the sniff in every process that opens a
safetensors file, and a plain file must not pay for importing the cipher or key machinery.
"""

from __future__ import annotations

import json
from typing import Any

CRYPTO_KEYS = "__crypto_keys__"
ENCRYPTION = "__encryption__"
POLICY = "__policy__"
SIGNATURE = "__signature__"
EXTENSIONS = "__pycryptotensors__"
REQUIRED_KEYS = (CRYPTO_KEYS, ENCRYPTION, POLICY, SIGNATURE)
RESERVED_KEYS = frozenset((*REQUIRED_KEYS, EXTENSIONS))
_RESERVED_BYTES = tuple(key.encode() for key in RESERVED_KEYS)


def plainly_unencrypted(header_bytes: bytes) -> bool:
    """A cheap, conservative sniff: is this header certainly not a CryptoTensors one?

    Plain files go to the ``safetensors`` package untouched (its rules, its speed); a header that might be
    ours gets our strict parser. A reserved name spelled out is ours. A header with ``\\u`` escapes (which
    safetensors writes for control characters) could spell one in escapes, so it is decoded: it is plain
    only when no object in it names a reserved key and no object repeats a key (a reader that keeps
    another of two duplicates could see a reserved key where we see none).
    """
    if any(key in header_bytes for key in _RESERVED_BYTES):
        return False
    return b"\\u" not in header_bytes or _decodes_plain(header_bytes)


def _decodes_plain(header_bytes: bytes) -> bool:
    suspicious = False

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal suspicious
        keys = {key for key, _ in items}
        suspicious = suspicious or len(keys) != len(items) or not RESERVED_KEYS.isdisjoint(keys)
        return dict(items)

    try:
        json.loads(header_bytes, object_pairs_hook=pairs)
    except (ValueError, RecursionError):
        return False  # not JSON we can read: the strict parser says why
    return not suspicious


def user_metadata(metadata: dict[str, str]) -> dict[str, str] | None:
    """Metadata with the reserved CryptoTensors keys hidden; None when nothing is left, like safetensors."""
    visible = {k: v for k, v in metadata.items() if k not in RESERVED_KEYS}
    return visible or None
