"""Key rotation: re-wrap every data key under a new master key and/or re-sign with a new signer.

The tensor data is not touched: data keys stay the same, only their wrapping and the header signature change,
so rotating the keys of a 100 GB model rewrites its header and copies its data area (kernel-side where the OS
allows). After a rewrap, the old master key no longer opens the file: nothing in it is wrapped under that
key any more. The output is written atomically, so ``dst`` may be ``src``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ..cipher.aead import wrap_key
from ..cipher.signature import sign_header
from ..config import LoadOptions
from ..errors import ConfigError, NotEncryptedError
from ..format.crypto_header import b64encode, dumps_compact
from ..format.header import frame_header, loads_strict, serialize_header
from ..format.reserved import CRYPTO_KEYS, ENCRYPTION, SIGNATURE
from ..keys.access import Access, resolve
from ..keys.jwk import MasterKey, SigningKey
from ..reading.reader import OpenedFile, open_file
from ..reading.source import FileSource
from ..writing.sinks import AtomicFile, copy_range


@dataclass(frozen=True)
class RewrapReport:
    tensors_rewrapped: int
    data_bytes_copied: int


def _new_crypto_keys(opened: OpenedFile, master: MasterKey | None, signer: SigningKey) -> str:
    keys = loads_strict(opened.header.metadata[CRYPTO_KEYS], CRYPTO_KEYS)
    for role, key in (("enc", master), ("sign", signer)):
        if key is None:
            continue
        keys[role].pop("kid", None)  # a jku (e.g. the key service) stays: the new key is meant to live there too
        if key.kid:
            keys[role]["kid"] = key.kid
    return dumps_compact(keys)


def _new_encryption(opened: OpenedFile, master: MasterKey) -> str:
    entries = loads_strict(opened.header.metadata[ENCRYPTION], ENCRYPTION)
    for name, entry in entries.items():
        wrapped, key_iv, key_tag = wrap_key(opened.crypto.cipher, master.secret, opened.data_key(name))
        entry.update(wrapped_key=b64encode(wrapped), key_iv=b64encode(key_iv), key_tag=b64encode(key_tag))
    return json.dumps(entries, separators=(",", ":"), ensure_ascii=False)


def rewrap_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    options: Access | LoadOptions,
    *,
    signing_key: SigningKey,
    master_key: MasterKey | None = None,
) -> RewrapReport:
    """Rotate keys without re-encrypting: ``options`` must open ``src`` (old master key, trusted signer)."""
    source = FileSource(src)
    try:
        unwrap = master_key is not None
        access = resolve(options)
        opened = open_file(source, access, "np", "cpu", evaluate_local_policy=False, unwrap=unwrap, whole_model=False)
        if opened is None:
            raise NotEncryptedError(f"{source.path} is a plain safetensors file: nothing to rewrap")
        crypto = opened.crypto
        if master_key is not None and master_key.alg != crypto.cipher:
            raise ConfigError(
                f"the new master key is for {master_key.alg.name}; this file's data is {crypto.cipher.name}"
            )
        metadata = dict(opened.header.metadata)
        metadata[CRYPTO_KEYS] = _new_crypto_keys(opened, master_key, signing_key)
        if master_key is not None:
            metadata[ENCRYPTION] = _new_encryption(opened, master_key)
        entries = opened.header.in_offset_order()
        metadata[SIGNATURE] = b64encode(sign_header(signing_key.private, metadata, entries))
        framed = frame_header(serialize_header(metadata, entries))
        data_len = opened.header.data_len
        with AtomicFile(dst, len(framed) + data_len) as sink:
            sink.writeat(0, memoryview(framed))
            copy_range(source.fd, sink.fd, opened.header.data_start, len(framed), data_len)
        return RewrapReport(len(crypto.encrypted) if master_key is not None else 0, data_len)
    finally:
        source.close()
