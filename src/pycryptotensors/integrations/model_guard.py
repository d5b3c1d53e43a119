"""Model guard: no way around the encrypted shards through another checkpoint format or the shard index.

Transparent mode covers what reads safetensors. A loader can also read a pickle checkpoint
(``pytorch_model.bin``, ``*.pt``) with ``torch.load``: transformers does so when a folder has no
safetensors file, vLLM's default loader too. So where the consumer requires encryption or pins a publisher
for a path, or a signed manifest covers it, this module refuses such checkpoints, with our error, in:

- ``torch.load`` of a path (the choke point every loader goes through);
- transformers' ``modeling_utils.load_state_dict`` (4.57 and 5.x), before it picks ``torch.load``;
- vLLM's ``weight_utils`` pickle iterators (``pt_weights_iterator`` and friends), before anything is read.

Remote code (``trust_remote_code``) runs before any shard is opened, so transformers'
``dynamic_module_utils.get_cached_module_file`` checks the whole local folder first (its manifest, or a
missing manifest where a publisher is pinned or encryption required): tampered code is refused, not run.

It also refuses a shard index (``model.safetensors.index.json``) whose entries leave the model folder
(``../other/x.safetensors`` or an absolute path), in transformers' ``get_checkpoint_shard_files``, always.

:func:`arm` is called by transparent mode when it patches safetensors; it patches the modules above when
they are (or once they are) imported, and each wrapper does nothing while transparent mode is off.
Standard library only at import: this runs in every process that imports safetensors.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

from _pycryptotensors_startup import PatchingHook

from ..errors import ManifestError, NotEncryptedError
from ..keys.trust import Trust
from ..model.folder import MANIFEST_NAME, SHARD_SUFFIX, is_weight_file, manifest_for
from ..model.origin import unknown_origin_trust

__all__ = [
    "arm",
    "check_checkpoint",
    "check_index",
    "check_shard_list",
    "check_shard_path",
    "manifest_for",
    "unknown_origin_trust",
]

_MARK = "__pycryptotensors_guard__"
_PRETRAINED = "_load_pretrained_model"  # transformers 5.x: the staticmethod that loads checkpoint files
TORCH = "torch"
TRANSFORMERS = "transformers.modeling_utils"
REMOTE_CODE = "transformers.dynamic_module_utils"
VLLM = "vllm.model_executor.model_loader.weight_utils"
GUARDED = (TORCH, TRANSFORMERS, REMOTE_CODE, VLLM)
VLLM_ITERATORS = ("pt_weights_iterator", "multi_thread_pt_weights_iterator", "np_cache_weights_iterator")


def _active() -> bool:
    from . import transparent

    return transparent.is_enabled()


def _trust() -> tuple[Trust, Any]:
    """The consumer's trust settings as transparent mode applies them (its options, then the settings file)."""
    from ..keys.access import resolve_trust
    from . import transparent

    return resolve_trust(transparent._options), transparent._options


def check_checkpoint(path: str | os.PathLike[str]) -> None:
    """Refuse a checkpoint in another format (pickle, ...) where encryption is required or a publisher is
    pinned for its path; in a signed model folder, check the folder (an unlisted weight file fails)."""
    name = os.fspath(path)
    if name.endswith(SHARD_SUFFIX):
        return  # safetensors: transparent mode and our reader decide
    trust, options = _trust()
    for_file = trust.for_file(name)
    if for_file.require_encryption or for_file.signers:
        raise NotEncryptedError(
            f"{name} is a {Path(name).suffix or 'non-safetensors'} checkpoint, and this path requires encrypted, "
            "signed safetensors files (a pinned publisher or require_encryption): refusing to load it"
        )
    manifest = manifest_for(name)
    if manifest is not None and is_weight_file(name):
        _check_signed_folder(manifest, for_file, options)


def _check_signed_folder(manifest: Path, trust: Trust, options: Any) -> None:
    from ..format.crypto_header import KeySlot
    from ..keys.access import resolve
    from ..model.check import verify_folder
    from ..model.manifest import read_manifest_file, signer_kid

    sources = resolve(options).sources
    keys = sources.verify_keys(KeySlot("ed25519", signer_kid(read_manifest_file(manifest))), trust)
    if not keys:
        raise ManifestError(f"{manifest}: no trusted publisher key to check the signed model folder with")
    verify_folder(manifest.parent, keys)


def check_code_folder(directory: Any) -> None:
    """Remote code (``trust_remote_code``) about to be copied and run from a local model folder: check the
    whole folder first, as opening a shard would, since the code runs before any shard is opened."""
    if not isinstance(directory, str | os.PathLike) or not os.path.isdir(directory):
        return  # a Hub repository id: fetched, then loaded from the Hub's cache (not covered, docs/SECURITY.md)
    marker = os.path.join(os.path.abspath(directory), MANIFEST_NAME)
    trust, options = _trust()
    for_file = trust.for_file(marker)
    manifest = manifest_for(marker)
    if manifest is not None:
        _check_signed_folder(manifest, for_file, options)
    elif for_file.signers or for_file.require_encryption:
        from ..model.check import check_unsigned_folder

        check_unsigned_folder(Path(os.path.abspath(directory)))


