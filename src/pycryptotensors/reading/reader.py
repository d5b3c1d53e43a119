"""Opening a file: header -> validation -> trust and keys -> policy -> data keys, in that order, once.

After ``open_file`` returns, the header is authentic, the policy allowed the load, and the master key has
unwrapped one data key (each other one is unwrapped at its tensor's first read); reading a tensor then
touches only that tensor's bytes (or, for a slice, only the chunks that cover it), authenticating each
before any of it is returned.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ..cipher.aead import unwrap_keys
from ..cipher.chunks import SPAN_BYTES, ChunkRange, borrowed_output, decrypt_chunks, decrypt_whole, read_plain
from ..errors import (
    IntegrityError,
    MissingKeyError,
    NotEncryptedError,
    PolicyDeniedError,
    SignatureError,
    TensorNotFoundError,
    WrongKeyError,
)
from ..format.crypto_header import CryptoHeader, KeySlot, parse_crypto_header
from ..format.header import PREFIX_SIZE, Header, TensorEntry, parse_header, read_prefix
from ..format.reserved import plainly_unencrypted
from ..keys.access import Access
from ..keys.jwk import MasterKey, VerifyKey
from ..keys.sources import KeyRequest, KeySources, ProvidedKeys, PublisherVoucher
from ..model.check import check_model, unknown_origin_trust
from ..policy.rego import evaluate_policy, local_input
from . import headers
from .source import ByteSource, BytesSource, open_source


def read_header_bytes(source: ByteSource) -> bytes:
    n = read_prefix(source.read(0, min(PREFIX_SIZE, source.size)), source.size)
    return source.read(PREFIX_SIZE, n)


@dataclass(frozen=True)
class HeaderView:
    """A file's header, validated but not verified: for tools that need no key (inspect, policy explain)."""

    header_bytes: bytes
    header: Header
    crypto: CryptoHeader | None
    size: int = 0  # of the whole file


def read_header_view(path: str | os.PathLike[str]) -> HeaderView:
    source = open_source(path)
    try:
        header_bytes = read_header_bytes(source)
        data_start = PREFIX_SIZE + len(header_bytes)
        header = parse_header(header_bytes, data_start, source.size - data_start)
        return HeaderView(header_bytes, header, parse_crypto_header(header), source.size)
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
                    self.data_keys = self.fetch_keys()  # the keys object itself: it may unwrap lazily
                    self.fetch_keys = None
        try:
            return self.data_keys[name]  # unwrapped now if it is the first use (:class:`_DataKeys`)
        except KeyError:
            raise MissingKeyError(f"tensor {name!r} is encrypted and no data key was unwrapped for it") from None

    def entry(self, name: str) -> TensorEntry:
        try:
            return self.header.tensors[name]
        except KeyError:
            raise TensorNotFoundError(f"File does not contain tensor {name} ({self.source.path})") from None

    def tensor_bytes(self, name: str) -> np.ndarray:
        """The whole tensor as a new uint8 array the caller owns."""
        entry = self.entry(name)
        buffer, _ = self.range_bytes(name, 0, entry.nbytes)
        return buffer

    def range_bytes(self, name: str, lo: int, hi: int, *, borrow: bool = False) -> tuple[np.ndarray, int]:
        """Authenticated bytes covering ``[lo, hi)`` of a tensor, and the tensor offset they start at.

        The result is widened to whole chunks: AEAD tags and digests authenticate chunks, not bytes. With
        ``borrow``, a few encrypted chunks may come in this thread's reusable buffer (valid until its next
        call): for a caller that copies what it needs at once, as slicing does.
        """
        try:
            return self._range_bytes(name, lo, hi, borrow)
        except IntegrityError as error:  # say where: in a model directory, which shard and which tensor
            raise type(error)(f"{self.source.path}: tensor {name!r}: {error}") from None

    def _range_bytes(self, name: str, lo: int, hi: int, borrow: bool = False) -> tuple[np.ndarray, int]:
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
            out = borrowed_output(_span_bytes(chunks)) if borrow else None
            if out is None:
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
            provider = self._pending[0]
            if not isinstance(provider, PublisherVoucher):
                provided = self.provided()
                return provided.verify_key if provided is not None else None
            key = provider.vouch(self.request)
            if key is not None:
                return key
            self._pending.pop(0)  # it has nothing to say about this file
        return None

    def missing(self, what: str, slot: KeySlot, master: bool) -> MissingKeyError:
        """What is missing, said so that the reader knows what to do: the file, the key id it needs, the key ids
        tried, and, when the file names a key service, the settings that would let it be asked."""
        hint = key_hint(self.sources, slot, master, self.request.crypto.enc.jku)
        return MissingKeyError(f"{self.request.path}: no {what} {hint}")


