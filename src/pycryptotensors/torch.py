"""PyTorch front-end: ``save_file``, ``save``, ``load_file``, ``load``, as in ``safetensors.torch``.

Tensors are built over NumPy-allocated buffers (``torch.from_numpy``), which decrypt several times faster
than fresh torch allocations (fewer page faults), and moved to ``device`` afterwards.

As ``safetensors.torch``: F4 (``float4_e2m1fn_x2``, two values a byte) has a last dimension half the file's;
saving refuses shared tensors (:class:`~pycryptotensors.SharedTensorsError`, a ``RuntimeError``) and
non-contiguous or sparse ones (:class:`~pycryptotensors.UnsupportedError`, a ``ValueError``), with
safetensors' messages; and ``device`` is checked before a file is opened (:class:`~pycryptotensors.DeviceError`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from . import _frontend
from .config import LoadOptions, SaveOptions
from .errors import DeviceError, SharedTensorsError, UnsupportedError
from .format.dtypes import DTYPES, DType
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
    "F4": torch.float4_e2m1fn_x2,  # packed pairs: the torch shape's last dimension is half the file's
}
_F4 = torch.float4_e2m1fn_x2
_SHARED = (
    "\n            Some tensors share memory, this will lead to duplicate memory on disk and potential differences"
    " when loading them again: {}.\n            A potential way to correctly save your model is to use"
    " `save_model`.\n            More information at"
    " https://huggingface.co/docs/safetensors/torch_shared_tensors\n            "
)
_NON_CONTIGUOUS = (
    "You are trying to save a non contiguous tensor: `{}` which is not allowed. It either means you are trying to"
    " save tensors which are reference of each other in which case it's recommended to save only the full"
    " tensors, and reslice at load time, or simply call `.contiguous()` on your tensor to pack it before saving."
)
_BY_TORCH = {t: DTYPES[name] for name, t in _TORCH_TYPES.items()}


def to_tensor(data: np.ndarray, dtype: DType, shape: tuple[int, ...], device: str = "cpu") -> torch.Tensor:
    """View authenticated bytes (uint8, owned by the caller) as a tensor of ``dtype`` and ``shape``."""
    try:
        torch_dtype = _TORCH_TYPES[dtype.name]
    except KeyError:
        raise UnsupportedError(f"{dtype.name} has no torch type supported here") from None
    if torch_dtype is _F4:
        if not shape or shape[-1] % 2:
            raise UnsupportedError(f"F4 tensor of shape {list(shape)}: torch packs F4 in pairs along the last axis")
        shape = (*shape[:-1], shape[-1] // 2)
    if data.size == 0:  # torch cannot reinterpret an empty byte tensor (stride 0)
        tensor = torch.empty(shape, dtype=torch_dtype)
    else:
        tensor = torch.from_numpy(data).view(torch_dtype).reshape(shape)
    return tensor if device in ("cpu", "") else tensor.to(device)


def check_device(device: str) -> None:
    """Refuse a device torch cannot use here, before any file is opened (plain and encrypted alike)."""
    if device != "cpu":
        try:
            torch.empty(0, device=device)
        except (RuntimeError, AssertionError) as error:
            raise DeviceError(f"device {device!r} is not available here: {error}") from None


def _span(tensor: torch.Tensor) -> tuple[int, int]:
    start = tensor.data_ptr()
    return start, start + tensor.numel() * tensor.element_size()


def check_tensors(tensors: Mapping[str, Any]) -> None:
    """Refuse what ``safetensors.torch`` refuses, before anything is encrypted: non-tensors, sparse tensors,
    and tensors whose memory overlaps (the same storage twice would be saved twice and load as two)."""
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise UnsupportedError(f"Key `{name}` is invalid, expected torch.Tensor but received {type(tensor)}")
    sparse = [name for name, tensor in tensors.items() if tensor.layout != torch.strided]
    if sparse:
        raise UnsupportedError(
            f"You are trying to save a sparse tensors: `{sparse}` which this library does not support. You can make"
            " it a dense tensor before saving with `.to_dense()` but be aware this might make a much larger file"
            " than needed."
        )
    by_storage: dict[tuple[Any, int], list[tuple[int, int, str]]] = {}
    for name, tensor in tensors.items():
        if tensor.device.type == "meta" or tensor.numel() == 0:
            continue
        storage = tensor.untyped_storage()
        if storage.data_ptr() != 0 and storage.nbytes() != 0:
            by_storage.setdefault((tensor.device, storage.data_ptr()), []).append((*_span(tensor), name))
    failing = []
    for areas in by_storage.values():
        areas.sort()
        group, last_stop = {areas[0][2]}, areas[0][1]
        for start, stop, name in areas[1:]:
            if start < last_stop:
                group.add(name)
            else:
                if len(group) > 1:
                    failing.append(group)
                group = {name}
            last_stop = max(last_stop, stop)
        if len(group) > 1:
            failing.append(group)
    if failing:
        raise SharedTensorsError(_SHARED.format(failing))


def to_data(name: str, tensor: Any) -> TensorData:
    if not isinstance(tensor, torch.Tensor):
        raise UnsupportedError(f"Key `{name}` is invalid, expected torch.Tensor but received {type(tensor)}")
    dtype = _BY_TORCH.get(tensor.dtype)
    if dtype is None:
        raise UnsupportedError(f"tensor {name!r}: dtype {tensor.dtype} cannot be stored in safetensors")
    if tensor.layout != torch.strided:
        raise UnsupportedError(f"tensor {name!r}: only dense tensors can be saved")
    if not tensor.is_contiguous():
        raise UnsupportedError(_NON_CONTIGUOUS.format(name))
    shape = tuple(tensor.shape)
    if tensor.dtype is _F4:
        if not shape:
            raise UnsupportedError(f"tensor {name!r}: a 0-d float4_e2m1fn_x2 tensor has no F4 shape")
        shape = (*shape[:-1], shape[-1] * 2)
    flat = tensor.detach().to("cpu").reshape(-1).view(torch.uint8)
    return TensorData(name, dtype, shape, memoryview(flat.numpy()))


def save_file(
    tensors: Mapping[str, torch.Tensor],
    filename: str | os.PathLike[str],
    metadata: Mapping[str, str] | None = None,
    config: SaveOptions | Mapping[str, Any] | None = None,
) -> None:
    """Encrypt and sign ``tensors`` into ``filename`` (written atomically)."""
    _frontend.save_file(tensors, filename, metadata, config, sys.modules[__name__])


def save(
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
    config: SaveOptions | Mapping[str, Any] | None = None,
) -> bytes:
    """Encrypt and sign ``tensors`` into the bytes of a file."""
    return _frontend.save(tensors, metadata, config, sys.modules[__name__])


def load_file(
    filename: str | os.PathLike[str],
    device: str | int | torch.device = "cpu",
    config: LoadOptions | Mapping[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """Every tensor of a CryptoTensors or plain safetensors file."""
    return _frontend.load_file(filename, "pt", device, config)


def load(data: bytes, config: LoadOptions | Mapping[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of a file held in memory; raises on any failure, never returns unauthenticated bytes."""
    return _frontend.load_or_plain(data, "pt", config)
