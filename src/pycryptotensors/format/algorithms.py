"""The AEAD algorithms as the format names them, and the sizes a header must respect.

Pure description, no cryptography: the format layer validates headers against it without importing a
cipher library; :mod:`pycryptotensors.cipher.aead` turns an :class:`Algorithm` into a working cipher.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UnsupportedError

NONCE_SIZE = 12
KEY_IV_SIZE = 12
TAG_SIZE = 16
COUNTER_LIMIT = 2**32


@dataclass(frozen=True)
class Algorithm:
    """An AEAD as the format names it; ``name`` is what writers store in ``enc.alg``."""

    name: str
    key_size: int
    jwk_name: str  # the RFC 7518 / 8439 name used in JWK "alg"
    streams: bool  # has an incremental interface in ``cryptography`` (AES-GCM yes, ChaCha20-Poly1305 no)


ALGORITHMS = {
    "aes256gcm": Algorithm("aes256gcm", 32, "A256GCM", streams=True),
    "aes128gcm": Algorithm("aes128gcm", 16, "A128GCM", streams=True),
    "chacha20poly1305": Algorithm("chacha20poly1305", 32, "C20P", streams=False),
}
_ALIASES = {a.jwk_name.lower(): a for a in ALGORITHMS.values()}


def algorithm(name: str) -> Algorithm:
    """Look up an algorithm the way the reference does: case and '-' ignored; RFC names accepted too."""
    key = name.lower().replace("-", "").replace("_", "")
    found = ALGORITHMS.get(key) or _ALIASES.get(key)
    if found is None:
        raise UnsupportedError(f"unsupported encryption algorithm {name!r}")
    return found


def counter_fits(base_iv: bytes, chunks: int) -> bool:
    """True when chunk indices 0..chunks-1 never carry out of the 32-bit counter."""
    return int.from_bytes(base_iv[8:12], "big") + chunks <= COUNTER_LIMIT
