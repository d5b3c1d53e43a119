"""TensorFlow front-end: ``save_file``, ``save``, ``load_file``, ``load``, as in ``safetensors.tensorflow``.

Tensors go through NumPy (``pycryptotensors.numpy``, with ``ml_dtypes`` for BF16 and the F8 types), as
safetensors does. TensorFlow itself is imported on first use. TensorFlow has no F8_E8M0 or F4 type: those
are refused with :class:`~pycryptotensors.UnsupportedError`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import _frontend
from . import numpy as _np_frontend
from .config import LoadConfig, SaveConfig
from .errors import UnsupportedError
from .format.dtypes import DType
from .writing.writer import TensorData

_NO_TF_TYPE = {"F8_E8M0", "F4"}


class TensorFlowFrontend(_frontend.Frontend):
    name, plain_module = "tf", "tensorflow"

    def from_bytes(self, data: np.ndarray, dtype: DType, shape: tuple[int, ...]) -> Any:
        if dtype.name in _NO_TF_TYPE:
            raise UnsupportedError(f"{dtype.name} has no TensorFlow type (use framework='np' or 'pt')")
        tf = _frontend.require("tensorflow", "tensorflow-cpu")
        return tf.convert_to_tensor(_np_frontend.FRONTEND.from_bytes(data, dtype, shape))

    def place(self, tensor: Any, device: str) -> Any:
        if device == "cpu":
            return tensor
        tf = _frontend.require("tensorflow", "tensorflow-cpu")
        with tf.device(device.replace("cuda", "GPU")):
            return tf.identity(tensor)

    def to_bytes(self, name: str, tensor: Any) -> TensorData:
        array = tensor.numpy() if hasattr(tensor, "numpy") else np.asarray(tensor)
        return _np_frontend.FRONTEND.to_bytes(name, array)


FRONTEND = TensorFlowFrontend()


__all__ = ["save_file", "save", "load_file", "load"]  # the public names (docs/API.md)


def save_file(
    tensors: Mapping[str, Any],
    filename: str | os.PathLike[str],
    metadata: Mapping[str, str] | None = None,
    config: SaveConfig = None,
) -> None:
    """Encrypt and sign TensorFlow tensors into ``filename``, written atomically (a temporary file renamed into place).

    Args:
        tensors: TensorFlow tensors by name.
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
    """Encrypt and sign TensorFlow tensors into the bytes of a file.

    Args:
        tensors: TensorFlow tensors by name.
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
