"""MLX front-end: ``save_file``, ``save``, ``load_file``, ``load``, as in ``safetensors.mlx`` (on Linux,
the CPU build ``mlx[cpu]``).

Arrays are built from the authenticated bytes as ``uint8`` and reinterpreted (``array.view(dtype)``), so
BF16 and F64 load exactly (``mx.array`` of a float64 NumPy array would give float32). MLX has no F8 or F4
type. MLX is imported on first use.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import _frontend
from .config import LoadOptions, SaveOptions
from .errors import UnsupportedError
from .format.dtypes import DTYPES, DType
from .writing.writer import TensorData

_NAMES = {
    "BOOL": "bool_", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16", "F16": "float16",
    "BF16": "bfloat16", "U32": "uint32", "I32": "int32", "F32": "float32", "U64": "uint64", "I64": "int64",
    "F64": "float64", "C64": "complex64",
}  # fmt: skip


@functools.cache
def _types() -> tuple[dict[str, Any], dict[Any, DType]]:
    mx = _frontend.require("mlx.core", "mlx[cpu]")

    types = {name: getattr(mx, attr) for name, attr in _NAMES.items() if hasattr(mx, attr)}
    return types, {t: DTYPES[name] for name, t in types.items()}


def to_tensor(data: np.ndarray, dtype: DType, shape: tuple[int, ...], device: str = "cpu") -> Any:
    mx = _frontend.require("mlx.core", "mlx[cpu]")

    try:
        target = _types()[0][dtype.name]
    except KeyError:
        raise UnsupportedError(f"{dtype.name} has no MLX type (use framework='np' or 'pt')") from None
    return mx.array(np.ascontiguousarray(data).reshape(-1)).view(target).reshape(shape)


def to_data(name: str, array: Any) -> TensorData:
    mx = _frontend.require("mlx.core", "mlx[cpu]")

    dtype = _types()[1].get(getattr(array, "dtype", None))
    if dtype is None:
        raise UnsupportedError(
            f"tensor {name!r}: {type(array).__name__} of dtype "
            f"{getattr(array, 'dtype', '?')} cannot be stored in safetensors"
        )
    if dtype.name == "BF16":  # NumPy has no bfloat16 buffer format: take the bits as uint16
        array = array.view(mx.uint16)
    flat = np.ascontiguousarray(np.array(array, copy=False)).reshape(-1)
    return TensorData(name, dtype, tuple(array.shape), memoryview(flat.view(np.uint8)))


def save_file(
    tensors: Mapping[str, Any],
    filename: str | os.PathLike[str],
    metadata: Mapping[str, str] | None = None,
    config: SaveOptions | Mapping[str, Any] | None = None,
) -> None:
    """Encrypt and sign MLX arrays into ``filename`` (written atomically)."""
    _frontend.save_file(tensors, filename, metadata, config, to_data)


def save(
    tensors: Mapping[str, Any],
    metadata: Mapping[str, str] | None = None,
    config: SaveOptions | Mapping[str, Any] | None = None,
) -> bytes:
    """Encrypt and sign MLX arrays into the bytes of a file."""
    return _frontend.save(tensors, metadata, config, to_data)


def load_file(
    filename: str | os.PathLike[str],
    config: LoadOptions | Mapping[str, Any] | None = None,
    *,
    backend: str | None = None,
) -> dict[str, Any]:
    """Every array of a CryptoTensors or plain safetensors file."""
    return _frontend.load_file(filename, "mlx", "cpu", config, backend)


def load(data: bytes, config: LoadOptions | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every array of a file held in memory; raises on any failure, never returns unauthenticated bytes."""
    return _frontend.load_or_plain(data, "mlx", config)
