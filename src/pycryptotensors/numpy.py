"""NumPy front-end: ``save_file``, ``save``, ``load_file``, ``load``, as in ``safetensors.numpy``.

BF16 and the F8 types have no NumPy dtype of their own; they load as ``ml_dtypes`` types when that package
is installed, and raise :class:`~pycryptotensors.UnsupportedError` otherwise (safetensors raises too).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import _frontend
from .config import LoadOptions, SaveOptions
from .errors import UnsupportedError
from .format.dtypes import DTYPES, DType
from .writing.writer import TensorData

_NUMPY_TYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "U8": np.uint8,
    "I8": np.int8,
    "U16": np.uint16,
    "I16": np.int16,
    "F16": np.float16,
    "U32": np.uint32,
    "I32": np.int32,
    "F32": np.float32,
    "U64": np.uint64,
    "I64": np.int64,
    "F64": np.float64,
    "C64": np.complex64,
}
try:  # optional: NumPy types for BF16 and F8
    import ml_dtypes

    _NUMPY_TYPES.update(
        {
            "BF16": ml_dtypes.bfloat16,
            "F8_E4M3": ml_dtypes.float8_e4m3fn,
            "F8_E5M2": ml_dtypes.float8_e5m2,
            "F8_E8M0": ml_dtypes.float8_e8m0fnu,
        }
    )
except ImportError:  # pragma: no cover - depends on the environment
    pass
_BY_NUMPY = {np.dtype(t): DTYPES[name] for name, t in _NUMPY_TYPES.items()}


def _numpy_dtype(dtype: DType) -> np.dtype:
    try:
        return np.dtype(_NUMPY_TYPES[dtype.name])
    except KeyError:
        raise UnsupportedError(
            f"{dtype.name} has no NumPy type here (install ml_dtypes, or use framework='pt')"
        ) from None


def to_tensor(data: np.ndarray, dtype: DType, shape: tuple[int, ...], device: str = "cpu") -> np.ndarray:
    """View authenticated bytes (uint8, owned by the caller) as an array of ``dtype`` and ``shape``."""
    return data.view(_numpy_dtype(dtype)).reshape(shape)


def to_data(name: str, array: Any) -> TensorData:
    array = np.asarray(array)
    dtype = _BY_NUMPY.get(array.dtype.newbyteorder("=") if array.dtype.byteorder == ">" else array.dtype)
    if dtype is None:
        raise UnsupportedError(f"tensor {name!r}: dtype {array.dtype} cannot be stored in safetensors")
    if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and sys.byteorder == "big"):
        array = array.astype(array.dtype.newbyteorder("<"))
    if not array.flags.c_contiguous:
        array = array.copy(order="C")  # not ascontiguousarray: it turns 0-d arrays into 1-d ones
    return TensorData(name, dtype, tuple(array.shape), memoryview(array.reshape(-1).view(np.uint8)))


def save_file(
    tensors: Mapping[str, np.ndarray],
    filename: str | os.PathLike[str],
    metadata: Mapping[str, str] | None = None,
    config: SaveOptions | Mapping[str, Any] | None = None,
) -> None:
    """Encrypt and sign ``tensors`` into ``filename`` (written atomically)."""
    _frontend.save_file(tensors, filename, metadata, config, to_data)


def save(
    tensors: Mapping[str, np.ndarray],
    metadata: Mapping[str, str] | None = None,
    config: SaveOptions | Mapping[str, Any] | None = None,
) -> bytes:
    """Encrypt and sign ``tensors`` into the bytes of a file."""
    return _frontend.save(tensors, metadata, config, to_data)


def load_file(
    filename: str | os.PathLike[str], device: Any = "cpu", config: LoadOptions | Mapping[str, Any] | None = None
) -> dict[str, np.ndarray]:
    """Every tensor of a CryptoTensors or plain safetensors file."""
    return _frontend.load_file(filename, "np", device, config)


def load(data: bytes, config: LoadOptions | Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Every tensor of a file held in memory; raises on any failure, never returns unauthenticated bytes."""
    return _frontend.load_or_plain(data, "np", config)
