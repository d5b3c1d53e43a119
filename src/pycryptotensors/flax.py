"""JAX / Flax front-end: ``save_file``, ``save``, ``load_file``, ``load``, as in ``safetensors.flax``.

Arrays go through NumPy (``pycryptotensors.numpy``, with ``ml_dtypes`` for BF16 and the F8 types), as
safetensors does. JAX itself is imported on first use. As in safetensors, 64-bit types load as 32-bit ones
unless JAX's ``jax_enable_x64`` is on. F4 loads as ``float4_e2m1fn``, one value a byte, as in
:mod:`pycryptotensors.numpy`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import _frontend
from . import numpy as _np_frontend
from .config import LoadConfig, SaveConfig
from .format.dtypes import DType
from .writing.writer import TensorData


class FlaxFrontend(_frontend.Frontend):
    name, plain_module = "flax", "flax"

    def from_bytes(self, data: np.ndarray, dtype: DType, shape: tuple[int, ...]) -> Any:
        """A JAX array: one copy of the host view into a JAX buffer (about twice as fast as jnp.asarray)."""
        jax = _frontend.require("jax", "jax")
        return jax.device_put(_np_frontend.FRONTEND.from_bytes(data, dtype, shape))

    def place(self, array: Any, device: str) -> Any:
        if device == "cpu":
            return array
        jax = _frontend.require("jax", "jax")
        return jax.device_put(array, jax.devices(device.split(":")[0].replace("cuda", "gpu"))[0])

    def to_bytes(self, name: str, array: Any) -> TensorData:
        return _np_frontend.FRONTEND.to_bytes(name, np.asarray(array))


FRONTEND = FlaxFrontend()


__all__ = ["save_file", "save", "load_file", "load"]  # the public names (docs/API.md)


def save_file(
    tensors: Mapping[str, Any],
    filename: str | os.PathLike[str],
    metadata: Mapping[str, str] | None = None,
    config: SaveConfig = None,
) -> None:
    """Encrypt and sign JAX arrays into ``filename``, written atomically (a temporary file renamed into place).

    Args:
        tensors: JAX arrays by name.
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
    """Encrypt and sign JAX arrays into the bytes of a file.

    Args:
        tensors: JAX arrays by name.
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