def key_hint(sources: KeySources, slot: KeySlot, master: bool, service: str | None) -> str:
    """``with kid X (the key id this file needs; key ids tried: ...; looked at ...); <what to do>`` (key ids
    only, never key material)."""
    needed = f"with kid {slot.kid!r} (the key id this file needs; " if slot.kid else "(the file names no key id; "
    tried = sources.kids(slot, master)
    text = f"{needed}key ids tried: {', '.join(tried) if tried else 'none'}; looked at {sources.describe()})"
    jku = service or ""  # the key service a file names is its enc slot's jku
    if jku.startswith(("http://", "https://")):
        return (
            f"{text}; the file names the key service {jku}: to let it be asked, add it to [key_service].allowed "
            f"in your settings file ({SETTINGS_HINT}) and give a client token ([key_service].token_file, or "
            "PYCRYPTOTENSORS_KEY_SERVICE_TOKEN); or give the key yourself"
        )
    return f"{text}; give it in code or with --key, in CRYPTOTENSOR_KEYS, or in a key directory"


SETTINGS_HINT = "~/.config/pycryptotensors/config.toml, or the file PYCRYPTOTENSORS_CONFIG names"


def open_file(
    source: ByteSource,
    access: Access,
    framework: str,
    device: str,
    *,
    evaluate_local_policy: bool = True,
    unwrap: bool = True,
    whole_model: bool = True,
) -> OpenedFile | None:
    """Validate, verify, check policy and unwrap keys; raises before returning anything on any failure.

    Returns None for a plain safetensors file, which the caller hands to the ``safetensors`` package. Tools
    pass ``evaluate_local_policy=False`` (the publisher's own rewrap, ``verify``) or ``unwrap=False`` (checking
    a signature without holding the master key). ``whole_model=False`` skips the model-folder check
    (``rewrap`` rewriting a folder's shards one by one; ``verify DIR`` checks the folder on its own).
    """
    sources, trust = access.sources, access.trust
    # a URL, like bytes, has no local path for the trust rules: it gets the strictest of them (fail closed);
    # a lone remote file has no folder to check; a shard of a remote model folder is checked against the
    # manifest in its local cache folder (model/remote.py), by its local name
    remote, local = getattr(source, "remote", False), getattr(source, "local_path", None)
    from_file = not isinstance(source, BytesSource) and (not remote or local is not None)
    check_folder = from_file and whole_model
    trust = trust.for_file(source.path) if from_file and not remote else unknown_origin_trust(trust)
    folder_path = local or source.path
    header_bytes = read_header_bytes(source)
    crypto = header = None
    if not plainly_unencrypted(header_bytes):
        header, crypto = headers.parsed(header_bytes, source.size)  # remembered by bytes: reopening is cheap
    if crypto is None or header is None:
        if trust.require_encryption:
            raise NotEncryptedError(f"{source.path} is not an encrypted CryptoTensors file, and encryption is required")
        if check_folder:  # a plain file in a signed model folder must be the signed one (it is not)
            check_model(folder_path, header_bytes, trust, lambda k: sources.verify_keys(KeySlot("ed25519", k), trust))
        return None
    access.fail_closed()  # a broken settings file refuses encrypted files (plain ones only warned)

    keys = _Keys(sources, KeyRequest(source.path, header_bytes, crypto, access.policy_input))
    candidates = sources.verify_keys(crypto.sign, trust)
    if not candidates and (vouched := keys.vouched()) is not None:
        trust.check_signer(vouched)  # a key service vouches for the publisher; pins still apply
        candidates = [vouched]
    if not candidates:
        raise keys.missing("signature verification key", crypto.sign, master=False)
    try:
        headers.verified([key.public for key in candidates], header, crypto, header_bytes, source.size)
    except SignatureError as error:
        raise SignatureError(f"{source.path}: {error}") from None
    if check_folder:  # the whole model folder, against its signed manifest, before any key is released
        check_model(folder_path, header_bytes, trust, lambda kid: candidates)

    if evaluate_local_policy:
        decision = evaluate_policy(crypto.policy_local, local_input(framework, device, access.policy_input))
        if not decision.allowed:
            raise PolicyDeniedError(f"{source.path}: the file's local policy denied this load: {decision.reason}")

    if not unwrap:
        return OpenedFile(source, header, crypto, {})
    master = sources.master_key(crypto.enc)
    if master is not None:
        return OpenedFile(source, header, crypto, _unwrap(crypto, master, keys))
    if keys.asked or not sources.providers:  # what the providers can do is known already
        return OpenedFile(source, header, crypto, _provided_data_keys(crypto, keys))
    return OpenedFile(source, header, crypto, {}, fetch_keys=lambda: _provided_data_keys(crypto, keys))


