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
from .config import LoadConfig, SaveConfig
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


def _tensor(data: np.ndarray, dtype: DType, shape: tuple[int, ...], device: str) -> Any:
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


def _place(device: str) -> str:
    return "cpu" if device == "cpu" else device.replace("cuda", "gpu")


class PaddleFrontend(_frontend.Frontend):
    name, plain_module = "paddle", "paddle"

    def from_bytes(self, data: np.ndarray, dtype: DType, shape: tuple[int, ...]) -> Any:
        return _tensor(data, dtype, shape, "cpu")

    def tensor(self, data: np.ndarray, dtype: DType, shape: tuple[int, ...], device: str) -> Any:
        return _tensor(data, dtype, shape, device)  # built on the device at once: Paddle places at creation

    def place(self, tensor: Any, device: str) -> Any:
        return tensor if device == "cpu" else tensor.to(_place(device))

    def to_bytes(self, name: str, tensor: Any) -> TensorData:
        dtype = _types()[1].get(getattr(tensor, "dtype", None))
        if dtype is None:
            raise UnsupportedError(
                f"tensor {name!r}: {type(tensor).__name__} of dtype "
                f"{getattr(tensor, 'dtype', '?')} cannot be stored in safetensors"
            )
        array = np.ascontiguousarray(tensor.cpu().numpy()).reshape(-1)  # bf16 comes as uint16, f8 as int8: same bits
        return TensorData(name, dtype, tuple(tensor.shape), array.view(np.uint8).data)


FRONTEND = PaddleFrontend()


__all__ = ["save_file", "save", "load_file", "load"]  # the public names (docs/API.md)


def save_file(
    tensors: Mapping[str, Any],
    filename: str | os.PathLike[str],
    metadata: Mapping[str, str] | None = None,
    config: SaveConfig = None,
) -> None:
    """Encrypt and sign Paddle tensors into ``filename``, written atomically (a temporary file renamed into place).

    Args:
        tensors: Paddle tensors by name.
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
    tensors: Mapping[str, Any],
    metadata: Mapping[str, str] | None = None,
    config: SaveConfig = None,
) -> bytes:
    """Encrypt and sign Paddle tensors into the bytes of a file.

    Args:
        tensors: Paddle tensors by name.
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
    device: Any = "cpu",
    config: LoadConfig = None,
    *,
    backend: str | None = None,
) -> dict[str, Any]:
    """Every tensor of a CryptoTensors file, or of a plain safetensors file (read by safetensors itself).

    Args:
        filename: a path, or for an encrypted file an ``s3://``, ``gs://``, ``az://``, ``hf://`` or
            ``https://`` URL (read by range requests).
        device: ``"cpu"``, ``"cuda:N"``, an index (``0`` is ``"cuda:0"``); the same for plain and encrypted files.
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


def load(data: bytes, device: Any = "cpu", config: LoadConfig = None) -> dict[str, Any]:
    """Every tensor of a file held in memory; never returns bytes that failed authentication.

    Args:
        data: the bytes of a whole file (encrypted or plain).
        device: ``"cpu"``, ``"cuda:N"``, an index (``0`` is ``"cuda:0"``); the same for plain and encrypted files.
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
    return FRONTEND.load(data, config, device=device)
