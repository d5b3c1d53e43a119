"""The CryptoTensors layer: reserved ``__metadata__`` entries, parsed into typed, validated records.

A file is a CryptoTensors file when its metadata holds any reserved key. Then all of ``__crypto_keys__``,
``__encryption__``, ``__policy__`` and ``__signature__`` must be present and well-formed: a header with some
of them stripped is refused rather than read as plain safetensors. Our own extensions live under
``__pycryptotensors__`` (see docs/FORMAT.md), which the reference's signature covers and otherwise ignores.
"""

from __future__ import annotations

import binascii
import json
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec

from ..errors import FormatError, UnsupportedError
from .algorithms import COUNTER_LIMIT, KEY_IV_SIZE, NONCE_SIZE, TAG_SIZE, Algorithm, algorithm, counter_fits
from .header import Header, TensorEntry, loads_strict, loads_unchecked, no_duplicates
from .reserved import CRYPTO_KEYS, ENCRYPTION, EXTENSIONS, POLICY, REQUIRED_KEYS, RESERVED_KEYS, SIGNATURE

EXTENSION_VERSION = 1
DEFAULT_CHUNK_SIZE = 2 * 1024 * 1024  # what a version-2 header without chunk_size means
DEFAULT_POLICY = "package model\nallow = true"
SIGNATURE_SIZE = 64
DIGEST_ALGORITHMS = {"sha256": 32}
_KEY_MATERIAL_FIELDS = frozenset({"k", "d", "x", "p", "q", "dp", "dq", "qi"})


@dataclass(frozen=True)
class KeySlot:
    """Which key does a job (``enc`` wraps data keys, ``sign`` signs the header): no key material."""

    alg: str
    kid: str | None = None
    jku: str | None = None


def _exactly(size: int) -> msgspec.Meta:
    return msgspec.Meta(min_length=size, max_length=size)


class EncryptedTensor(msgspec.Struct, frozen=True, gc=False, forbid_unknown_fields=True, rename={"iv": "base_iv"}):
    """A tensor's wrapped data key and its AEAD parameters.

    ``iv`` is the whole-tensor nonce in version 1 and the base nonce in version 2; ``tags`` is the
    concatenated 16-byte tags, one per chunk (version 2) or the single tag (version 1; none for an empty
    version-1 tensor). A ``msgspec`` struct: a version-2 ``__encryption__`` of thousands of entries is decoded
    straight into these, base64 and the fixed lengths checked in C (in JSON, ``iv`` is ``base_iv``).
    """

    wrapped_key: bytes
    key_iv: Annotated[bytes, _exactly(KEY_IV_SIZE)]
    key_tag: Annotated[bytes, _exactly(TAG_SIZE)]
    iv: Annotated[bytes, _exactly(NONCE_SIZE)]
    tags: bytes


_V2_DECODER = msgspec.json.Decoder(dict[str, EncryptedTensor])


@dataclass(frozen=True)
class Integrity:
    """Our extension: signed per-chunk digests of the tensors stored in plaintext."""

    alg: str
    chunk_size: int
    digests: dict[str, bytes]  # concatenated per-chunk digests


@dataclass(frozen=True)
class CryptoHeader:
    version: str
    chunk_size: int
    cipher: Algorithm
    enc: KeySlot
    sign: KeySlot
    encrypted: dict[str, EncryptedTensor]
    policy_local: str
    policy_remote: str
    signature: bytes
    integrity: Integrity | None

    def is_encrypted(self, name: str) -> bool:
        """Whether the tensor ``name`` is encrypted in this file."""
        return name in self.encrypted


