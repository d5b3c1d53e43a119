"""The ``__metadata__`` names the CryptoTensors layer reserves, and the sniff that tells a plain safetensors
header from one that may be ours.

Kept to the standard library on purpose: transparent mode runs the sniff in every process that opens a
safetensors file, and a plain file must not pay for importing the cipher or key machinery.
"""

from __future__ import annotations

CRYPTO_KEYS = "__crypto_keys__"
ENCRYPTION = "__encryption__"
POLICY = "__policy__"
SIGNATURE = "__signature__"
EXTENSIONS = "__pycryptotensors__"
REQUIRED_KEYS = (CRYPTO_KEYS, ENCRYPTION, POLICY, SIGNATURE)
RESERVED_KEYS = frozenset((*REQUIRED_KEYS, EXTENSIONS))
_RESERVED_BYTES = tuple(key.encode() for key in RESERVED_KEYS)


def plainly_unencrypted(header_bytes: bytes) -> bool:
    """A cheap, conservative sniff: no reserved key can hide in a header without these bytes.

    Plain files go to the ``safetensors`` package untouched (its rules, its speed); anything that might be
    a CryptoTensors header, including one spelling keys with ``\\u`` escapes, gets our strict parser.
    """
    return b"\\u" not in header_bytes and not any(key in header_bytes for key in _RESERVED_BYTES)
