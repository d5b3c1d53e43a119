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
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from . import _frontend
from .config import LoadConfig, SaveConfig
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


def _span(tensor: torch.Tensor) -> tuple[int, int]:
    start = tensor.data_ptr()
    return start, start + tensor.numel() * tensor.element_size()


def _check_tensors(tensors: Mapping[str, Any]) -> None:
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


def _to_bytes(name: str, tensor: Any) -> TensorData:
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
    return TensorData(name, dtype, shape, flat.numpy().data)


class TorchFrontend(_frontend.Frontend):
    name, plain_module = "pt", "torch"

    def from_bytes(self, data: np.ndarray, dtype: DType, shape: tuple[int, ...]) -> torch.Tensor:
        """A tensor over the authenticated bytes (no copy)."""
        try:
            torch_dtype = _TORCH_TYPES[dtype.name]
        except KeyError:
            raise UnsupportedError(f"{dtype.name} has no torch type supported here") from None
        if torch_dtype is _F4:
            if not shape or shape[-1] % 2:
                raise UnsupportedError(
                    f"F4 tensor of shape {list(shape)}: torch packs F4 in pairs along the last axis"
                )
            shape = (*shape[:-1], shape[-1] // 2)
        if data.size == 0:  # torch cannot reinterpret an empty byte tensor (stride 0)
            return torch.empty(shape, dtype=torch_dtype)
        return torch.from_numpy(data).view(torch_dtype).reshape(shape)

    def place(self, tensor: torch.Tensor, device: str) -> torch.Tensor:
        return tensor if device in ("cpu", "") else tensor.to(device)

    def check_device(self, device: str) -> None:
        if device != "cpu":
            try:
                torch.empty(0, device=device)
            except (RuntimeError, AssertionError) as error:
                raise DeviceError(f"device {device!r} is not available here: {error}") from None

    def check_tensors(self, tensors: Mapping[str, Any]) -> None:
        _check_tensors(tensors)

    def to_bytes(self, name: str, tensor: Any) -> TensorData:
        return _to_bytes(name, tensor)


FRONTEND = TorchFrontend()


__all__ = ["save_file", "save", "load_file", "load"]  # the public names (docs/API.md)


def save_file(
    tensors: Mapping[str, torch.Tensor],
    filename: str | os.PathLike[str],
    metadata: Mapping[str, str] | None = None,
    config: SaveConfig = None,
) -> None:
    """Encrypt and sign torch tensors into ``filename``, written atomically (a temporary file renamed into place).

    Args:
        tensors: torch tensors by name.
        filename: the file to write (its parent folder must exist).
        metadata: user metadata (str to str), stored in the signed header.
        config: the keys and choices for encryption: the reference's dict (``enc_key``, ``sign_key``, ``tensors``,
            ``chunk_size``, ``version``, ``policy``, ``enc_kid``, ``sign_kid``, ``enc_jku``, ``sign_jku``) or
            :class:`~pycryptotensors.SaveOptions`; keys not given come from ``CRYPTOTENSOR_KEYS``.

    Raises:
        MissingKeyError: no master key or signing key was given or found.
        ConfigError: an unknown or invalid option.
        UnsupportedError: a dtype this format cannot store, or an invalid tensor (as safetensors refuses it).
    """
    FRONTEND.save_file(tensors, filename, metadata, config)


def save(
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
    config: SaveConfig = None,
) -> bytes:
    """Encrypt and sign torch tensors into the bytes of a file.

    Args:
        tensors: torch tensors by name.
        metadata: user metadata (str to str), stored in the signed header.
        config: the keys and choices for encryption: the reference's dict (``enc_key``, ``sign_key``, ``tensors``,
            ``chunk_size``, ``version``, ``policy``, ``enc_kid``, ``sign_kid``, ``enc_jku``, ``sign_jku``) or
            :class:`~pycryptotensors.SaveOptions`; keys not given come from ``CRYPTOTENSOR_KEYS``.

    Returns:
        The bytes of the CryptoTensors file.

    Raises:
        MissingKeyError: no master key or signing key was given or found.
        ConfigError: an unknown or invalid option.
        UnsupportedError: a dtype this format cannot store, or an invalid tensor (as safetensors refuses it).
    """
    return FRONTEND.save(tensors, metadata, config)


def load_file(
    filename: str | os.PathLike[str],
    device: str | int | torch.device = "cpu",
    config: LoadConfig = None,
    *,
    backend: str | None = None,
) -> dict[str, torch.Tensor]:
    """Every tensor of a CryptoTensors file, or of a plain safetensors file (read by safetensors itself).

    Args:
        filename: a path, or for an encrypted file an ``s3://``, ``gs://``, ``az://``, ``hf://`` or
            ``https://`` URL (read by range requests).
        device: ``"cpu"``, ``"cuda:N"``, an index (``0`` is ``"cuda:0"``), a ``torch.device``; the same for plain
            and encrypted files.
        config: the keys and trust for decryption: the reference's dict, a :class:`~pycryptotensors.KeyRing` or
            :class:`~pycryptotensors.LoadOptions`; keys not given come from ``CRYPTOTENSOR_KEYS``, key directories and
            key providers (docs/KEYS.md).
        backend: passed on to safetensors for plain files (``"mmap"`` or ``"pread"``); ignored for encrypted ones.

    Returns:
        The tensors by name, in the file's data order.

    Raises:
        FormatError: a malformed file.
        SignatureError: the header's signature does not verify under a trusted key.
        IntegrityError: a tensor failed authentication (the file was modified).
        MissingKeyError, WrongKeyError: no key, or a wrong key, for this file.
        PolicyDeniedError: the file's policy denied this load.
        NotEncryptedError: a plain file where encryption is required.
    """
    return FRONTEND.load_file(filename, device, config, backend)


def load(data: bytes, config: LoadConfig = None) -> dict[str, torch.Tensor]:
    """Every tensor of a file held in memory; never returns bytes that failed authentication.

    Args:
        data: the bytes of a whole file (encrypted or plain).
        config: the keys and trust for decryption: the reference's dict, a :class:`~pycryptotensors.KeyRing` or
            :class:`~pycryptotensors.LoadOptions`; keys not given come from ``CRYPTOTENSOR_KEYS``, key directories and
            key providers (docs/KEYS.md).

    Returns:
        The tensors by name.

    Raises:
        FormatError: a malformed file.
        SignatureError: the header's signature does not verify under a trusted key.
        IntegrityError: a tensor failed authentication (the file was modified).
        MissingKeyError, WrongKeyError: no key, or a wrong key, for this file.
        PolicyDeniedError: the file's policy denied this load.
        NotEncryptedError: a plain file where encryption is required.
    """
    return FRONTEND.load(data, config)
