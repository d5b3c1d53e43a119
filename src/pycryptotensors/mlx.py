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
from .config import LoadConfig, SaveConfig
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


class MlxFrontend(_frontend.Frontend):
    name, plain_module = "mlx", "mlx"

    def from_bytes(self, data: np.ndarray, dtype: DType, shape: tuple[int, ...]) -> Any:
        mx = _frontend.require("mlx.core", "mlx[cpu]")
        try:
            target = _types()[0][dtype.name]
        except KeyError:
            raise UnsupportedError(f"{dtype.name} has no MLX type (use framework='np' or 'pt')") from None
        return mx.array(np.ascontiguousarray(data).reshape(-1)).view(target).reshape(shape)

    def to_bytes(self, name: str, array: Any) -> TensorData:
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
        return TensorData(name, dtype, tuple(array.shape), flat.view(np.uint8).data)


FRONTEND = MlxFrontend()


__all__ = ["save_file", "save", "load_file", "load"]  # the public names (docs/API.md)


def save_file(
    tensors: Mapping[str, Any],
    filename: str | os.PathLike[str],
    metadata: Mapping[str, str] | None = None,
    config: SaveConfig = None,
) -> None:
    """Encrypt and sign MLX arrays into ``filename``, written atomically (a temporary file renamed into place).

    Args:
        tensors: MLX arrays by name.
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
    """Encrypt and sign MLX arrays into the bytes of a file.

    Args:
        tensors: MLX arrays by name.
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
    config: LoadConfig = None,
    *,
    backend: str | None = None,
) -> dict[str, Any]:
    """Every tensor of a CryptoTensors file, or of a plain safetensors file (read by safetensors itself).

    Args:
        filename: a path, or for an encrypted file an ``s3://``, ``gs://``, ``az://``, ``hf://`` or
            ``https://`` URL (read by range requests).
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
    return FRONTEND.load_file(filename, "cpu", config, backend)


def load(data: bytes, config: LoadConfig = None) -> dict[str, Any]:
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
