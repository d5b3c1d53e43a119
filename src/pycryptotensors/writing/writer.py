"""Writing an encrypted, signed file in one streaming pass.

Every header field has a length known before any data is encrypted (tags and digests are fixed-size), so
the header's size is fixed first, tensor data is encrypted chunk by chunk straight to its final offset, and
the real header (tags, digests, signature) is written last into the reserved space. Extra memory is a
chunk-sized scratch buffer per worker thread, whatever the model size.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ..cipher import aead
from ..cipher.chunks import ChunkRange, Sink, encrypt_chunks, encrypt_whole, write_plain
from ..cipher.signature import sign_header
from ..config import SaveOptions
from ..errors import ConfigError, UnsupportedError
from ..format.algorithms import TAG_SIZE
from ..format.crypto_header import (
    DIGEST_ALGORITHMS,
    EXTENSION_VERSION,
    SIGNATURE_SIZE,
    b64encode,
    chunk_count,
    dumps_compact,
)
from ..format.dtypes import DType, nbytes_of
from ..format.header import PREFIX_SIZE, TensorEntry, frame_header, serialize_header
from ..format.reserved import CRYPTO_KEYS, ENCRYPTION, EXTENSIONS, POLICY, RESERVED_KEYS, SIGNATURE
from ..policy.rego import check_policy
from .sinks import AtomicFile, MemorySink


@dataclass(frozen=True)
class TensorData:
    """A tensor as raw little-endian bytes, as the front-ends hand it over."""

    name: str
    dtype: DType
    shape: tuple[int, ...]
    data: memoryview  # contiguous, format "B"


@dataclass
class _Planned:
    entry: TensorEntry
    data: memoryview
    data_key: bytes | None = None  # None: stored in plaintext
    sealing: dict[str, str] = field(default_factory=dict)  # wrapped_key, key_iv, key_tag (base64)
    iv: bytes = b""  # version 1: the tensor's nonce; version 2: the base nonce
    tags: list[bytes] = field(default_factory=list)  # AEAD tags, or digests for a plaintext tensor


def _plan(tensors: Sequence[TensorData], options: SaveOptions) -> list[_Planned]:
    names = {t.name for t in tensors}
    if options.tensors is not None and set(options.tensors) - names:
        unknown = sorted(set(options.tensors) - names)[:3]
        raise ConfigError(f"asked to encrypt tensors that are not being saved: {unknown}")
    planned, position = [], 0
    for tensor in sorted(tensors, key=lambda t: (-t.dtype.rank, t.name)):
        nbytes = len(tensor.data)
        if nbytes_of(tensor.dtype, tensor.shape) != nbytes:
            raise ConfigError(
                f"tensor {tensor.name!r}: {nbytes} bytes do not match {tensor.dtype.name}{list(tensor.shape)}"
            )
        entry = TensorEntry(tensor.name, tensor.dtype, tensor.shape, position, position + nbytes)
        position += nbytes
        item = _Planned(entry, tensor.data)
        if options.encrypts(tensor.name):
            if nbytes > options.max_tensor_bytes:
                raise UnsupportedError(f"tensor {tensor.name!r} is too large for version {options.version} chunks")
            alg = options.master_key.alg
            item.data_key = aead.new_data_key(alg)
            wrapped, key_iv, key_tag = aead.wrap_key(alg, options.master_key.secret, item.data_key)
            item.sealing = {
                "wrapped_key": b64encode(wrapped),
                "key_iv": b64encode(key_iv),
                "key_tag": b64encode(key_tag),
            }
            if options.version == "1":
                item.iv = aead.new_nonce() if nbytes else b""
                item.tags = [bytes(TAG_SIZE)] if nbytes else []
            else:
                item.iv = aead.new_base_iv()
                item.tags = [bytes(TAG_SIZE)] * chunk_count(nbytes, options.chunk_size)
        elif options.integrity:
            item.tags = [bytes(DIGEST_ALGORITHMS["sha256"])] * chunk_count(nbytes, options.chunk_size)
        planned.append(item)
    return planned


def _crypto_metadata(planned: list[_Planned], options: SaveOptions) -> dict[str, str]:
    """The reserved entries, without the signature; tags and digests as currently held in ``planned``."""
    slots: dict[str, dict[str, str]] = {
        "enc": {"alg": options.master_key.alg.name, "kty": "oct"},
        "sign": {"alg": "ed25519", "kty": "okp"},
    }
    for role, kid in (("enc", options.master_key.kid), ("sign", options.signing_key.kid)):
        if kid is not None:
            slots[role]["kid"] = kid
    if options.key_service is not None:
        slots["enc"]["jku"] = options.key_service
    if options.signer_jku is not None:
        slots["sign"]["jku"] = options.signer_jku
    keys: dict[str, object] = {**slots, "version": options.version}
    if options.version == "2":
        keys["chunk_size"] = options.chunk_size
    encryption = {}
    for item in sorted((p for p in planned if p.data_key is not None), key=lambda p: p.entry.name):
        iv_field, tag_field = ("iv", "tag") if options.version == "1" else ("base_iv", "tags")
        encryption[item.entry.name] = {
            **item.sealing,
            iv_field: b64encode(item.iv),
            tag_field: b64encode(b"".join(item.tags)),
        }
    metadata = {
        CRYPTO_KEYS: dumps_compact(keys),
        ENCRYPTION: json.dumps(encryption, separators=(",", ":"), ensure_ascii=False),
        POLICY: dumps_compact({"local": options.policy_local, "remote": options.policy_remote}),
    }
    plain = {p.entry.name: b64encode(b"".join(p.tags)) for p in planned if p.data_key is None and options.integrity}
    if plain:
        integrity = {"alg": "sha256", "chunk_size": options.chunk_size, "tensors": plain}
        metadata[EXTENSIONS] = dumps_compact({"integrity": integrity, "version": EXTENSION_VERSION})
    return metadata


def _signed_header(planned: list[_Planned], user_metadata: dict[str, str], options: SaveOptions) -> bytes:
    metadata = {**user_metadata, **_crypto_metadata(planned, options)}
    signature = sign_header(options.signing_key.private, metadata, [p.entry for p in planned])
    metadata[SIGNATURE] = b64encode(signature)
    return serialize_header(metadata, [p.entry for p in planned])


def _check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    metadata = dict(metadata or {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ConfigError("metadata must map strings to strings")
    clash = RESERVED_KEYS & set(metadata)
    if clash:
        raise ConfigError(f"metadata keys {sorted(clash)} are reserved for CryptoTensors")
    return metadata


Progress = Callable[[int], None]  # called with the byte count of each tensor written


def _write(
    sink: Sink, planned: list[_Planned], data_start: int, options: SaveOptions, progress: Progress | None
) -> None:
    alg = options.master_key.alg
    for item in planned:
        e = item.entry
        chunks = ChunkRange(
            data_start + e.start, e.nbytes, options.chunk_size, 0, chunk_count(e.nbytes, options.chunk_size)
        )
        if item.data_key is None:
            digests = write_plain(sink, chunks, item.data, options.integrity)
            if options.integrity:
                item.tags = digests
        elif options.version == "2":
            item.tags = encrypt_chunks(sink, chunks, alg, item.data_key, item.iv, item.data)
        elif e.nbytes:
            item.tags = [encrypt_whole(sink, chunks.origin, alg, item.data_key, item.iv, item.data)]
        if progress is not None:
            progress(e.nbytes)


@dataclass(frozen=True)
class _Layout:
    user_metadata: dict[str, str]
    planned: list[_Planned]
    header_size: int  # N, padded to a multiple of 8
    total: int

    @property
    def data_start(self) -> int:
        return PREFIX_SIZE + self.header_size


def _prepare(tensors: Sequence[TensorData], metadata: Mapping[str, str] | None, options: SaveOptions) -> _Layout:
    user_metadata = _check_metadata(metadata)
    for name in (t.name for t in tensors):
        if not isinstance(name, str) or name == "__metadata__":
            raise ConfigError(f"invalid tensor name {name!r}")
    check_policy(options.policy_local)
    check_policy(options.policy_remote)
    planned = _plan(tensors, options)
    placeholder = serialize_header(
        {**user_metadata, **_crypto_metadata(planned, options), SIGNATURE: b64encode(bytes(SIGNATURE_SIZE))},
        [p.entry for p in planned],
    )
    header_size = len(placeholder) + (-len(placeholder) % 8)
    return _Layout(user_metadata, planned, header_size, PREFIX_SIZE + header_size + sum(len(p.data) for p in planned))


def _write_all(sink: Sink, layout: _Layout, options: SaveOptions, progress: Progress | None = None) -> None:
    _write(sink, layout.planned, layout.data_start, options, progress)
    # Cannot outgrow the reservation: every field has the placeholder's length.
    sink.writeat(
        0, memoryview(frame_header(_signed_header(layout.planned, layout.user_metadata, options), layout.header_size))
    )


def encrypt_file(
    tensors: Sequence[TensorData],
    path: str | os.PathLike[str],
    metadata: Mapping[str, str] | None,
    options: SaveOptions,
    progress: Progress | None = None,
) -> None:
    """Write an encrypted file atomically: a temporary file beside ``path``, renamed on success."""
    layout = _prepare(tensors, metadata, options)
    with AtomicFile(path, layout.total) as sink:
        _write_all(sink, layout, options, progress)


def encrypt_bytes(tensors: Sequence[TensorData], metadata: Mapping[str, str] | None, options: SaveOptions) -> bytes:
    layout = _prepare(tensors, metadata, options)
    sink = MemorySink(layout.total)
    _write_all(sink, layout, options)
    return bytes(sink.buffer)
