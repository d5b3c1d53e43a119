"""PaddlePaddle front-end: ``save_file``, ``save``, ``load_file``, ``load``, as in ``safetensors.paddle``.

Paddle reads NumPy ``uint16`` as bfloat16 and refuses ``uint32``/``uint64`` arrays, so tensors are built
from the authenticated bytes as ``uint8`` and reinterpreted (``Tensor.view(dtype)``): every Paddle type
safetensors has a name for loads exactly (F8_E8M0 and F4 have no Paddle type). Paddle is imported on first use.
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
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16", "F16": "float16",
    "BF16": "bfloat16", "U32": "uint32", "I32": "int32", "F32": "float32", "U64": "uint64", "I64": "int64",
    "F64": "float64", "C64": "complex64", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}  # fmt: skip


_CARRIERS = {"BOOL": np.dtype(np.bool_), "C64": np.dtype(np.complex64), "F32": np.dtype(np.float32),
             "F64": np.dtype(np.float64), "F16": np.dtype(np.float16)}  # fmt: skip


@functools.cache
def _types() -> tuple[dict[str, Any], dict[Any, DType]]:
    paddle = _frontend.require("paddle", "paddlepaddle")

    types = {name: getattr(paddle, attr) for name, attr in _NAMES.items() if hasattr(paddle, attr)}
    return types, {t: DTYPES[name] for name, t in types.items()}


def _place(device: str) -> str:
    return "cpu" if device == "cpu" else device.replace("cuda", "gpu")


def to_tensor(data: np.ndarray, dtype: DType, shape: tuple[int, ...], device: str = "cpu") -> Any:
    paddle = _frontend.require("paddle", "paddlepaddle")

    try:
        target = _types()[0][dtype.name]
    except KeyError:
        raise UnsupportedError(f"{dtype.name} has no Paddle type (use framework='np' or 'pt')") from None
    # a NumPy type Paddle takes as is, of the same width; then a same-width view (no reshape: Paddle has no
    # reshape kernel for the unsigned types)
    carrier = _CARRIERS.get(dtype.name) or np.dtype(f"i{dtype.itemsize}" if dtype.itemsize > 1 else "u1")
    array = np.ascontiguousarray(data).view(carrier).reshape(shape)
    # on the CPU zero-copy: the bytes are ours alone (a fresh buffer per tensor) and DLPack keeps them alive
    tensor = paddle.from_dlpack(array) if device == "cpu" else paddle.to_tensor(array, place=_place(device))
    return tensor if tensor.dtype == target else tensor.view(target)


def to_data(name: str, tensor: Any) -> TensorData:
    dtype = _types()[1].get(getattr(tensor, "dtype", None))
    if dtype is None:
        raise UnsupportedError(
            f"tensor {name!r}: {type(tensor).__name__} of dtype "
            f"{getattr(tensor, 'dtype', '?')} cannot be stored in safetensors"
        )
    array = np.ascontiguousarray(tensor.cpu().numpy()).reshape(-1)  # bf16 comes as uint16, f8 as int8: same bits
    return TensorData(name, dtype, tuple(tensor.shape), memoryview(array.view(np.uint8)))


def save_file(
    tensors: Mapping[str, Any],
    filename: str | os.PathLike[str],
    metadata: Mapping[str, str] | None = None,
    config: SaveOptions | Mapping[str, Any] | None = None,
) -> None:
    """Encrypt and sign Paddle tensors into ``filename`` (written atomically)."""
    _frontend.save_file(tensors, filename, metadata, config, to_data)


def save(
    tensors: Mapping[str, Any],
    metadata: Mapping[str, str] | None = None,
    config: SaveOptions | Mapping[str, Any] | None = None,
) -> bytes:
    """Encrypt and sign Paddle tensors into the bytes of a file."""
    return _frontend.save(tensors, metadata, config, to_data)


def load_file(
    filename: str | os.PathLike[str],
    device: Any = "cpu",
    config: LoadOptions | Mapping[str, Any] | None = None,
    *,
    backend: str | None = None,
) -> dict[str, Any]:
    """Every tensor of a CryptoTensors or plain safetensors file."""
    return _frontend.load_file(filename, "paddle", device, config, backend)


def load(data: bytes, device: Any = "cpu", config: LoadOptions | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every tensor of a file held in memory; raises on any failure, never returns unauthenticated bytes."""
    return _frontend.load_or_plain(data, "paddle", config, device=device)
