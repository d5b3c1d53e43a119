"""Transparent mode: unmodified code that uses the ``safetensors`` package loads CryptoTensors files.

Every function of safetensors that reads tensor data is covered (the table :data:`ENTRY_POINTS` lists each
public callable and how): ``safe_open``, ``deserialize`` and ``_safe_open_handle`` at the top level, and
``load`` in the numpy and torch modules, are replaced by thin wrappers; the other readers (``load_file``,
``load_model``, the flax / tensorflow / paddle / mlx functions) reach tensor data only through those.
Each wrapper looks at the file's header (one small read): a plain file goes to the original function,
untouched and at its speed; a CryptoTensors file goes to pycryptotensors, with keys from the configured
sources (``CRYPTOTENSOR_KEYS``, key directories, the key service, see docs/KEYS.md). An encrypted file with
no key available fails with our clear error, never with ciphertext as weights.

The patch must be in place before other code imports names from safetensors (transformers does so at import
time), so installing the package arms an import hook at interpreter start (``pycryptotensors-transparent.pth``
runs ``_pycryptotensors_startup``), which calls :func:`patch_module` as each safetensors module is imported.
``PYCRYPTOTENSORS_TRANSPARENT=0`` turns that off; :func:`enable` / :func:`disable` do it at run time
(``disable`` cannot reach names other modules already imported by value). How it works: docs/INTEGRATIONS.md.
"""

from __future__ import annotations

import contextvars
import functools
import os
import struct
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..format.header import MAX_HEADER_SIZE, PREFIX_SIZE
from ..format.reserved import plainly_unencrypted
from ..keys.access import resolve_trust
from ..settings import settings_path
from . import model_guard

if TYPE_CHECKING:
    from ..config import LoadOptions

__all__ = ["enable", "disable"]  # the public names (docs/API.md); the rest serves the start-up hook and tests

PTH_NAME = "pycryptotensors-transparent.pth"
READS, WRITES, HELPER = "reads tensor data", "writes", "helper"

# Every public callable of safetensors 0.8, under the module that defines it. Names a module re-exports
# (``safetensors.torch.safe_open``) are the top-level rows. tests/test_transparent_entrypoints.py enumerates
# the installed safetensors by introspection (and reads the modules it cannot import as text) and fails on any
# callable missing here: a release that adds a reading function fails the tests instead of handing out
# ciphertext. Each READS row is tested with an encrypted file (right, missing and wrong keys, a tampered byte)
# and with a plain one (identical to safetensors without us).
#   (READS, wrapper)        replaced by that wrapper, in its module and wherever safetensors re-exports it
#   (READS, "via A, m.B")   reads tensor data only through these globals of its module, which are wrapped
#                           (looked up at call time; the test checks the function's code names them)
#   (WRITES, ""), (HELPER, "")   passed through untouched: writing, or no tensor data returned
ENTRY_POINTS: dict[str, tuple[str, str]] = {
    "safetensors.safe_open": (READS, "safe_open"),
    "safetensors._safe_open_handle": (READS, "safe_open_handle"),
    "safetensors.deserialize": (READS, "deserialize"),
    "safetensors.serialize": (WRITES, ""),
    "safetensors.serialize_file": (WRITES, ""),
    "safetensors.TensorSpec": (HELPER, ""),
    "safetensors.SafetensorError": (HELPER, ""),
    "safetensors.numpy.load": (READS, "load"),
    "safetensors.numpy.load_file": (READS, "via safe_open"),
    "safetensors.numpy.save": (WRITES, ""),
    "safetensors.numpy.save_file": (WRITES, ""),
    "safetensors.torch.load": (READS, "load"),
    "safetensors.torch.load_file": (READS, "via safe_open"),
    "safetensors.torch.load_model": (READS, "via load_file"),
    "safetensors.torch.save": (WRITES, ""),
    "safetensors.torch.save_file": (WRITES, ""),
    "safetensors.torch.save_model": (WRITES, ""),
    "safetensors.torch.storage_ptr": (HELPER, ""),
    "safetensors.torch.storage_size": (HELPER, ""),
    "safetensors.flax.load": (READS, "via numpy.load"),
    "safetensors.flax.load_file": (READS, "via safe_open"),
    "safetensors.flax.save": (WRITES, ""),
    "safetensors.flax.save_file": (WRITES, ""),
    "safetensors.tensorflow.load": (READS, "via numpy.load"),
    "safetensors.tensorflow.load_file": (READS, "via safe_open"),
    "safetensors.tensorflow.save": (WRITES, ""),
    "safetensors.tensorflow.save_file": (WRITES, ""),
    "safetensors.paddle.load": (READS, "via deserialize, numpy.load"),
    "safetensors.paddle.load_file": (READS, "via safe_open, numpy.load_file"),
    "safetensors.paddle.save": (WRITES, ""),
    "safetensors.paddle.save_file": (WRITES, ""),
    "safetensors.mlx.load": (READS, "via numpy.load"),
    "safetensors.mlx.load_file": (READS, "via safe_open"),
    "safetensors.mlx.save": (WRITES, ""),
    "safetensors.mlx.save_file": (WRITES, ""),
}
NATIVE = "safetensors._safetensors_rust"  # where the originals live: never patched
_MARK = "__pycryptotensors__"  # set on every wrapper we install (how patched functions are recognised)
_FRAMEWORKS = {"safetensors.numpy": "np", "safetensors.torch": "pt"}  # modules with a wrapped ``load``
# The bytes a wrapped ``load`` has just found plain: its original calls ``deserialize`` on them, which then
# need not read the header a second time (a plain file pays for one sniff, whatever the path).
_sniffed_plain: contextvars.ContextVar[object] = contextvars.ContextVar("sniffed_plain", default=None)
_options: LoadOptions | None = None


