"""The signed model manifest (``model.sig``): every file of a model folder, bound to its encrypted shards.

The file is an OpenSSF model-signing signature (a Sigstore bundle holding a DSSE envelope around an in-toto
statement, predicate ``https://model_signing/signature/v1.0``): ``resources`` lists every file of the folder
with its SHA-256, exactly as ``model_signing`` serializes a folder. Our additions live under the predicate's
``cryptotensors`` field, which v1.0 verifiers ignore: each file's size, and for each shard the SHA-256 of its
signed header (which holds its ``__signature__``) and its tensor names. A consumer therefore checks shards by
their header (one small read; the shard's own tags and digests cover its data) instead of hashing gigabytes.
The DSSE signature is Ed25519 by the publisher's signing key. Specification: docs/FORMAT.md.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import stat
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from ..errors import FormatError, ManifestError, SignatureError
from ..format.header import MAX_HEADER_SIZE, PREFIX_SIZE
from .folder import IGNORED_DIRS, MANIFEST_NAME, SHARD_SUFFIX, is_weight_file, list_files

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
EXTENSION = "cryptotensors"
EXTENSION_VERSION = 1
MAX_MANIFEST_SIZE = 64 * 1024 * 1024
_BLOCK = 1024 * 1024


@dataclass(frozen=True)
class ShardRecord:
    header_sha256: str  # hex SHA-256 of the shard's JSON header (signature included)
    tensors: tuple[str, ...]


@dataclass(frozen=True)
class Manifest:
    """A verified manifest: what the publisher signed."""

    name: str
    files: dict[str, tuple[int, str]]  # relative path -> (size, hex SHA-256)
    shards: dict[str, ShardRecord]  # relative path of each *.safetensors shard
    signer_kid: str | None


# ------------------------------------------------------------------------------------------------ helpers


def pae(payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: what the signature is over."""
    return b"DSSEv1 %d %s %d " % (len(PAYLOAD_TYPE), PAYLOAD_TYPE.encode(), len(payload)) + payload


def key_hint(public: Any) -> str:
    """The bundle's public-key hint, as model_signing computes it: SHA-256 of the PEM SubjectPublicKeyInfo."""
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def read_manifest_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of ``model.sig``, refused unless it is a regular file within :data:`MAX_MANIFEST_SIZE`: a FIFO
    or a device planted there must not hang or exhaust the loading process."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise ManifestError(f"cannot read {path}: {error.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ManifestError(f"{path} is not a regular file (replace it with the publisher's model.sig)")
        if st.st_size > MAX_MANIFEST_SIZE:
            raise ManifestError(f"{path} is larger than {MAX_MANIFEST_SIZE} bytes")
        return f.read(MAX_MANIFEST_SIZE + 1)


def is_regular(path: str | os.PathLike[str]) -> bool:
    """A regular file, or a link to one (a FIFO or device in a model folder must not be read or hashed)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def read_shard_header(path: Path) -> bytes:
    """The JSON header of a safetensors file (whatever it holds), bounded; FormatError if it is not one."""
    with open(path, "rb") as f:
        prefix = f.read(PREFIX_SIZE)
        if len(prefix) < PREFIX_SIZE:
            raise FormatError(f"{path}: too small to be a safetensors file")
        (n,) = struct.unpack("<Q", prefix)
        if n > MAX_HEADER_SIZE:
            raise FormatError(f"{path}: header size {n} is over the limit")
        header = f.read(n)
    if len(header) != n:
        raise FormatError(f"{path}: truncated header")
    return header


def header_digest(header: bytes) -> str:
    return hashlib.sha256(header).hexdigest()


def safe_relative(name: Any) -> str:
    """A manifest or index path: relative, POSIX, inside the folder (no '..', no absolute path)."""
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name:
        raise ManifestError(f"invalid path {name!r} in the model folder's manifest or index")
    parts = name.split("/")
    if name.startswith("/") or any(p in ("..", ".", "") for p in parts) or ":" in parts[0]:
        raise ManifestError(f"path {name!r} leaves the model folder")
    return name


def index_shards(root: Path, index_name: str) -> dict[str, str]:
    """tensor -> shard of a ``*.index.json`` (the shard relative to the folder), every entry inside the folder."""
    try:
        index = json.loads((root / index_name).read_bytes())
        weight_map = index["weight_map"]
        assert isinstance(weight_map, dict)
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        raise ManifestError(f"{root / index_name}: not a valid shard index (a JSON object with weight_map)") from None
    base = PurePosixPath(index_name).parent
    shards = {}
    for tensor, shard in weight_map.items():
        safe_relative(shard)
        shards[tensor] = safe_relative((base / shard).as_posix())
    return shards


# ------------------------------------------------------------------------------------------------- build


def build_statement(root: Path) -> dict[str, Any]:
    """The in-toto statement of a folder: every file's digest, every shard's header digest and tensors."""
    from ..format.header import parse_header

    names = list_files(root)
    if not names:
        raise ManifestError(f"{root}: the model folder holds no file to sign")
    resources, sizes, shards = [], {}, {}
    for name in names:
        path = root / name
        if not is_regular(path):
            raise ManifestError(f"{path} is not a regular file: remove it before signing the folder")
        resources.append({"name": name, "algorithm": "sha256", "digest": file_sha256(path)})
        sizes[name] = path.stat().st_size
        if name.endswith(SHARD_SUFFIX):
            header = read_shard_header(path)
            data_start = PREFIX_SIZE + len(header)
            parsed = parse_header(header, data_start, sizes[name] - data_start)
            shards[name] = {
                "header_sha256": header_digest(header),
                "tensors": [e.name for e in parsed.in_offset_order()],
            }
    for name in names:
        if name.endswith(".index.json"):
            for tensor, shard in index_shards(root, name).items():
                if shard not in shards or tensor not in shards[shard]["tensors"]:
                    raise ManifestError(f"{root / name}: tensor {tensor!r} is mapped to {shard!r}, which lacks it")
    root_hash = hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in resources)).hexdigest()
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": root.resolve().name, "digest": {"sha256": root_hash}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "serialization": {
                "method": "files",
                "hash_type": "sha256",
                "allow_symlinks": True,
                "ignore_paths": sorted({MANIFEST_NAME, *IGNORED_DIRS}),
            },
            "resources": resources,
            EXTENSION: {"version": EXTENSION_VERSION, "sizes": sizes, "shards": shards},
        },
    }


def sign_statement(statement: dict[str, Any], signing_key: Any) -> bytes:
    """The bundle (``model.sig`` contents) of a statement signed by the publisher's Ed25519 key."""
    payload = json.dumps(statement, indent=2, sort_keys=True, ensure_ascii=False).encode("utf-8")
    signature = signing_key.private.sign(pae(payload))
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": key_hint(signing_key.private.public_key())}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode("ascii"),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(signature).decode("ascii"), "keyid": signing_key.kid or ""}],
        },
    }
    return (json.dumps(bundle, indent=2) + "\n").encode("utf-8")


