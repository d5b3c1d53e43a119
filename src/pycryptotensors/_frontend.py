"""What every framework front-end shares, so that a framework is a small module.

A front-end module (``numpy``, ``torch``, ``flax``, ``tensorflow``, ``paddle``, ``mlx``) provides:

* ``to_tensor(data, dtype, shape, device)``: a tensor over authenticated bytes (uint8 NumPy array it may keep);
* ``to_data(name, tensor)``: the tensor's little-endian bytes, dtype and shape, to save;
* optionally ``check_tensors(tensors)`` (refuse what safetensors refuses, e.g. shared torch tensors) and
  ``check_device(device)`` (refuse a device that is not there, the same way for plain and encrypted files).

The save/load functions below and :class:`~pycryptotensors.reading.handle.safe_open` do the rest: options,
keys, the plain-file fallback to safetensors' own module for the framework.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any, Protocol

from .config import SaveOptions, save_options
from .errors import UnsupportedError
from .writing.writer import TensorData, encrypt_bytes, encrypt_file

# Every framework name safetensors accepts, to our front-end module and safetensors' module for plain data.
FRAMEWORKS: dict[str, tuple[str, str]] = {
    "np": ("numpy", "numpy"),
    "numpy": ("numpy", "numpy"),
    "pt": ("torch", "torch"),
    "torch": ("torch", "torch"),
    "pytorch": ("torch", "torch"),
    "flax": ("flax", "flax"),
    "jax": ("flax", "flax"),
    "tf": ("tensorflow", "tensorflow"),
    "tensorflow": ("tensorflow", "tensorflow"),
    "paddle": ("paddle", "paddle"),
    "mlx": ("mlx", "mlx"),
}


class Frontend(Protocol):
    """The functions of a front-end module that the handle and the save/load functions call."""

    def to_tensor(self, data: Any, dtype: Any, shape: tuple[int, ...], device: str = "cpu") -> Any: ...

    def to_data(self, name: str, tensor: Any) -> TensorData: ...


def require(module: str, package: str) -> ModuleType:
    """The framework's module, imported on first use; its absence is an UnsupportedError saying what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise UnsupportedError(
            f"this needs {package}, which is not installed here ({error}): pip install {package}"
        ) from None


def frontend(framework: str) -> ModuleType:
    """The front-end module that builds tensors for ``framework`` (any name safetensors accepts)."""
    try:
        name = FRAMEWORKS[framework][0]
    except (KeyError, TypeError):
        raise UnsupportedError(
            f"unsupported framework {framework!r}: use one of {', '.join(sorted(FRAMEWORKS))}"
        ) from None
    return importlib.import_module(f"pycryptotensors.{name}")


def _to_data_all(tensors: Mapping[str, Any], module: Callable[[str, Any], TensorData] | ModuleType) -> list[TensorData]:
    if not isinstance(tensors, Mapping):
        raise UnsupportedError(f"Expected a dict of [str, tensor] but received {type(tensors)}")
    if isinstance(module, ModuleType):
        check = getattr(module, "check_tensors", None)
        if check is not None:
            check(tensors)
        to_data = module.to_data
    else:
        to_data = module
    return [to_data(name, t) for name, t in tensors.items()]


def save_file(
    tensors: Mapping[str, Any],
    path: str | os.PathLike[str],
    metadata: Mapping[str, str] | None,
    config: SaveOptions | Mapping[str, Any] | None,
    to_data: Callable[[str, Any], TensorData] | ModuleType,
) -> None:
    """``to_data`` is the front-end module (or, as before, its ``to_data`` function)."""
    options = save_options(config)
    encrypt_file(_to_data_all(tensors, to_data), path, metadata, options)


def save(
    tensors: Mapping[str, Any],
    metadata: Mapping[str, str] | None,
    config: SaveOptions | Mapping[str, Any] | None,
    to_data: Callable[[str, Any], TensorData] | ModuleType,
) -> bytes:
    options = save_options(config)
    return encrypt_bytes(_to_data_all(tensors, to_data), metadata, options)


def load_file(
    path: str | os.PathLike[str], framework: str, device: Any, config: Any, backend: str | None = None
) -> dict[str, Any]:
    from .reading.handle import safe_open

    with safe_open(path, framework, device=device, config=config, backend=backend) as handle:
        return handle.get_tensors()  # in offset order; a remote file's tensors are fetched in parallel


def load(data: bytes, framework: str, config: Any, device: Any = "cpu") -> dict[str, Any] | None:
    """Tensors of an encrypted file held in memory, or None when it is plain (the caller delegates)."""
    from .reading.handle import safe_open

    handle = safe_open.from_bytes(data, framework, config, device=device)
    if handle is None:
        return None
    with handle:
        return {name: handle.get_tensor(name) for name in handle.offset_keys()}


def load_or_plain(data: bytes, framework: str, config: Any, **plain_kwargs: Any) -> dict[str, Any]:
    """``load(bytes)`` for any framework: ours for an encrypted file, safetensors' own module for a plain one."""
    from .reading.handle import plain_errors, unwrapped

    result = load(data, framework, config, plain_kwargs.get("device", "cpu"))
    if result is not None:
        return result
    plain = importlib.import_module(f"safetensors.{FRAMEWORKS[framework][1]}")
    with plain_errors():
        return unwrapped(plain.load)(bytes(data), **plain_kwargs)  # type: ignore[no-any-return]
