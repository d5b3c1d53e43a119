"""Opening a file: header -> validation -> trust and keys -> policy -> data keys, in that order, once.

After ``open_file`` returns, the header is authentic, the policy allowed the load, and every data key is
unwrapped in memory; reading a tensor then touches only that tensor's bytes (or, for a slice, only the
chunks that cover it), authenticating each before any of it is returned.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ..cipher.aead import unwrap_keys
from ..cipher.chunks import SPAN_BYTES, ChunkRange, decrypt_chunks, decrypt_whole, read_plain
from ..config import LoadOptions
from ..errors import (
    IntegrityError,
    MissingKeyError,
    NotEncryptedError,
    PolicyDeniedError,
    SignatureError,
    WrongKeyError,
)
from ..format.crypto_header import CryptoHeader, parse_crypto_header
from ..format.header import PREFIX_SIZE, Header, TensorEntry, parse_header, read_prefix
from ..format.reserved import plainly_unencrypted
from ..format.signing import verify_header
from ..keys.jwk import MasterKey, VerifyKey
from ..keys.sources import KeyRequest, KeySources, ProvidedKeys
from ..policy.rego import evaluate_policy, local_input
from .source import ByteSource, BytesSource, FileSource


def read_header_bytes(source: ByteSource) -> bytes:
    n = read_prefix(source.read(0, min(PREFIX_SIZE, source.size)), source.size)
    return source.read(PREFIX_SIZE, n)


@dataclass(frozen=True)
class HeaderView:
    """A file's header, validated but not verified: for tools that need no key (inspect, policy explain)."""

    header_bytes: bytes
    header: Header
    crypto: CryptoHeader | None


def read_header_view(path: str | os.PathLike[str]) -> HeaderView:
    source = FileSource(path)
    try:
        header_bytes = read_header_bytes(source)
        data_start = PREFIX_SIZE + len(header_bytes)
        header = parse_header(header_bytes, data_start, source.size - data_start)
        return HeaderView(header_bytes, header, parse_crypto_header(header))
    finally:
        source.close()


