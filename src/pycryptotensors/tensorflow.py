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
from .config import LoadOptions, SaveOptions
from .errors import UnsupportedError
from .format.dtypes import DType
from .writing.writer import TensorData

_NO_TF_TYPE = {"F8_E8M0", "F4"}


def to_tensor(data: np.ndarray, dtype: DType, shape: tuple[int, ...], device: str = "cpu") -> Any:
    if dtype.name in _NO_TF_TYPE:
        raise UnsupportedError(f"{dtype.name} has no TensorFlow type (use framework='np' or 'pt')")
    tf = _frontend.require("tensorflow", "tensorflow-cpu")

    array = _np_frontend.to_tensor(data, dtype, shape)
    if device == "cpu":
        return tf.convert_to_tensor(array)
    with tf.device(device.replace("cuda", "GPU")):
        return tf.identity(tf.convert_to_tensor(array))


def to_data(name: str, tensor: Any) -> TensorData:
    return _np_frontend.to_data(name, tensor.numpy() if hasattr(tensor, "numpy") else np.asarray(tensor))


def save_file(
    tensors: Mapping[str, Any],
    filename: str | os.PathLike[str],
    metadata: Mapping[str, str] | None = None,
    config: SaveOptions | Mapping[str, Any] | None = None,
) -> None:
    """Encrypt and sign TensorFlow tensors into ``filename`` (written atomically)."""
    _frontend.save_file(tensors, filename, metadata, config, to_data)


def save(
    tensors: Mapping[str, Any],
    metadata: Mapping[str, str] | None = None,
    config: SaveOptions | Mapping[str, Any] | None = None,
) -> bytes:
    """Encrypt and sign TensorFlow tensors into the bytes of a file."""
    return _frontend.save(tensors, metadata, config, to_data)


def load_file(
    filename: str | os.PathLike[str],
    config: LoadOptions | Mapping[str, Any] | None = None,
    *,
    backend: str | None = None,
) -> dict[str, Any]:
    """Every tensor of a CryptoTensors or plain safetensors file."""
    return _frontend.load_file(filename, "tf", "cpu", config, backend)


def load(data: bytes, config: LoadOptions | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every tensor of a file held in memory; raises on any failure, never returns unauthenticated bytes."""
    return _frontend.load_or_plain(data, "tf", config)
