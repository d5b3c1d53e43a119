"""Whole models in object storage or on a web server: the small files cached and checked, the shards streamed.

:func:`open_remote_model` turns a folder URL (``s3://bucket/models/llama-enc/``, ``https://host/path/``) into
a local folder that any loader can be pointed at (transformers' ``from_pretrained``, vLLM), in this order,
before a shard's tensors are read or a key is asked for:

1. ``model.sig`` is fetched and verified under the consumer's publisher keys (pins apply, as for a URL: the
   strictest rules); a folder without one is refused where a publisher is pinned or encryption required;
2. an object store's listing must match the manifest (no shard or file added or missing); on HTTP(S), which
   has no listing, the manifest says what the folder holds;
3. each small file (config, tokenizer, index, code) is fetched and its size and SHA-256 compared with the
   manifest, then written into the cache folder (0700; files 0600, written atomically);
4. each shard's size and header (one request: the first block) are compared with the manifest, and a
   placeholder is written in its place: a sparse file of the shard's size holding only its header, so
   loaders find it and the local folder check (model/check.py) passes. Its data bytes are zeros, which
   fail authentication: they can never be read as weights.

A record in the cache folder (``.cache/pycryptotensors-remote.json``, a folder every check ignores) gives
each shard's URL. :func:`~..reading.source.open_source` sees it and opens the shard's URL instead of the
placeholder (:func:`open_cached_shard`): tensors are streamed by range, and each open checks the shard's
header against the manifest again (reader -> model/check.py), in whichever process opens it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from ..errors import IntegrityError, ManifestError, MissingKeyError, RemoteSourceError, UnsupportedError
from .folder import IGNORED_DIRS, MANIFEST_NAME, SHARD_SUFFIX, is_temporary, is_weight_file
from .manifest import MAX_MANIFEST_SIZE, Manifest, header_digest, safe_relative, signer_kid, verify_manifest

if TYPE_CHECKING:
    from ..reading.source import ByteSource

POINTER_DIR = ".cache"  # one of folder.IGNORED_DIRS: never listed, never signed, never checked as model content
POINTER_NAME = "pycryptotensors-remote.json"
CACHE_ENV = "PYCRYPTOTENSORS_CACHE_DIR"
SMALL_LIMIT = 256 * 1024 * 1024  # a side file over this is not "small": refused rather than cached
# Without a manifest and without a listing (HTTP), the side files a loader may read are probed by name.
PROBED = (
    "config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer.json",
    "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json", "vocab.txt",
    "merges.txt", "added_tokens.json", "chat_template.jinja", "preprocessor_config.json",
)  # fmt: skip


def is_folder_url(target: object) -> bool:
    """A URL naming a folder (ending with '/'), which :func:`open_remote_model` reads as a whole model."""
    from ..reading.source import is_url

    return is_url(target) and str(target).split("?", 1)[0].endswith("/")


def cache_root() -> Path:
    """``PYCRYPTOTENSORS_CACHE_DIR``, else the platform's user cache folder (``~/.cache/pycryptotensors``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    try:
        from platformdirs import user_cache_dir

        return Path(user_cache_dir("pycryptotensors", appauthor=False))
    except ImportError:
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pycryptotensors"


