"""The front-end interface: what a framework must say so that it is a small module.

A framework (``numpy``, ``torch``, ``flax``, ``tensorflow``, ``paddle``, ``mlx``) subclasses
:class:`Frontend` and answers four questions: how to make an array from authenticated bytes and a dtype
(:meth:`~Frontend.from_bytes`), how to get bytes from an array (:meth:`~Frontend.to_bytes`), how to put a
tensor on a device (:meth:`~Frontend.place`), and which ``safetensors`` module reads its plain files
(:attr:`~Frontend.plain_module`). Everything else (options, keys, trust, the handle, the plain-file
fallback, the four save/load functions) is written once, here and in :mod:`pycryptotensors.reading.handle`,
so that the six frameworks cannot drift apart.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar

from .config import SaveOptions, save_options
from .errors import UnsupportedError
from .writing.writer import TensorData, encrypt_bytes, encrypt_file

if TYPE_CHECKING:
    import numpy as np

    from .format.dtypes import DType

# Every framework name safetensors accepts, to the module of ours that serves it.
FRAMEWORKS: dict[str, str] = {
    "np": "numpy",
    "numpy": "numpy",
    "pt": "torch",
    "torch": "torch",
    "pytorch": "torch",
    "flax": "flax",
    "jax": "flax",
    "tf": "tensorflow",
    "tensorflow": "tensorflow",
    "paddle": "paddle",
    "mlx": "mlx",
}


def require(module: str, package: str) -> ModuleType:
    """The framework's module, imported on first use; its absence is an UnsupportedError saying what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise UnsupportedError(
            f"this needs {package}, which is not installed here ({error}): pip install {package}"
        ) from None


def frontend(framework: str) -> Frontend:
    """The front-end for ``framework`` (any name safetensors accepts)."""
    try:
        name = FRAMEWORKS[framework]
    except (KeyError, TypeError):
        raise UnsupportedError(
            f"unsupported framework {framework!r}: use one of {', '.join(sorted(FRAMEWORKS))}"
        ) from None
    module = importlib.import_module(f"pycryptotensors.{name}")
    return module.FRONTEND  # type: ignore[no-any-return]  # every front-end module defines one


class Frontend:
    """One framework's side of loading and saving; subclasses override the four hooks they need."""

    #: the framework name handed to ``safetensors.safe_open`` for plain files
    name: ClassVar[str]
    #: safetensors' module for this framework (``safetensors.<plain_module>``), which reads plain bytes
    plain_module: ClassVar[str]

    # ---------------------------------------------------------------------------------- what a framework says

    def from_bytes(self, data: np.ndarray, dtype: DType, shape: tuple[int, ...]) -> Any:
        """A host tensor of ``dtype`` and ``shape`` over ``data`` (authenticated bytes, uint8, a buffer the
        caller gives away: the tensor may keep it without copying)."""
        raise NotImplementedError

    def to_bytes(self, name: str, tensor: Any) -> TensorData:
        """The tensor's little-endian, C-order bytes with its dtype and shape, to save."""
        raise NotImplementedError

    def place(self, tensor: Any, device: str) -> Any:
        """The tensor on ``device`` (one spelling: :func:`pycryptotensors.config.device_name`)."""
        return tensor

    def check_device(self, device: str) -> None:
        """Refuse a device this framework cannot use here, before any file is opened (plain or encrypted)."""

    def check_tensors(self, tensors: Mapping[str, Any]) -> None:
        """Refuse what safetensors refuses to save for this framework, before anything is encrypted."""

    # ------------------------------------------------------------------------------- written once, for all

    def tensor(self, data: np.ndarray, dtype: DType, shape: tuple[int, ...], device: str) -> Any:
        return self.place(self.from_bytes(data, dtype, shape), device)

    def _all_bytes(self, tensors: Mapping[str, Any]) -> list[TensorData]:
        if not isinstance(tensors, Mapping):
            raise UnsupportedError(f"Expected a dict of [str, tensor] but received {type(tensors)}")
        self.check_tensors(tensors)
        return [self.to_bytes(name, tensor) for name, tensor in tensors.items()]

    def save_file(
        self,
        tensors: Mapping[str, Any],
        filename: str | os.PathLike[str],
        metadata: Mapping[str, str] | None,
        config: SaveOptions | Mapping[str, Any] | None,
    ) -> None:
        encrypt_file(self._all_bytes(tensors), filename, metadata, save_options(config))

    def save(
        self,
        tensors: Mapping[str, Any],
        metadata: Mapping[str, str] | None,
        config: SaveOptions | Mapping[str, Any] | None,
    ) -> bytes:
        return encrypt_bytes(self._all_bytes(tensors), metadata, save_options(config))

    def load_file(
        self, filename: str | os.PathLike[str], device: Any, config: Any, backend: str | None = None
    ) -> dict[str, Any]:
        from .reading.handle import safe_open

        with safe_open(filename, self.name, device=device, config=config, backend=backend) as handle:
            if isinstance(handle, safe_open):
                return handle.get_tensors()  # a remote file's tensors are fetched in parallel
            return {name: handle.get_tensor(name) for name in handle.offset_keys()}  # as safetensors does

    def load_encrypted(self, data: bytes, config: Any, device: Any = "cpu") -> dict[str, Any] | None:
        """Tensors of an encrypted file held in memory, or None when it is plain (the caller delegates)."""
        from .reading.handle import safe_open

        handle = safe_open.from_bytes(data, self.name, config, device=device)
        if handle is None:
            return None
        with handle:
            return {name: handle.get_tensor(name) for name in handle.offset_keys()}

    def load(self, data: bytes, config: Any, **plain_kwargs: Any) -> dict[str, Any]:
        """``load(bytes)``: ours for an encrypted file, safetensors' own module for a plain one."""
        from .reading.handle import plain_errors, unwrapped

        result = self.load_encrypted(data, config, plain_kwargs.get("device", "cpu"))
        if result is not None:
            return result
        plain = importlib.import_module(f"safetensors.{self.plain_module}")
        with plain_errors():
            loaded: dict[str, Any] = unwrapped(plain.load)(bytes(data), **plain_kwargs)
            return loaded
