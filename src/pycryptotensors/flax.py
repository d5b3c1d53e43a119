"""JAX / Flax front-end: ``save_file``, ``save``, ``load_file``, ``load``, as in ``safetensors.flax``.

Arrays go through NumPy (``pycryptotensors.numpy``, with ``ml_dtypes`` for BF16 and the F8 types), as
safetensors does. JAX itself is imported on first use. As in safetensors, 64-bit types load as 32-bit ones
unless JAX's ``jax_enable_x64`` is on; F4 has no packed JAX type and is refused.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import _frontend
from . import numpy as _np_frontend
from .config import LoadOptions, SaveOptions
from .format.dtypes import DType
from .writing.writer import TensorData


def to_tensor(data: np.ndarray, dtype: DType, shape: tuple[int, ...], device: str = "cpu") -> Any:
    jax = _frontend.require("jax", "jax")

    host = _np_frontend.to_tensor(data, dtype, shape)
    if device == "cpu":
        return jax.device_put(host)  # one copy into a JAX buffer, about twice as fast as jnp.asarray here
    return jax.device_put(host, jax.devices(device.split(":")[0].replace("cuda", "gpu"))[0])


def to_data(name: str, array: Any) -> TensorData:
    return _np_frontend.to_data(name, np.asarray(array))


def save_file(
    tensors: Mapping[str, Any],
    filename: str | os.PathLike[str],
    metadata: Mapping[str, str] | None = None,
    config: SaveOptions | Mapping[str, Any] | None = None,
) -> None:
    """Encrypt and sign JAX arrays into ``filename`` (written atomically)."""
    _frontend.save_file(tensors, filename, metadata, config, to_data)


def save(
    tensors: Mapping[str, Any],
    metadata: Mapping[str, str] | None = None,
    config: SaveOptions | Mapping[str, Any] | None = None,
) -> bytes:
    """Encrypt and sign JAX arrays into the bytes of a file."""
    return _frontend.save(tensors, metadata, config, to_data)


def load_file(
    filename: str | os.PathLike[str],
    config: LoadOptions | Mapping[str, Any] | None = None,
    *,
    backend: str | None = None,
) -> dict[str, Any]:
    """Every array of a CryptoTensors or plain safetensors file."""
    return _frontend.load_file(filename, "flax", "cpu", config, backend)


def load(data: bytes, config: LoadOptions | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every array of a file held in memory; raises on any failure, never returns unauthenticated bytes."""
    return _frontend.load_or_plain(data, "flax", config)
