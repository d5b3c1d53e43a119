"""Transparent mode: unmodified code that uses the ``safetensors`` package loads CryptoTensors files.

``safetensors.safe_open``, ``safetensors.torch.load`` / ``load_file`` and ``safetensors.numpy.load`` /
``load_file`` are replaced by thin wrappers. Each looks at the file's header (one small read): a plain file
goes to the original function, untouched and at its speed; a CryptoTensors file goes to pycryptotensors, with
keys from the configured sources (``CRYPTOTENSOR_KEYS``, key directories, the key service, see docs/KEYS.md).
An encrypted file with no key available fails with our clear error, never with ciphertext as weights.

The patch must be in place before other code imports names from safetensors (transformers does so at import
time), so installing the package arms an import hook at interpreter start (``pycryptotensors-transparent.pth``
runs ``_pycryptotensors_startup``), which calls :func:`patch_module` as each safetensors module is imported.
``PYCRYPTOTENSORS_TRANSPARENT=0`` turns that off; :func:`enable` / :func:`disable` do it at run time
(``disable`` cannot reach names other modules already imported by value). How it works: docs/INTEGRATIONS.md.
"""

from __future__ import annotations

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
from ..keys.trust import Trust
from ..settings import Settings, load_settings, settings_path

if TYPE_CHECKING:
    from ..config import LoadOptions

PTH_NAME = "pycryptotensors-transparent.pth"
PATCHED = ("safe_open", "load")
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
    view = memoryview(data)
    return _is_crypto_header(lambda offset, size: bytes(view[offset : offset + size]))


def encryption_required(path: Any) -> bool:
    """Whether the consumer requires encryption for this file (or for everything, for bytes): then a plain
    file must not slip through to the original function, which would load it without a word."""
    required = _options is not None and _options.require_encryption
    use_settings = _options is None or _options.use_settings
    if not required and not (use_settings and settings_path()):
        return False  # nothing can require it: the common case, decided without reading anything
    settings = load_settings() if use_settings else Settings()
    trust = Trust(require_encryption=required or settings.trust.require_encryption, rules=settings.trust.rules)
    return trust.for_file(path if isinstance(path, str | os.PathLike) else None).require_encryption


def _wrap(original: Any, replacement: Callable[..., Any]) -> Callable[..., Any]:
    wrapper = functools.wraps(original)(replacement)
    wrapper.__wrapped__ = original  # type: ignore[attr-defined]
    wrapper.__pycryptotensors__ = True  # type: ignore[attr-defined]
    return wrapper


def _safe_open(original: Any) -> Callable[..., Any]:
    def safe_open(filename: Any, framework: str, device: Any = "cpu", **kwargs: Any) -> Any:
        if is_crypto_file(filename) or encryption_required(filename):  # ours decrypts, or refuses a plain file
            from ..reading.handle import safe_open as crypto_safe_open

            return crypto_safe_open(filename, framework, device=device, config=_options, backend=kwargs.get("backend"))
        return original(filename, framework, device=device, **kwargs)

    return _wrap(original, safe_open)


def _load(original: Any, framework: str) -> Callable[..., Any]:
    def load(data: bytes, *args: Any, **kwargs: Any) -> Any:
        if is_crypto_bytes(data) or encryption_required(None):
            from .. import _frontend

            result = _frontend.load(data, framework, _options)
            if result is not None:
                return result
        return original(data, *args, **kwargs)

    return _wrap(original, load)


def _replace(module: ModuleType, attribute: str, make: Callable[[Any], Any]) -> None:
    current = getattr(module, attribute, None)
    if current is None or getattr(current, "__pycryptotensors__", False):
        return  # absent, or already a wrapper (safetensors.torch imports the package's wrapped safe_open)
    setattr(module, attribute, make(current))


def patch_module(name: str, module: ModuleType) -> None:
    """Make one safetensors module CryptoTensors-aware (idempotent)."""
    if name == "safetensors":
        _replace(module, "safe_open", _safe_open)
    elif name in ("safetensors.torch", "safetensors.numpy"):
        framework = "pt" if name.endswith("torch") else "np"
        # load_file calls these globals at call time: patching them covers load_file too
        _replace(module, "safe_open", _safe_open)
        _replace(module, "load", lambda original: _load(original, framework))


def enable() -> None:
    """Turn transparent loading on: patch what is imported, and hook what will be."""
    import _pycryptotensors_startup

    _pycryptotensors_startup.install()
    for name in _pycryptotensors_startup.TARGETS:
        if name in sys.modules:
            patch_module(name, sys.modules[name])


def disable() -> None:
    """Turn it off: restore the original functions and remove the hook."""
    import _pycryptotensors_startup

    _pycryptotensors_startup.uninstall()
    for name in _pycryptotensors_startup.TARGETS:
        module = sys.modules.get(name)
        for attribute in PATCHED:
            current = getattr(module, attribute, None) if module is not None else None
            if getattr(current, "__pycryptotensors__", False):
                setattr(module, attribute, current.__wrapped__)  # type: ignore[union-attr]


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