def chunk_count(nbytes: int, chunk_size: int) -> int:
    """Chunks a tensor is cut into; an empty tensor still has one (empty) chunk with its own tag."""
    return max(1, -(-nbytes // chunk_size))


def b64decode(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise FormatError(f"{what} must be a base64 string")
    try:
        return binascii.a2b_base64(value, strict_mode=True)
    except (binascii.Error, ValueError):
        raise FormatError(f"{what} is not valid base64") from None


def b64encode(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def _json_field(metadata: dict[str, str], key: str) -> dict[str, Any]:
    value = loads_strict(metadata[key], key)
    if not isinstance(value, dict):
        raise FormatError(f"{key} must hold a JSON object")
    return value


def _valid_text(value: str, what: str) -> str:
    """Refuse strings holding lone surrogates (a JSON escape like "\\ud800"): they are not Unicode text."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise FormatError(f"{what} is not valid Unicode text") from None
    return value


def _optional_str(obj: dict[str, Any], field: str, what: str) -> str | None:
    value = obj.get(field)
    if value is not None and not isinstance(value, str):
        raise FormatError(f"{what}.{field} must be a string")
    return value if value is None else _valid_text(value, f"{what}.{field}")


def _slot(keys: dict[str, Any], role: str) -> KeySlot:
    slot = keys.get(role)
    if not isinstance(slot, dict):
        raise FormatError(f"{CRYPTO_KEYS}.{role} must be an object")
    if _KEY_MATERIAL_FIELDS & set(slot):
        raise FormatError(f"{CRYPTO_KEYS}.{role} carries key material; refusing the file")
    alg = _optional_str(slot, "alg", role)
    if alg is None:
        raise FormatError(f"{CRYPTO_KEYS}.{role}.alg must be a string")
    return KeySlot(alg, _optional_str(slot, "kid", role), _optional_str(slot, "jku", role))


_V1_FIELDS = ("wrapped_key", "key_iv", "key_tag", "iv", "tag")
_V2_FIELDS = ("wrapped_key", "key_iv", "key_tag", "base_iv", "tags")


def _encrypted_entry(name: str, raw: Any, entry: TensorEntry, header: _Partial) -> EncryptedTensor:
    fields = _V1_FIELDS if header.version == "1" else _V2_FIELDS
    what = f"{ENCRYPTION}[{name!r}]"
    if not isinstance(raw, dict) or len(raw) != 5 or not all(f in raw for f in fields):
        raise FormatError(f"{what} must have exactly the fields {', '.join(fields)}")
    wrapped, key_iv, key_tag, iv, tags = [b64decode(raw[f], what) for f in fields]
    if len(wrapped) != header.cipher.key_size or len(key_iv) != KEY_IV_SIZE or len(key_tag) != TAG_SIZE:
        raise FormatError(f"{what}: wrapped key, key_iv or key_tag has the wrong length")
    if header.version == "1":
        if entry.nbytes == 0 and iv == b"" and tags == b"":
            return EncryptedTensor(wrapped, key_iv, key_tag, b"", b"")
        if len(iv) != NONCE_SIZE or len(tags) != TAG_SIZE:
            raise FormatError(f"{what}: iv must be {NONCE_SIZE} bytes and tag {TAG_SIZE}")
        return EncryptedTensor(wrapped, key_iv, key_tag, iv, tags)
    chunks = chunk_count(entry.nbytes, header.chunk_size)
    if len(iv) != NONCE_SIZE:
        raise FormatError(f"{what}: base_iv must be {NONCE_SIZE} bytes")
    if len(tags) != chunks * TAG_SIZE:
        raise FormatError(f"{what}: {len(tags) // TAG_SIZE} tags for {chunks} chunks")
    if not counter_fits(iv, chunks):
        raise FormatError(f"{what}: {chunks} chunks overflow the 32-bit nonce counter of base_iv")
    return EncryptedTensor(wrapped, key_iv, key_tag, iv, tags)


def _encrypted_entries(text: str, header: Header, partial: _Partial) -> dict[str, EncryptedTensor]:
    """Every ``__encryption__`` entry, validated. A well-formed version-2 text (the usual case, at every load
    of a file of thousands of tensors) is decoded in one pass into :class:`EncryptedTensor` structs, which
    checks the fields, the base64 and the fixed lengths; then one tight loop checks what depends on the
    tensor (the tag count, the nonce counter) and the key size. Anything it refuses is parsed again, the
    slow way, by :func:`_encrypted_entry`, which names the defect."""
    if partial.version == "2":
        try:
            result = _V2_DECODER.decode(text)
        except (msgspec.DecodeError, RecursionError):
            pass  # the slow path below says what is wrong
        else:
            if _fits(result, header.tensors, partial):
                return result
    encryption = loads_unchecked(text, ENCRYPTION)
    if not isinstance(encryption, dict):
        raise FormatError(f"{ENCRYPTION} must hold a JSON object")
    _only_known_tensors(encryption, header)
    return {name: _encrypted_entry(name, raw, header.tensors[name], partial) for name, raw in encryption.items()}


def _fits(encrypted: dict[str, EncryptedTensor], tensors: dict[str, TensorEntry], partial: _Partial) -> bool:
    """The checks of decoded version-2 entries that depend on their tensor and the cipher."""
    if not tensors.keys() >= encrypted.keys():
        return False
    key_size, chunk_size, limit, from_bytes = partial.cipher.key_size, partial.chunk_size, COUNTER_LIMIT, int.from_bytes
    for name, sealed in encrypted.items():
        entry = tensors[name]
        chunks = -(-(entry.end - entry.start) // chunk_size) or 1
        if (
            len(sealed.tags) != chunks * TAG_SIZE
            or len(sealed.wrapped_key) != key_size
            or from_bytes(sealed.iv[8:], "big") + chunks > limit
        ):
            return False
    return True


def _only_known_tensors(encryption: dict[str, Any], header: Header) -> None:
    unknown = set(encryption) - set(header.tensors)
    if unknown:
        raise FormatError(f"{ENCRYPTION} names tensors the file does not hold: {sorted(unknown)[:3]}")


@dataclass(frozen=True)
class _Partial:
    version: str
    chunk_size: int
    cipher: Algorithm


def _integrity(raw: Any, header: Header, encrypted: dict[str, EncryptedTensor]) -> Integrity:
    if not isinstance(raw, dict) or set(raw) != {"alg", "chunk_size", "tensors"}:
        raise FormatError(f"{EXTENSIONS}.integrity must have exactly the fields alg, chunk_size, tensors")
    alg, chunk_size, tensors = raw["alg"], raw["chunk_size"], raw["tensors"]
    if not isinstance(alg, str) or alg not in DIGEST_ALGORITHMS:
        raise UnsupportedError(f"{EXTENSIONS}.integrity: unknown digest algorithm {alg!r}")
    if not (isinstance(chunk_size, int) and not isinstance(chunk_size, bool) and chunk_size > 0):
        raise FormatError(f"{EXTENSIONS}.integrity.chunk_size must be a positive integer")
    if not isinstance(tensors, dict):
        raise FormatError(f"{EXTENSIONS}.integrity.tensors must be an object")
    plain = set(header.tensors) - set(encrypted)
    if set(tensors) != plain:
        raise FormatError(f"{EXTENSIONS}.integrity must list exactly the unencrypted tensors")
    size = DIGEST_ALGORITHMS[alg]
    digests = {}
    for name, value in tensors.items():
        blob = b64decode(value, f"{EXTENSIONS}.integrity[{name!r}]")
        if len(blob) != chunk_count(header.tensors[name].nbytes, chunk_size) * size:
            raise FormatError(f"{EXTENSIONS}.integrity[{name!r}]: digest count does not match the chunk count")
        digests[name] = blob
    return Integrity(alg, chunk_size, digests)


def parse_crypto_header(header: Header) -> CryptoHeader | None:
    """The crypto layer of a validated header, or None for a plain safetensors file."""
    metadata = header.metadata
    if not RESERVED_KEYS & set(metadata):
        return None
    missing = [k for k in REQUIRED_KEYS if k not in metadata]
    if missing:
        raise FormatError(f"CryptoTensors header is incomplete: {', '.join(missing)} missing")

    keys = _json_field(metadata, CRYPTO_KEYS)
    version = keys.get("version")
    if version not in ("1", "2"):
        raise UnsupportedError(f"unsupported CryptoTensors version {version!r}")
    chunk_size = keys.get("chunk_size", DEFAULT_CHUNK_SIZE) if version == "2" else DEFAULT_CHUNK_SIZE
    if not (isinstance(chunk_size, int) and not isinstance(chunk_size, bool) and chunk_size > 0):
        raise FormatError(f"{CRYPTO_KEYS}.chunk_size must be a positive integer")
    enc, sign = _slot(keys, "enc"), _slot(keys, "sign")
    cipher = algorithm(enc.alg)
    if sign.alg.lower().replace("-", "") not in ("ed25519", "eddsa"):
        raise UnsupportedError(f"unsupported signature algorithm {sign.alg!r}")
    partial = _Partial(version, chunk_size, cipher)

    encrypted = _encrypted_entries(metadata[ENCRYPTION], header, partial)
    # Every entry holds five members, each a base64 string (no colon): only the names can hold one.
    no_duplicates(metadata[ENCRYPTION], ENCRYPTION, 6 * len(encrypted), encrypted)

    policy = _json_field(metadata, POLICY)
    local, remote = policy.get("local", DEFAULT_POLICY), policy.get("remote", DEFAULT_POLICY)
    if not isinstance(local, str) or not isinstance(remote, str) or set(policy) - {"local", "remote"}:
        raise FormatError(f"{POLICY} must hold the strings local and remote, nothing else")
    _valid_text(local + remote, POLICY)

    signature = b64decode(metadata[SIGNATURE], SIGNATURE)
    if len(signature) != SIGNATURE_SIZE:
        raise FormatError(f"{SIGNATURE} must be {SIGNATURE_SIZE} bytes")

    integrity = None
    if EXTENSIONS in metadata:
        extensions = _json_field(metadata, EXTENSIONS)
        if extensions.get("version") != EXTENSION_VERSION or set(extensions) - {"version", "integrity"}:
            raise UnsupportedError(f"{EXTENSIONS}: unsupported version or unknown members (this reader knows v1)")
        if "integrity" in extensions:
            integrity = _integrity(extensions["integrity"], header, encrypted)
    return CryptoHeader(version, chunk_size, cipher, enc, sign, encrypted, local, remote, signature, integrity)


def dumps_compact(obj: Any) -> str:
    """The JSON form used inside reserved metadata values: compact, keys sorted, like the reference."""
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