def configure(options: LoadOptions | None) -> None:
    """Options for files loaded transparently (None: the defaults, i.e. environment and settings)."""
    global _options
    _options = options


def _is_crypto_header(prefix_and_header: Callable[[int, int], bytes]) -> bool:
    prefix = prefix_and_header(0, PREFIX_SIZE)
    if len(prefix) < PREFIX_SIZE:
        return False
    (n,) = struct.unpack("<Q", prefix)
    if n > MAX_HEADER_SIZE:
        return False  # not ours to judge: the original reports it
    return not plainly_unencrypted(prefix_and_header(PREFIX_SIZE, n))


def is_crypto_file(filename: Any) -> bool:
    try:
        fd = os.open(filename, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except (OSError, TypeError, ValueError):
        return False  # the original will raise its own error for a missing or odd file

    def read(offset: int, size: int) -> bytes:  # whole, or up to the end: a short read must not hide a key
        parts = []
        while size and (part := os.pread(fd, size, offset)):
            parts.append(part)
            offset, size = offset + len(part), size - len(part)
        return b"".join(parts)

    try:
        return _is_crypto_header(read)
    except OSError:
        return False
    finally:
        os.close(fd)


def is_crypto_bytes(data: Any) -> bool:
    try:
        view = memoryview(data)
    except TypeError:
        return False  # not bytes: the original reports it
    return _is_crypto_header(lambda offset, size: bytes(view[offset : offset + size]))


def encryption_required(path: Any) -> bool:
    """Whether the consumer requires encryption for this file (or for everything, for bytes), or pins a
    publisher for it: then a plain file must not slip through to the original function, which would load it
    without a word (our reader refuses it, or, for a pinned publisher, a model folder without a manifest)."""
    if isinstance(path, str | os.PathLike) and model_guard.manifest_for(path) is not None:
        return True  # in a signed model folder: our reader checks the folder, plain or not (docs/SECURITY.md)
    required = _options is not None and _options.require_encryption
    pinned = tuple(_options.trusted_signers) if _options is not None else ()
    use_settings = _options is None or _options.use_settings
    if not required and not pinned and not (use_settings and settings_path()):
        return False  # nothing can require it: the common case, decided without reading anything
    trust = resolve_trust(_options)
    if not isinstance(path, str | os.PathLike):  # bytes: their file cannot be told, so every rule applies
        return model_guard.unknown_origin_trust(trust).require_encryption
    for_file = trust.for_file(path)
    return for_file.require_encryption or bool(for_file.signers)


def _wrap(original: Any, replacement: Callable[..., Any]) -> Callable[..., Any]:
    wrapper = functools.wraps(original)(replacement)  # sets wrapper.__wrapped__ = original
    setattr(wrapper, _MARK, True)
    return wrapper


def _safe_open(original: Any) -> Callable[..., Any]:
    def safe_open(filename: Any, framework: str, device: Any = "cpu", **kwargs: Any) -> Any:
        if is_crypto_file(filename) or encryption_required(filename):  # ours decrypts, or refuses a plain file
            from ..reading.handle import safe_open as crypto_safe_open

            return crypto_safe_open(filename, framework, device=device, config=_options, backend=kwargs.get("backend"))
        return original(filename, framework, device=device, **kwargs)

    return _wrap(original, safe_open)


def _safe_open_handle(original: Any) -> Callable[..., Any]:
    """safetensors 0.8's ``_safe_open_handle(f, ...)``: a handle over an open file, which it reads by ``f.name``."""

    def _safe_open_handle(f: Any, framework: str, *args: Any, **kwargs: Any) -> Any:
        name = getattr(f, "name", None)
        if isinstance(name, str | os.PathLike) and (is_crypto_file(name) or encryption_required(name)):
            from ..reading.handle import safe_open as crypto_safe_open

            device = args[0] if args else kwargs.get("device", "cpu")
            return crypto_safe_open(name, framework, device=device, config=_options, backend=kwargs.get("backend"))
        return original(f, framework, *args, **kwargs)

    return _wrap(original, _safe_open_handle)


def _raw_view(opened: Any, entry: Any) -> dict[str, Any]:
    """One item of ``deserialize``'s answer; ``data`` a bytearray, as safetensors returns it."""
    return {"dtype": entry.dtype.name, "shape": list(entry.shape), "data": bytearray(opened.tensor_bytes(entry.name))}


def _deserialize(original: Any) -> Callable[..., Any]:
    """``deserialize(bytes)``: the same list of ``(name, {"dtype", "shape", "data"})``, with the plaintext."""

    def deserialize(data: Any, *args: Any, **kwargs: Any) -> Any:
        if _sniffed_plain.get() is not data and (is_crypto_bytes(data) or encryption_required(None)):
            from ..keys.access import resolve
            from ..reading.reader import open_file
            from ..reading.source import BytesSource

            opened = open_file(BytesSource(data), resolve(_options), "np", "cpu")  # raises, or None if plain
            if opened is not None:
                try:
                    return [(e.name, _raw_view(opened, e)) for e in opened.header.in_offset_order()]
                finally:
                    opened.close()
        return original(data, *args, **kwargs)

    return _wrap(original, deserialize)


def _load(original: Any, framework: str) -> Callable[..., Any]:
    def load(data: bytes, *args: Any, **kwargs: Any) -> Any:
        if is_crypto_bytes(data) or encryption_required(None):
            from .. import _frontend

            result = _frontend.frontend(framework).load_encrypted(data, _options)
            if result is not None:
                return result
        token = _sniffed_plain.set(data)
        try:
            return original(data, *args, **kwargs)
        finally:
            _sniffed_plain.reset(token)

    return _wrap(original, load)


_WRAPPERS: dict[str, Callable[[Any, str], Callable[..., Any]]] = {
    "safe_open": lambda original, module: _safe_open(original),
    "safe_open_handle": lambda original, module: _safe_open_handle(original),
    "deserialize": lambda original, module: _deserialize(original),
    "load": lambda original, module: _load(original, _FRAMEWORKS[module]),
}


def is_target(name: str) -> bool:
    """Whether a module is one of safetensors' Python modules (the native one holds the originals)."""
    return (name == "safetensors" or name.startswith("safetensors.")) and name != NATIVE


def patch_module(name: str, module: ModuleType) -> None:
    """Make one safetensors module CryptoTensors-aware (idempotent): wrap the readers :data:`ENTRY_POINTS`
    names for it, and rebind any name under which it re-exports a wrapped top-level reader."""
    model_guard.arm()  # and other checkpoint formats / index escapes refused where the rules apply
    package = sys.modules.get("safetensors")  # executed, and patched, before any of its submodules
    for qualified, (kind, how) in ENTRY_POINTS.items():
        if kind != READS or how.startswith("via "):
            continue  # nothing to replace: passed through, or reads only through wrapped globals
        home, _, attribute = qualified.rpartition(".")
        current = getattr(module, attribute, None)
        if home == name and current is not None and not getattr(current, "__pycryptotensors__", False):
            setattr(module, attribute, _WRAPPERS[how](current, name))
        elif home == "safetensors" and name != home and package is not None:
            wrapper = getattr(package, attribute, None)
            if getattr(wrapper, "__pycryptotensors__", False):
                original = getattr(wrapper, "__wrapped__", None)
                for key, value in list(vars(module).items()):
                    if original is not None and value is original:
                        setattr(module, key, wrapper)


def _targets() -> list[tuple[str, ModuleType]]:
    return sorted((n, m) for n, m in list(sys.modules.items()) if is_target(n) and isinstance(m, ModuleType))


def enable() -> None:
    """Turn transparent loading on: patch what is imported, and hook what will be.

    Idempotent; the start-up hook calls it in every process unless ``PYCRYPTOTENSORS_TRANSPARENT=0``.
    """
    import _pycryptotensors_startup

    _pycryptotensors_startup.install()
    for name, module in _targets():  # the package first: its submodules re-export its wrappers
        patch_module(name, module)


def disable() -> None:
    """Turn transparent loading off: restore the original functions and remove the import hook.

    Idempotent; plain safetensors then reads an encrypted file's tensors as ciphertext bytes, so turn it off
    only in processes that load plain files.
    """
    import _pycryptotensors_startup

    _pycryptotensors_startup.uninstall()
    for _, module in _targets():
        for attribute, value in list(vars(module).items()):
            if callable(value) and getattr(value, "__pycryptotensors__", False):
                setattr(module, attribute, value.__wrapped__)


def is_enabled() -> bool:
    module = sys.modules.get("safetensors")
    return module is not None and getattr(module.safe_open, "__pycryptotensors__", False)


def install_pth(site_packages: str | None = None) -> Path:
    """Write the start-up hook into site-packages (wheel installs ship it; editable installs need this)."""
    target = Path(site_packages or sysconfig.get_paths()["purelib"]) / PTH_NAME
    target.write_text("import _pycryptotensors_startup\n", encoding="utf-8")
    return target


if __name__ == "__main__":  # python -m pycryptotensors.integrations.transparent install
    if sys.argv[1:] == ["install"]:
        print(f"wrote {install_pth()}")
    else:
        print("usage: python -m pycryptotensors.integrations.transparent install", file=sys.stderr)
        sys.exit(2)