def _folder_url(url: str) -> str:
    from ..reading.transports import redact

    parts = urlsplit(url)
    if parts.query or parts.fragment or parts.username or parts.password:
        raise RemoteSourceError(
            f"{redact(url)}: a model folder URL takes no query string or credentials (presigned URLs name one "
            "object each); give credentials through the back-end's standard chain or ~/.netrc"
        )
    return url if url.endswith("/") else url + "/"


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def open_remote_model(
    url: str, config: Any = None, *, cache_dir: str | os.PathLike[str] | None = None, options: Any = None
) -> Path:
    """Check a remote model folder and return its local cache folder (small files and shard placeholders).

    Everything is checked before any shard's tensor data is used; the returned folder loads with
    ``from_pretrained(path)`` or vLLM, its shards streamed by range.

    Args:
        url: The folder's URL (``s3://``, ``gs://``, ``az://``, ``hf://``, ``https://``).
        config: What ``safe_open`` takes (a dict, a KeyRing, LoadOptions, an Access; None: settings and
            environment); its publisher keys verify ``model.sig``.
        cache_dir: Where the local folder is made; a per-user cache folder when None.
        options: :class:`~pycryptotensors.reading.remote.RemoteOptions` (retries, timeouts); from the
            environment when None.

    Returns:
        The local cache folder.

    Raises:
        ManifestError: The folder does not match its signed manifest, or has none where one is required.
        SignatureError: ``model.sig`` does not verify under a trusted publisher key.
        MissingKeyError: No publisher key to verify it with.
        RemoteSourceError: The folder or a file cannot be read.
    """
    from ..format.crypto_header import KeySlot
    from ..keys.access import resolve
    from ..reading.remote import RemoteOptions
    from ..reading.transports import list_folder, redact
    from .origin import unknown_origin_trust

    base = _folder_url(url)
    options = options or RemoteOptions.from_env()
    access = resolve(config)
    sources, trust = access.sources, access.trust
    trust = unknown_origin_trust(trust)  # a URL has no local path for the trust rules: the strictest apply
    listing = list_folder(base, options)
    if listing is not None:
        listing = {n: s for n, s in listing.items() if not _ignored(n)}
    signed = None
    if listing is None or MANIFEST_NAME in listing:
        signed = _fetch_small(base, MANIFEST_NAME, options, MAX_MANIFEST_SIZE, optional=listing is None)
    manifest: Manifest | None = None
    keys: list[Any] = []
    if signed is not None:
        kid = signer_kid(signed)
        keys = list(sources.verify_keys(KeySlot("ed25519", kid), trust))
        if not keys:
            raise MissingKeyError(
                f"no publisher key to verify {redact(base)}{MANIFEST_NAME} (key id {kid!r}): pin the publisher's "
                "public key (trusted_signers, --trust) or add it to a key directory"
            )
        manifest = verify_manifest(signed, keys)
        files = {name: size for name, (size, _) in manifest.files.items()}
        if listing is not None:
            _compare_listing(base, manifest, listing)
    elif trust.signers or trust.require_encryption:
        raise ManifestError(
            f"{redact(base)} has no signed manifest ({MANIFEST_NAME}), and a publisher is pinned or encryption is "
            "required: the publisher must sign the whole folder ('pycryptotensors sign DIR') before uploading it"
        )
    else:
        files = listing if listing is not None else _probe(base, options)
    if any(is_weight_file(n) and not n.endswith(SHARD_SUFFIX) for n in files):
        bad = sorted(n for n in files if is_weight_file(n) and not n.endswith(SHARD_SUFFIX))[0]
        raise ManifestError(f"{redact(base)}{bad}: a weight file in another format; only *.safetensors shards stream")

    cache = _private_dir(Path(cache_dir) if cache_dir is not None else cache_root() / "remote")
    folder = _private_dir(cache / hashlib.sha256(redact(base).encode()).hexdigest()[:24])
    shards = sorted(n for n in files if n.endswith(SHARD_SUFFIX))
    small = sorted(n for n in files if n not in shards)
    # the small files first: a changed config or index is refused before any shard is asked for
    for name in small:
        _cache_small(base, folder, name, files[name], manifest, options)
    with ThreadPoolExecutor(max(1, min(options.concurrency, len(shards)))) as pool:
        headers = list(pool.map(lambda n: _shard_header(base, n, files[n], manifest, options), shards))
    for name, head in zip(shards, headers, strict=True):
        _write_placeholder(folder / name, files[name], head)
    _remove_stale(folder, set(files))
    from ..writing.sinks import AtomicFile

    record = json.dumps({"url": base, "shards": {n: files[n] for n in shards}}, indent=1).encode()
    _private_dir(folder / POINTER_DIR)
    with AtomicFile(folder / POINTER_DIR / POINTER_NAME, len(record), 0o600) as sink:
        sink.writeat(0, memoryview(record))
    target = folder / MANIFEST_NAME
    if signed is not None:
        with AtomicFile(target, len(signed), 0o600) as sink:
            sink.writeat(0, memoryview(signed))
        from .check import verify_folder

        verify_folder(folder, keys)  # the cache folder is exactly what was checked (hashes the small files again)
    elif os.path.lexists(target):
        os.unlink(target)
    return folder


