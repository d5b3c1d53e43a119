"""PyTorch front-end: ``save_file``, ``save``, ``load_file``, ``load``, as in ``safetensors.torch``.

Tensors are built over NumPy-allocated buffers (``torch.from_numpy``), which decrypt several times faster
than fresh torch allocations (fewer page faults), and moved to ``device`` afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from . import _frontend
from .config import LoadOptions, SaveOptions
from .errors import UnsupportedError
from .format.dtypes import DTYPES, DType
from .reading.handle import plain_errors, unwrapped
from .writing.writer import TensorData

_TORCH_TYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "U16": torch.uint16,
    "I16": torch.int16,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "U32": torch.uint32,
    "I32": torch.int32,
    "F32": torch.float32,
    "U64": torch.uint64,
    "I64": torch.int64,
    "F64": torch.float64,
    "C64": torch.complex64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "F8_E8M0": torch.float8_e8m0fnu,
}
_BY_TORCH = {t: DTYPES[name] for name, t in _TORCH_TYPES.items()}


def to_tensor(data: np.ndarray, dtype: DType, shape: tuple[int, ...], device: str = "cpu") -> torch.Tensor:
    """View authenticated bytes (uint8, owned by the caller) as a tensor of ``dtype`` and ``shape``."""
    try:
        torch_dtype = _TORCH_TYPES[dtype.name]
    except KeyError:
        raise UnsupportedError(f"{dtype.name} has no torch type supported here") from None
    if data.size == 0:  # torch cannot reinterpret an empty byte tensor (stride 0)
        tensor = torch.empty(shape, dtype=torch_dtype)
    else:
        tensor = torch.from_numpy(data).view(torch_dtype).reshape(shape)
    return tensor if device in ("cpu", "") else tensor.to(device)


def to_data(name: str, tensor: Any) -> TensorData:
    if not isinstance(tensor, torch.Tensor):
        raise UnsupportedError(f"tensor {name!r}: expected a torch.Tensor, got {type(tensor).__name__}")
    dtype = _BY_TORCH.get(tensor.dtype)
    if dtype is None:
        raise UnsupportedError(f"tensor {name!r}: dtype {tensor.dtype} cannot be stored in safetensors")
    if tensor.layout != torch.strided:
        raise UnsupportedError(f"tensor {name!r}: only dense tensors can be saved")
    flat = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
    return TensorData(name, dtype, tuple(tensor.shape), memoryview(flat.numpy()))


def save_file(
    tensors: Mapping[str, torch.Tensor],
    filename: str | os.PathLike[str],
    metadata: Mapping[str, str] | None = None,
    config: SaveOptions | Mapping[str, Any] | None = None,
) -> None:
    """Encrypt and sign ``tensors`` into ``filename`` (written atomically)."""
    _frontend.save_file(tensors, filename, metadata, config, to_data)


def save(
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
    config: SaveOptions | Mapping[str, Any] | None = None,
) -> bytes:
    """Encrypt and sign ``tensors`` into the bytes of a file."""
    return _frontend.save(tensors, metadata, config, to_data)


def load_file(
    filename: str | os.PathLike[str], device: str | int = "cpu", config: LoadOptions | Mapping[str, Any] | None = None
) -> dict[str, torch.Tensor]:
    """Every tensor of a CryptoTensors or plain safetensors file."""
    return _frontend.load_file(filename, "pt", str(device), config)


def load(data: bytes, config: LoadOptions | Mapping[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of a file held in memory; raises on any failure, never returns unauthenticated bytes."""
    result = _frontend.load(data, "pt", config)
    if result is None:
        import safetensors.torch

        with plain_errors():
            return unwrapped(safetensors.torch.load)(bytes(data))
    return result