def write_manifest(root: str | os.PathLike[str], signing_key: Any) -> Path:
    """Sign a model folder: write ``model.sig`` atomically (temporary file, then rename), as the last file."""
    from ..writing.sinks import AtomicFile

    folder = Path(root)
    data = sign_statement(build_statement(folder), signing_key)
    target = folder / MANIFEST_NAME
    with AtomicFile(target, len(data)) as sink:
        sink.writeat(0, memoryview(data))
    return target


# ------------------------------------------------------------------------------------------------ verify


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise ManifestError(f"model.sig: {what} must be base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ManifestError(f"model.sig: {what} is not valid base64") from None


def _envelope(data: bytes) -> tuple[bytes, bytes, str | None]:
    try:
        bundle = json.loads(data)
        envelope = bundle["dsseEnvelope"]
        signatures = envelope["signatures"]
        assert bundle.get("mediaType", BUNDLE_MEDIA_TYPE).startswith("application/vnd.dev.sigstore.bundle")
        assert envelope["payloadType"] == PAYLOAD_TYPE and isinstance(signatures, list) and len(signatures) == 1
    except (ValueError, KeyError, TypeError, AssertionError):
        raise ManifestError("model.sig is not a model-signing bundle with one DSSE signature") from None
    keyid = signatures[0].get("keyid") if isinstance(signatures[0], dict) else None
    return _b64(envelope["payload"], "payload"), _b64(signatures[0].get("sig"), "signature"), keyid or None


def signer_kid(data: bytes) -> str | None:
    """The key id the bundle names (a hint for finding the verification key; the signature decides)."""
    return _envelope(data)[2]


def verify_manifest(data: bytes, verify_keys: Sequence[Any]) -> Manifest:
    """Check the bundle's signature under one of the consumer's trusted keys, then parse what it signs."""
    if len(data) > MAX_MANIFEST_SIZE:
        raise ManifestError(f"model.sig is larger than {MAX_MANIFEST_SIZE} bytes")
    payload, signature, kid = _envelope(data)
    message = pae(payload)
    for key in verify_keys:
        try:
            key.public.verify(signature, message)
            break
        except InvalidSignature:
            continue
    else:
        raise SignatureError("model.sig: the manifest signature does not verify under the trusted publisher key")
    return _parse_statement(payload, kid)


def _parse_statement(payload: bytes, kid: str | None) -> Manifest:
    try:
        statement = json.loads(payload)
        predicate = statement["predicate"]
        resources, extension = predicate["resources"], predicate[EXTENSION]
        sizes, shards = extension["sizes"], extension["shards"]
        assert statement["predicateType"] == PREDICATE_TYPE and extension["version"] == EXTENSION_VERSION
        assert isinstance(resources, list) and isinstance(sizes, dict) and isinstance(shards, dict)
        files = {}
        for resource in resources:
            name = safe_relative(resource["name"])
            assert resource["algorithm"] == "sha256" and isinstance(resource["digest"], str)
            assert isinstance(sizes[name], int) and name not in files
            files[name] = (sizes[name], resource["digest"])
        records = {}
        for name, shard in shards.items():
            assert name in files and isinstance(shard["header_sha256"], str)
            assert isinstance(shard["tensors"], list) and all(isinstance(t, str) for t in shard["tensors"])
            records[name] = ShardRecord(shard["header_sha256"], tuple(shard["tensors"]))
        assert set(sizes) == set(files)
        assert all(n in records for n in files if n.endswith(SHARD_SUFFIX))
        subject = statement["subject"][0]
        expected = hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in resources)).hexdigest()
        assert subject["digest"]["sha256"] == expected
    except ManifestError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, AssertionError):
        raise ManifestError("model.sig: the signed statement is not a valid model manifest") from None
    if not files:
        raise ManifestError("model.sig lists no file")
    return Manifest(str(subject.get("name", "")), files, records, kid)


def weight_files(names: Sequence[str]) -> list[str]:
    return [n for n in names if is_weight_file(n)]