def _code_check(pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> None:
    check_code_folder(pretrained_model_name_or_path)


def check_shard_list(folder: str | os.PathLike[str], files: Iterable[str | os.PathLike[str]]) -> None:
    """Every shard an index names must stay inside the model folder (checked lexically: a Hugging Face cache
    snapshot's shards are links into ``../../blobs``, which the trust rules follow on their own)."""
    root = os.path.normpath(os.path.abspath(folder))
    for file in files:
        where = os.path.normpath(os.path.abspath(os.path.join(root, file)))
        if os.path.commonpath([root, where]) != root:
            raise ManifestError(f"the shard index of {root} names {os.fspath(file)!r}, which is outside the folder")


def check_index(index_filename: str | os.PathLike[str]) -> None:
    """A local shard index: every entry stays inside the folder the index is in."""
    import json

    try:
        weight_map = json.loads(Path(index_filename).read_bytes())["weight_map"]
        shards = [v for v in weight_map.values() if isinstance(v, str)]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return  # not an index we can read: transformers reports it
    check_shard_list(os.path.dirname(os.path.abspath(index_filename)), shards)


def _paths_in(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[str]:
    found: list[str] = []
    for value in (*args, *kwargs.values()):
        items = value if isinstance(value, list | tuple) else [value]
        found.extend(os.fspath(v) for v in items if isinstance(v, str | os.PathLike))
    return [p for p in found if is_weight_file(p)]


def _guard(original: Callable[..., Any], before: Callable[..., None]) -> Callable[..., Any]:
    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _active():
            before(*args, **kwargs)
        return original(*args, **kwargs)

    setattr(wrapper, _MARK, True)  # functools.wraps set __wrapped__ = original
    return wrapper


def _torch_load_check(f: Any, *args: Any, **kwargs: Any) -> None:
    name = f if isinstance(f, str | os.PathLike) else getattr(f, "name", None)
    if isinstance(name, str | os.PathLike):
        check_checkpoint(name)


def check_shard_path(path: str | os.PathLike[str]) -> None:
    """A safetensors shard a loader names by path but may read as bytes (transformers' ``disable_mmap``,
    which loses the path): where a manifest covers it or a rule applies, check it by its path first (header,
    signature, whole-model check; no key is released), so that the bytes path cannot skip the folder."""
    from . import transparent

    if not transparent.encryption_required(path):
        return
    from ..keys.access import resolve
    from ..reading.reader import open_file
    from ..reading.source import open_source

    source = open_source(path)
    try:
        open_file(source, resolve(transparent._options), "np", "cpu", evaluate_local_policy=False, unwrap=False)
    finally:
        source.close()


def _load_state_dict_check(checkpoint_file: Any, *args: Any, **kwargs: Any) -> None:
    if isinstance(checkpoint_file, str | os.PathLike) and os.fspath(checkpoint_file).endswith(SHARD_SUFFIX):
        check_shard_path(checkpoint_file)
    else:
        check_checkpoint(checkpoint_file)


def _pretrained_check(*args: Any, **kwargs: Any) -> None:
    """transformers 5.x ``_load_pretrained_model(model, state_dict, checkpoint_files, load_config)``: with
    ``disable_mmap`` it reads each shard as bytes itself (no ``load_state_dict``), so check them by path here."""
    files = kwargs.get("checkpoint_files", args[2] if len(args) > 2 else None)
    for file in files or ():
        if isinstance(file, str | os.PathLike) and os.fspath(file).endswith(SHARD_SUFFIX):
            check_shard_path(file)


def _vllm_check(*args: Any, **kwargs: Any) -> None:
    for path in _paths_in(args, kwargs):
        check_checkpoint(path)


def _shard_files(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def get_checkpoint_shard_files(
        pretrained_model_name_or_path: Any, index_filename: Any, *args: Any, **kw: Any
    ) -> Any:
        if _active() and isinstance(index_filename, str | os.PathLike) and os.path.isfile(index_filename):
            check_index(index_filename)  # before transformers reads it (5.x refuses escapes with a ValueError)
        return original(pretrained_model_name_or_path, index_filename, *args, **kw)

    setattr(get_checkpoint_shard_files, _MARK, True)  # functools.wraps set __wrapped__ = original
    return get_checkpoint_shard_files


def _replace(module: ModuleType, attribute: str, make: Callable[[Any], Any]) -> None:
    current = getattr(module, attribute, None)
    if current is not None and not getattr(current, _MARK, False):
        setattr(module, attribute, make(current))


def patch(name: str, module: ModuleType) -> None:
    """Guard one module (idempotent)."""
    if name == TORCH:
        _replace(module, "load", lambda f: _guard(f, _torch_load_check))
    elif name == TRANSFORMERS:
        _replace(module, "load_state_dict", lambda f: _guard(f, _load_state_dict_check))
        _replace(module, "get_checkpoint_shard_files", _shard_files)
        model_class = getattr(module, "PreTrainedModel", None)
        raw = vars(model_class).get(_PRETRAINED) if isinstance(model_class, type) else None
        if isinstance(raw, staticmethod) and not getattr(raw.__func__, _MARK, False):  # 5.x (4.57: a classmethod)
            setattr(model_class, _PRETRAINED, staticmethod(_guard(raw.__func__, _pretrained_check)))
    elif name == REMOTE_CODE:
        _replace(module, "get_cached_module_file", lambda f: _guard(f, _code_check))
    elif name == VLLM:
        for attribute in VLLM_ITERATORS:
            _replace(module, attribute, lambda f: _guard(f, _vllm_check))


class GuardHook(PatchingHook):
    """torch, transformers' loading modules and vLLM's weight utilities, guarded as they are imported."""

    what = "model guard"

    def targets(self, name: str) -> bool:
        return name in GUARDED

    def patch(self, name: str, module: ModuleType) -> None:
        patch(name, module)


def arm() -> None:
    """Guard the modules already imported, and hook those imported later (idempotent)."""
    if not any(isinstance(finder, GuardHook) for finder in sys.meta_path):
        sys.meta_path.insert(0, GuardHook())
    for name in GUARDED:
        module = sys.modules.get(name)
        if module is not None:
            patch(name, module)