def _ignored(name: str) -> bool:
    parts = name.split("/")
    return any(p in IGNORED_DIRS for p in parts[:-1]) or is_temporary(name)


def _compare_listing(base: str, manifest: Manifest, listing: dict[str, int]) -> None:
    from ..reading.transports import redact

    present = set(listing) - {MANIFEST_NAME}
    for name in sorted(set(manifest.files) - present):
        what = "shard" if name in manifest.shards else "file"
        raise ManifestError(f"{redact(base)}{name}: signed {what} missing from the model folder")
    for name in sorted(present - set(manifest.files)):
        what = "weight file" if is_weight_file(name) else "file"
        raise ManifestError(
            f"{redact(base)}{name}: {what} not listed in the signed manifest (remove it, or have the publisher "
            "re-sign the folder with 'pycryptotensors sign')"
        )
    for name, (size, _) in sorted(manifest.files.items()):
        if listing[name] != size:
            raise ManifestError(f"{redact(base)}{name}: size differs from the signed manifest (modified)")


def _url(base: str, name: str) -> str:
    return base + quote(safe_relative(name), safe="/")


def _fetch_small(base: str, name: str, options: Any, limit: int, optional: bool = False) -> bytes | None:
    """A small object's bytes (one or two requests); None when ``optional`` and it does not exist."""
    from ..reading.remote import RemoteSource
    from ..reading.transports import MissingObjectError

    try:
        source = RemoteSource(_url(base, name), options)
    except MissingObjectError:
        if optional:
            return None
        raise
    try:
        if source.size > limit:
            raise ManifestError(f"{source.path}: {source.size} bytes, over the {limit}-byte limit of a side file")
        return source.read(0, source.size)
    finally:
        source.close()


def _cache_small(base: str, folder: Path, name: str, size: int, manifest: Manifest | None, options: Any) -> None:
    from ..reading.transports import redact
    from ..writing.sinks import AtomicFile

    digest = manifest.files[name][1] if manifest is not None else None
    path = folder / name
    # fetched again at every open, even when the cached copy is the signed one: what the server holds now
    # is what is checked (a changed remote file is refused, not masked by the cache); small files only
    data = b"" if size == 0 and digest is not None else _fetch_small(base, name, options, SMALL_LIMIT)
    assert data is not None
    if len(data) != size or (digest is not None and hashlib.sha256(data).hexdigest() != digest):
        raise ManifestError(f"{redact(base)}{name}: contents differ from the signed manifest (modified)")
    _private_dir(path.parent)
    with AtomicFile(path, len(data), 0o600) as sink:
        sink.writeat(0, memoryview(data))


def _shard_header(base: str, name: str, size: int, manifest: Manifest | None, options: Any) -> bytes:
    """The shard's first bytes (8-byte length and header), checked against the manifest: one request."""
    from ..format.header import PREFIX_SIZE
    from ..format.reserved import plainly_unencrypted
    from ..reading.reader import read_header_bytes
    from ..reading.remote import RemoteSource

    source = RemoteSource(_url(base, name), options)
    try:
        if source.size != size:
            raise ManifestError(f"{source.path}: size differs from the signed manifest (modified, or another release)")
        try:
            header = read_header_bytes(source)
        except Exception:
            raise ManifestError(f"{source.path}: not the shard the publisher signed (unreadable header)") from None
        if manifest is not None and header_digest(header) != manifest.shards[name].header_sha256:
            raise ManifestError(f"{source.path}: not the shard the publisher signed (another release or model?)")
        if plainly_unencrypted(header):
            raise UnsupportedError(
                f"{source.path} is a plain safetensors shard: only encrypted shards are streamed from a remote "
                "model folder; download the folder and load the local copy"
            )
        return source.read(0, PREFIX_SIZE + len(header))
    finally:
        source.close()


def _write_placeholder(path: Path, size: int, head: bytes) -> None:
    """A sparse file of the shard's size holding its header: found by loaders, checked by model/check.py."""
    from ..writing.sinks import AtomicFile

    if path.is_file() and not path.is_symlink() and path.stat().st_size == size:
        with open(path, "rb") as f:
            if f.read(len(head)) == head:
                return
    _private_dir(path.parent)
    with AtomicFile(path, size, 0o600) as sink:
        sink.writeat(0, memoryview(head))