def _unwrap(crypto: CryptoHeader, master: MasterKey, keys: _Keys) -> dict[str, bytes]:
    """The data keys under ``master``; a key that does not fit says which file, which key id it needs, which key
    id was given and which were tried."""
    given = f"the master key given (key id {master.kid!r})"
    where = f"{keys.request.path}: {given}"
    if len(master.secret) != crypto.cipher.key_size:
        raise WrongKeyError(
            f"{where} is not a {crypto.cipher.key_size}-byte key, which {crypto.cipher.name} needs; the file "
            f"needs the master key {key_hint(keys.sources, crypto.enc, True, crypto.enc.jku)}"
        )
    data_keys = _DataKeys(
        crypto,
        master.secret,
        lambda: (
            f"{where} does not unwrap this file's data keys (a wrong key, or a tampered header); the file needs "
            f"the master key {key_hint(keys.sources, crypto.enc, True, crypto.enc.jku)}"
        ),
    )
    first = next(iter(crypto.encrypted), None)
    if first is not None:
        data_keys[first]  # a wrong master key fails here, at open, not at the first read
    return data_keys


class _DataKeys(dict[str, bytes]):
    """Data keys, each unwrapped at its tensor's first use: opening a file of thousands of tensors costs one
    unwrap (the first tensor's, at open, which checks the master key) instead of thousands. Every wrapped
    key is covered by the header signature, verified before this exists."""

    def __init__(self, crypto: CryptoHeader, secret: bytes, wrong: Callable[[], str]) -> None:
        super().__init__()
        self._crypto: CryptoHeader | None = crypto
        self._secret, self._wrong = secret, wrong

    def __missing__(self, name: str) -> bytes:
        sealed = self._crypto.encrypted.get(name) if self._crypto is not None else None
        if self._crypto is None or sealed is None:
            raise KeyError(name)
        try:
            wrapped = {name: (sealed.wrapped_key, sealed.key_iv, sealed.key_tag)}
            key = unwrap_keys(self._crypto.cipher, self._secret, wrapped)[name]
        except WrongKeyError:
            raise WrongKeyError(self._wrong()) from None
        self[name] = key
        return key

    def clear(self) -> None:
        """Forget the unwrapped keys and the master key (closing the file)."""
        self._crypto, self._secret = None, b""
        super().clear()


def _provided_data_keys(crypto: CryptoHeader, keys: _Keys) -> dict[str, bytes]:
    provided = keys.provided()
    if provided is not None and provided.master_key is not None:
        return _unwrap(crypto, provided.master_key, keys)
    if provided is not None and provided.data_keys is not None:
        return _checked_data_keys(crypto, provided.data_keys)
    raise keys.missing("master key", crypto.enc, master=True)


def _checked_data_keys(crypto: CryptoHeader, data_keys: Mapping[str, bytes]) -> dict[str, bytes]:
    if set(data_keys) != set(crypto.encrypted) or any(len(k) != crypto.cipher.key_size for k in data_keys.values()):
        raise WrongKeyError("the data keys obtained do not match this file's encrypted tensors")
    return dict(data_keys)
