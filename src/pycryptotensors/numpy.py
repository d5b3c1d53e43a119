"""NumPy front-end: ``save_file``, ``save``, ``load_file``, ``load``, as in ``safetensors.numpy``.

BF16, the F8 types and F4 have no NumPy dtype of their own; they load as ``ml_dtypes`` types when that
package is installed, and raise :class:`~pycryptotensors.UnsupportedError` otherwise (safetensors raises
too). F4 (two values a byte in the file) loads as ``ml_dtypes.float4_e2m1fn``, one value a byte; saving
packs it back, the first value of each pair in the low nibble, as torch's ``float4_e2m1fn_x2`` does.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import _frontend
from .config import LoadConfig, SaveConfig
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
    if hasattr(ml_dtypes, "float4_e2m1fn"):  # ml_dtypes >= 0.5: F4, one value a byte in memory
        _NUMPY_TYPES["F4"] = ml_dtypes.float4_e2m1fn
except ImportError:  # pragma: no cover - depends on the environment
    pass
_BY_NUMPY = {np.dtype(t): DTYPES[name] for name, t in _NUMPY_TYPES.items()}


def _numpy_dtype(dtype: DType) -> np.dtype[Any]:
    try:
        found: np.dtype[Any] = np.dtype(_NUMPY_TYPES[dtype.name])
        return found
    except KeyError:
        raise UnsupportedError(
            f"{dtype.name} has no NumPy type here (install ml_dtypes, or use framework='pt')"
        ) from None


def _unpack_f4(data: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """F4 as one ``float4_e2m1fn`` a byte: the file packs two a byte, the first value in the low nibble."""
    count = int(np.prod(shape, dtype=np.int64))
    values = np.empty(data.size * 2, dtype=np.uint8)
    np.bitwise_and(data, 0x0F, out=values[0::2])
    np.right_shift(data, 4, out=values[1::2])
    unpacked: np.ndarray = values[:count].view(_numpy_dtype(DTYPES["F4"])).reshape(shape)
    return unpacked


def _pack_f4(name: str, array: np.ndarray) -> np.ndarray:
    nibbles = array.reshape(-1).view(np.uint8)
    if nibbles.size % 2:
        raise UnsupportedError(f"tensor {name!r}: an F4 tensor needs an even number of values (two a byte)")
    packed: np.ndarray = (nibbles[0::2] & 0x0F) | ((nibbles[1::2] & 0x0F) << 4)
    return packed


class NumpyFrontend(_frontend.Frontend):
    name, plain_module = "np", "numpy"

    def from_bytes(self, data: np.ndarray, dtype: DType, shape: tuple[int, ...]) -> np.ndarray:
        """A view of the authenticated bytes (no copy), except F4, which is unpacked to a byte a value."""
        if dtype.name == "F4":
            return _unpack_f4(data, shape)
        return data.view(_numpy_dtype(dtype)).reshape(shape)

    def to_bytes(self, name: str, array: Any) -> TensorData:
        array = np.asarray(array)
        dtype = _BY_NUMPY.get(array.dtype.newbyteorder("=") if array.dtype.byteorder == ">" else array.dtype)
        if dtype is None:
            raise UnsupportedError(f"tensor {name!r}: dtype {array.dtype} cannot be stored in safetensors")
        if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and sys.byteorder == "big"):
            array = array.astype(array.dtype.newbyteorder("<"))
        if not array.flags.c_contiguous:
            array = array.copy(order="C")  # not ascontiguousarray: it turns 0-d arrays into 1-d ones
        if dtype.name == "F4":
            return TensorData(name, dtype, tuple(array.shape), _pack_f4(name, array).data)
        return TensorData(name, dtype, tuple(array.shape), array.reshape(-1).view(np.uint8).data)


FRONTEND = NumpyFrontend()


__all__ = ["save_file", "save", "load_file", "load"]  # the public names (docs/API.md)


def save_file(
    tensor_dict: Mapping[str, np.ndarray],
    filename: str | os.PathLike[str],
    metadata: Mapping[str, str] | None = None,
    config: SaveConfig = None,
) -> None:
    """Encrypt and sign NumPy arrays into ``filename``, written atomically (a temporary file renamed into place).

    Args:
        tensor_dict: NumPy arrays by name.
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
    FRONTEND.save_file(tensor_dict, filename, metadata, config)


def save(
    tensor_dict: Mapping[str, np.ndarray],
    metadata: Mapping[str, str] | None = None,
    config: SaveConfig = None,
) -> bytes:
    """Encrypt and sign NumPy arrays into the bytes of a file.

    Args:
        tensor_dict: NumPy arrays by name.
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
    return FRONTEND.save(tensor_dict, metadata, config)


def load_file(
    filename: str | os.PathLike[str],
    config: LoadConfig = None,
    *,
    backend: str | None = None,
    device: str | int = "cpu",
) -> dict[str, np.ndarray]:
    """Every tensor of a CryptoTensors file, or of a plain safetensors file (read by safetensors itself).

    Args:
        filename: a path, or for an encrypted file an ``s3://``, ``gs://``, ``az://``, ``hf://`` or
            ``https://`` URL (read by range requests).
        config: the keys and trust for decryption: the reference's dict, a :class:`~pycryptotensors.KeyRing` or
            :class:`~pycryptotensors.LoadOptions`; keys not given come from ``CRYPTOTENSOR_KEYS``, key directories and
            key providers (docs/KEYS.md).
        backend: passed on to safetensors for plain files (``"mmap"`` or ``"pread"``); ignored for encrypted ones.
        device: ``"cpu"``, ``"cuda:N"``, an index (``0`` is ``"cuda:0"``); the same for plain and encrypted files.

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


def load(data: bytes, config: LoadConfig = None) -> dict[str, np.ndarray]:
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