def _remove_stale(folder: Path, keep: Iterable[str]) -> None:
    """Files of an earlier version of the folder that this one no longer has (else: refused as unlisted)."""
    from .folder import walk

    wanted = set(keep)
    for name in walk(folder, everything=True)[0]:
        if name not in wanted:
            path = folder / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def _probe(base: str, options: Any) -> dict[str, int]:
    """An unsigned folder on HTTP(S): the usual side files by name, then the shards the index names (or
    ``model.safetensors``)."""
    from ..reading.transports import redact

    found: dict[str, int] = {}
    data: dict[str, bytes] = {}
    for name in PROBED:
        got = _fetch_small(base, name, options, SMALL_LIMIT, optional=True)
        if got is not None:
            found[name], data[name] = len(got), got
    index = data.get("model.safetensors.index.json")
    if index is not None:
        try:
            names = sorted({safe_relative(s) for s in json.loads(index)["weight_map"].values()})
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ManifestError(f"{redact(base)}model.safetensors.index.json: not a valid shard index") from None
    else:
        names = ["model.safetensors"]
    for name in names:
        if not name.endswith(SHARD_SUFFIX):
            raise ManifestError(f"{redact(base)}{name}: the index names a shard that is not *.safetensors")
        found[name] = _remote_size(base, name, options)
    return found


def _remote_size(base: str, name: str, options: Any) -> int:
    from ..reading.remote import RemoteSource

    source = RemoteSource(_url(base, name), options)
    source.close()
    return source.size


def shard_urls(url: str, options: Any = None) -> list[str]:
    """The shard URLs of a remote folder, for ``inspect`` (which decrypts and trusts nothing): from the store's
    listing, else from ``model.sig`` (not verified here: ``verify URL/`` does that), else by probing names.
    Nothing is cached."""
    from ..reading.remote import RemoteOptions
    from ..reading.transports import list_folder
    from .manifest import _envelope, _parse_statement

    base = _folder_url(url)
    options = options or RemoteOptions.from_env()
    listing = list_folder(base, options)
    if listing is not None:
        names = [n for n in listing if not _ignored(n)]
    else:
        signed = _fetch_small(base, MANIFEST_NAME, options, MAX_MANIFEST_SIZE, optional=True)
        if signed is not None:
            payload, _, kid = _envelope(signed)
            names = list(_parse_statement(payload, kid).files)
        else:
            names = list(_probe(base, options))
    return [_url(base, n) for n in sorted(names) if n.endswith(SHARD_SUFFIX)]


def read_pointer(pointer: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        with open(pointer, "rb") as f:
            record = json.loads(f.read(16 * 1024 * 1024))
    except (OSError, ValueError):
        record = None
    if not (isinstance(record, dict) and isinstance(record.get("url"), str) and isinstance(record.get("shards"), dict)):
        raise ManifestError(f"{pointer}: not a valid remote-folder record (run open_remote_model again)")
    return record


def open_cached_shard(pointer: str | os.PathLike[str], target: str | os.PathLike[str]) -> ByteSource:
    """The byte source for a file of a remote model's cache folder: the shard's URL, read by range (the
    reader checks its header against the folder's manifest, by its local name), or the local file itself
    when it is not a shard."""
    from ..format.reserved import plainly_unencrypted
    from ..reading.reader import read_header_bytes
    from ..reading.remote import RemoteSource
    from ..reading.source import FileSource

    folder = Path(pointer).parent.parent
    local = os.path.abspath(target)
    relative = Path(local).relative_to(os.path.abspath(folder)).as_posix()
    record = read_pointer(pointer)
    if relative not in record["shards"]:
        return FileSource(target)
    source = RemoteSource(_url(_folder_url(record["url"]), relative))
    try:
        if source.size != record["shards"][relative]:
            raise IntegrityError(
                f"{source.path}: its size is not the one checked when the folder was cached: the remote model "
                "changed; run open_remote_model (or 'pycryptotensors verify URL/') again"
            )
        if plainly_unencrypted(read_header_bytes(source)):
            raise UnsupportedError(f"{source.path} is a plain safetensors shard: only encrypted shards are streamed")
    except BaseException:
        source.close()
        raise
    source.local_path = local  # for the folder check and the trust rules
    return source