@dataclass
class OpenedFile:
    source: ByteSource
    header: Header
    crypto: CryptoHeader
    data_keys: dict[str, bytes]
    # A deferred key release (a key service): asked once, at the first encrypted read, so that opening a file
    # only to read its metadata (as transformers does) costs no release and no audit record.
    fetch_keys: Callable[[], dict[str, bytes]] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def data_key(self, name: str) -> bytes:
        if name not in self.data_keys and self.fetch_keys is not None:
            with self._lock:
                if self.fetch_keys is not None:
                    self.data_keys.update(self.fetch_keys())
                    self.fetch_keys = None
        key = self.data_keys.get(name)
        if key is None:
            raise MissingKeyError(f"tensor {name!r} is encrypted and no data key was unwrapped for it")
        return key

    def entry(self, name: str) -> TensorEntry:
        try:
            return self.header.tensors[name]
        except KeyError:
            raise KeyError(f"no tensor named {name!r} in {self.source.path}") from None

    def tensor_bytes(self, name: str) -> np.ndarray:
        """The whole tensor as a new uint8 array the caller owns."""
        entry = self.entry(name)
        buffer, _ = self.range_bytes(name, 0, entry.nbytes)
        return buffer

    def range_bytes(self, name: str, lo: int, hi: int) -> tuple[np.ndarray, int]:
        """Authenticated bytes covering ``[lo, hi)`` of a tensor, and the tensor offset they start at.

        The result is widened to whole chunks: AEAD tags and digests authenticate chunks, not bytes.
        """
        try:
            return self._range_bytes(name, lo, hi)
        except IntegrityError as error:  # say where: in a model directory, which shard and which tensor
            raise type(error)(f"{self.source.path}: tensor {name!r}: {error}") from None

    def _range_bytes(self, name: str, lo: int, hi: int) -> tuple[np.ndarray, int]:
        entry = self.entry(name)
        origin = self.header.data_start + entry.start
        crypto = self.crypto
        if name in crypto.encrypted:
            sealed = crypto.encrypted[name]
            key = self.data_key(name)
            if crypto.version == "1":
                if entry.nbytes == 0:
                    return np.empty(0, dtype=np.uint8), 0
                return decrypt_whole(self.source, origin, entry.nbytes, crypto.cipher, key, sealed.iv, sealed.tags), 0
            chunks = _covering(origin, entry.nbytes, crypto.chunk_size, lo, hi)
            out = np.empty(_span_bytes(chunks), dtype=np.uint8)
            decrypt_chunks(self.source, chunks, crypto.cipher, key, sealed.iv, sealed.tags, out)
            return out, chunks.byte_lo
        if crypto.integrity is not None:
            chunks = _covering(origin, entry.nbytes, crypto.integrity.chunk_size, lo, hi)
            out = np.empty(_span_bytes(chunks), dtype=np.uint8)
            read_plain(self.source, chunks, out, crypto.integrity.digests[name])
            return out, chunks.byte_lo
        out = np.empty(hi - lo, dtype=np.uint8)
        exact = ChunkRange(origin + lo, hi - lo, SPAN_BYTES, 0, max(1, -(-(hi - lo) // SPAN_BYTES)))
        read_plain(self.source, exact, out, None)
        return out, lo

    def close(self) -> None:
        self.data_keys.clear()
        self.fetch_keys = None
        self.source.close()


def _covering(origin: int, nbytes: int, chunk_size: int, lo: int, hi: int) -> ChunkRange:
    first = lo // chunk_size
    stop = max(first + 1, -(-hi // chunk_size))
    return ChunkRange(origin, nbytes, chunk_size, first, stop)


def _span_bytes(chunks: ChunkRange) -> int:
    return chunks.bounds(chunks.stop - 1)[1] - chunks.byte_lo


class _Keys:
    """The keys one open needs, from the (possibly remote) providers: asked in order, each at most once for
    keys, and only if needed. A provider that fails (a service unreachable) is asked again next time."""

    def __init__(self, sources: KeySources, request: KeyRequest) -> None:
        self.sources, self.request = sources, request
        self._pending = list(sources.providers)  # not yet asked for keys, in order
        self._provided: ProvidedKeys | None = None
        self.asked = False

    def provided(self) -> ProvidedKeys | None:
        """The first answer of the providers not yet asked."""
        while not self.asked:
            if not self._pending:
                self.asked = True
                break
            answer = self._pending[0].provide(self.request)  # may raise: then this provider stays pending
            self._pending.pop(0)
            if answer is not None:
                self._provided, self.asked = answer, True
        return self._provided

    def vouched(self) -> VerifyKey | None:
        """The publisher's key, walking the providers in order. One that can vouch is asked for that key
        alone, and for its keys only at the first encrypted read; one that cannot is asked for everything."""
        while self._pending:
            vouch = getattr(self._pending[0], "vouch", None)
            if vouch is None:
                provided = self.provided()
                return provided.verify_key if provided is not None else None
            key = vouch(self.request)
            if key is not None:
                return key
            self._pending.pop(0)  # it has nothing to say about this file
        return None

    def missing(self, what: str, slot_kid: str | None) -> MissingKeyError:
        named = f" with kid {slot_kid!r}" if slot_kid else ""
        return MissingKeyError(
            f"no {what}{named} for {self.request.path} (looked at {self.sources.describe()}; "
            "give it in code or with --key, in CRYPTOTENSOR_KEYS, or in a key directory)"
        )


def open_file(
    source: ByteSource,
    options: LoadOptions,
    framework: str,
    device: str,
    *,
    evaluate_local_policy: bool = True,
    unwrap: bool = True,
) -> OpenedFile | None:
    """Validate, verify, check policy and unwrap keys; raises before returning anything on any failure.

    Returns None for a plain safetensors file, which the caller hands to the ``safetensors`` package. Tools
    pass ``evaluate_local_policy=False`` (the publisher's own rewrap, ``verify``) or ``unwrap=False`` (checking
    a signature without holding the master key).
    """
    sources, trust = options.resolve()
    trust = trust.for_file(None if isinstance(source, BytesSource) else source.path)
    header_bytes = read_header_bytes(source)
    crypto = header = None
    if not plainly_unencrypted(header_bytes):
        data_start = PREFIX_SIZE + len(header_bytes)
        header = parse_header(header_bytes, data_start, source.size - data_start)
        crypto = parse_crypto_header(header)
    if crypto is None or header is None:
        if trust.require_encryption:
            raise NotEncryptedError(f"{source.path} is not an encrypted CryptoTensors file, and encryption is required")
        return None

    keys = _Keys(sources, KeyRequest(source.path, header_bytes, crypto, options.policy_input))
    candidates = sources.verify_keys(crypto.sign, trust)
    if not candidates and (vouched := keys.vouched()) is not None:
        trust.check_signer(vouched)  # a key service vouches for the publisher; pins still apply
        candidates = [vouched]
    if not candidates:
        raise keys.missing("signature verification key", crypto.sign.kid)
    try:
        verify_header([key.public for key in candidates], header, crypto.signature)
    except SignatureError as error:
        raise SignatureError(f"{source.path}: {error}") from None

    if evaluate_local_policy:
        decision = evaluate_policy(crypto.policy_local, local_input(framework, device, options.policy_input))
        if not decision.allowed:
            raise PolicyDeniedError(f"{source.path}: the file's local policy denied this load: {decision.reason}")

    if not unwrap:
        return OpenedFile(source, header, crypto, {})
    master = sources.master_key(crypto.enc)
    if master is not None:
        return OpenedFile(source, header, crypto, _unwrap(crypto, master))
    if keys.asked or not sources.providers:  # what the providers can do is known already
        return OpenedFile(source, header, crypto, _provided_data_keys(crypto, keys))
    return OpenedFile(source, header, crypto, {}, fetch_keys=lambda: _provided_data_keys(crypto, keys))


def _unwrap(crypto: CryptoHeader, master: MasterKey) -> dict[str, bytes]:
    if len(master.secret) != crypto.cipher.key_size:
        raise WrongKeyError(
            f"the file uses {crypto.cipher.name}, which needs a {crypto.cipher.key_size}-byte master key"
        )
    wrapped = {name: (s.wrapped_key, s.key_iv, s.key_tag) for name, s in crypto.encrypted.items()}
    return _checked_data_keys(crypto, unwrap_keys(crypto.cipher, master.secret, wrapped))


def _provided_data_keys(crypto: CryptoHeader, keys: _Keys) -> dict[str, bytes]:
    provided = keys.provided()
    if provided is not None and provided.master_key is not None:
        return _unwrap(crypto, provided.master_key)
    if provided is not None and provided.data_keys is not None:
        return _checked_data_keys(crypto, provided.data_keys)
    raise keys.missing("master key", crypto.enc.kid)


def _checked_data_keys(crypto: CryptoHeader, data_keys: Mapping[str, bytes]) -> dict[str, bytes]:
    if set(data_keys) != set(crypto.encrypted) or any(len(k) != crypto.cipher.key_size for k in data_keys.values()):
        raise WrongKeyError("the data keys obtained do not match this file's encrypted tensors")
    return dict(data_keys)
