"""AEAD algorithms, the version-2 nonce schedule, and data-key wrapping.

Version 2 derives chunk ``i``'s nonce as ``base_iv[0:8] || BE32(BE32(base_iv[8:12]) + i)``. Our writer
starts the counter at 0, so any tensor the format can describe (at most 2**32 chunks) encrypts without the
counter wrapping; the reference starts it at a random value and fails on large tensors (its weakness 8).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import AEADDecryptionContext, AEADEncryptionContext, Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.ciphers.modes import GCM

from ..errors import CipherError, CryptoTensorsError, IntegrityError, UnsupportedError, WrongKeyError
from ..format.algorithms import (  # noqa: F401 - re-exported: the cipher layer's view of the algorithms
    ALGORITHMS,
    COUNTER_LIMIT,
    KEY_IV_SIZE,
    NONCE_SIZE,
    TAG_SIZE,
    Algorithm,
    algorithm,
    counter_fits,
)

_PRIMITIVES: dict[str, Callable[[bytes], AESGCM | ChaCha20Poly1305]] = {
    "aes256gcm": AESGCM,
    "aes128gcm": AESGCM,
    "chacha20poly1305": ChaCha20Poly1305,
}


def new_cipher(alg: Algorithm, key: bytes) -> AESGCM | ChaCha20Poly1305:
    """``cryptography``'s one-shot AEAD for ``alg`` under ``key``."""
    return _PRIMITIVES[alg.name](key)


def gcm_decryptor(key: bytes, nonce: bytes, tag: bytes) -> AEADDecryptionContext:
    """Incremental AES-GCM decryption. Its output is unauthenticated until ``finalize()``."""
    return Cipher(algorithms.AES(key), GCM(nonce, tag)).decryptor()


def gcm_encryptor(key: bytes, nonce: bytes) -> AEADEncryptionContext:
    """Incremental AES-GCM encryption; the tag is ``.tag`` after ``finalize()``."""
    return Cipher(algorithms.AES(key), GCM(nonce)).encryptor()


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
        sealed = new_cipher(alg, master_key).encrypt(key_iv, data_key, None)
    return sealed[:-TAG_SIZE], key_iv, sealed[-TAG_SIZE:]


def unwrap_keys(alg: Algorithm, master_key: bytes, wrapped: dict[str, tuple[bytes, bytes, bytes]]) -> dict[str, bytes]:
    """Decrypt data keys ``{name: (wrapped_key, key_iv, key_tag)}`` under the master key."""
    try:
        with cipher_errors("unwrapping the data keys"):
            cipher = new_cipher(alg, master_key)
            return {
                name: cipher.decrypt(key_iv, wrapped_key + key_tag, None)
                for name, (wrapped_key, key_iv, key_tag) in wrapped.items()
            }
    except IntegrityError:
        raise WrongKeyError(
            "the master key does not unwrap this file's data keys (wrong key, or a tampered header)"
        ) from None
