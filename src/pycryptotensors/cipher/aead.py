"""AEAD algorithms, the version-2 nonce schedule, and data-key wrapping.

Version 2 derives chunk ``i``'s nonce as ``base_iv[0:8] || BE32(BE32(base_iv[8:12]) + i)``. Our writer
starts the counter at 0, so any tensor the format can describe (at most 2**32 chunks) encrypts without the
counter wrapping; the reference starts it at a random value and fails on large tensors (its weakness 8).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import AEADDecryptionContext, AEADEncryptionContext, Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.ciphers.modes import GCM

from ..errors import CipherError, CryptoTensorsError, IntegrityError, UnsupportedError, WrongKeyError

NONCE_SIZE = 12
KEY_IV_SIZE = 12
TAG_SIZE = 16
COUNTER_LIMIT = 2**32
_Cipher = AESGCM | ChaCha20Poly1305


@dataclass(frozen=True)
class Algorithm:
    """An AEAD as the format names it; ``name`` is what writers store in ``enc.alg``."""

    name: str
    key_size: int
    factory: Callable[[bytes], _Cipher]
    jwk_name: str  # the RFC 7518 / 8439 name used in JWK "alg"
    streams: bool  # has an incremental interface in ``cryptography`` (AES-GCM yes, ChaCha20-Poly1305 no)

    def new(self, key: bytes) -> _Cipher:
        return self.factory(key)

    def decryptor(self, key: bytes, nonce: bytes, tag: bytes) -> AEADDecryptionContext:
        """Incremental decryption (AES-GCM only). Its output is unauthenticated until ``finalize()``."""
        return Cipher(algorithms.AES(key), GCM(nonce, tag)).decryptor()

    def encryptor(self, key: bytes, nonce: bytes) -> AEADEncryptionContext:
        """Incremental encryption (AES-GCM only); the tag is ``.tag`` after ``finalize()``."""
        return Cipher(algorithms.AES(key), GCM(nonce)).encryptor()


ALGORITHMS = {
    "aes256gcm": Algorithm("aes256gcm", 32, AESGCM, "A256GCM", streams=True),
    "aes128gcm": Algorithm("aes128gcm", 16, AESGCM, "A128GCM", streams=True),
    "chacha20poly1305": Algorithm("chacha20poly1305", 32, ChaCha20Poly1305, "C20P", streams=False),
}
_ALIASES = {a.jwk_name.lower(): a for a in ALGORITHMS.values()}


def algorithm(name: str) -> Algorithm:
    """Look up an algorithm the way the reference does: case and '-' ignored; RFC names accepted too."""
    key = name.lower().replace("-", "").replace("_", "")
    found = ALGORITHMS.get(key) or _ALIASES.get(key)
    if found is None:
        raise UnsupportedError(f"unsupported encryption algorithm {name!r}")
    return found


@contextmanager
def cipher_errors(what: str) -> Iterator[None]:
    """Turn anything ``cryptography`` raises inside the block into our documented errors.

    A failed tag is an :class:`IntegrityError`. Anything else (a library release that refuses a call an older
    one accepted, as ``cryptography`` 51 did with overlapping buffers) is a :class:`CipherError` naming
    ``what``: never a bare library exception. The library's messages are fixed strings, never key bytes.
    """
    try:
        yield
    except CryptoTensorsError:
        raise
    except InvalidTag:
        raise IntegrityError(
            f"{what} failed authentication: the file was modified (or its data key is wrong)"
        ) from None
    except Exception as error:
        raise CipherError(
            f"{what}: the cryptography library refused the operation ({type(error).__name__}: {error}); "
            "check that the installed cryptography release is one pycryptotensors supports (see README)"
        ) from None


def counter_fits(base_iv: bytes, chunks: int) -> bool:
    """True when chunk indices 0..chunks-1 never carry out of the 32-bit counter."""
    return int.from_bytes(base_iv[8:12], "big") + chunks <= COUNTER_LIMIT


def chunk_nonce(base_iv: bytes, index: int) -> bytes:
    counter = int.from_bytes(base_iv[8:12], "big") + index
    if counter >= COUNTER_LIMIT:
        raise UnsupportedError("chunk counter overflow")  # unreachable after header validation
    return base_iv[:8] + counter.to_bytes(4, "big")


def new_base_iv() -> bytes:
    """Random 8-byte prefix, counter 0: every chunk count the format allows fits."""
    return os.urandom(8) + bytes(4)


def new_nonce() -> bytes:
    return os.urandom(NONCE_SIZE)


def new_data_key(alg: Algorithm) -> bytes:
    return os.urandom(alg.key_size)


def wrap_key(alg: Algorithm, master_key: bytes, data_key: bytes) -> tuple[bytes, bytes, bytes]:
    """Encrypt a data key under the master key: returns (wrapped_key, key_iv, key_tag)."""
    key_iv = os.urandom(KEY_IV_SIZE)
    with cipher_errors("wrapping a data key"):
        sealed = alg.new(master_key).encrypt(key_iv, data_key, None)
    return sealed[:-TAG_SIZE], key_iv, sealed[-TAG_SIZE:]


def unwrap_keys(alg: Algorithm, master_key: bytes, wrapped: dict[str, tuple[bytes, bytes, bytes]]) -> dict[str, bytes]:
    """Decrypt data keys ``{name: (wrapped_key, key_iv, key_tag)}`` under the master key."""
    try:
        with cipher_errors("unwrapping the data keys"):
            cipher = alg.new(master_key)
            return {
                name: cipher.decrypt(key_iv, wrapped_key + key_tag, None)
                for name, (wrapped_key, key_iv, key_tag) in wrapped.items()
            }
    except IntegrityError:
        raise WrongKeyError(
            "the master key does not unwrap this file's data keys (wrong key, or a tampered header)"
        ) from None
