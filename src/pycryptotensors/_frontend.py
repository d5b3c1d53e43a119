"""What the framework front-ends (``numpy``, ``torch``) share: turning tensors into bytes to save, and
the load paths that decide between our reader and plain safetensors."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from .config import SaveOptions, save_options
from .reading.handle import safe_open
from .writing.writer import TensorData, encrypt_bytes, encrypt_file


def save_file(
    tensors: Mapping[str, Any],
    path: str | os.PathLike[str],
    metadata: Mapping[str, str] | None,
    config: SaveOptions | Mapping[str, Any] | None,
    to_data: Callable[[str, Any], TensorData],
) -> None:
    options = save_options(config)
    encrypt_file([to_data(name, t) for name, t in tensors.items()], path, metadata, options)


def save(
    tensors: Mapping[str, Any],
    metadata: Mapping[str, str] | None,
    config: SaveOptions | Mapping[str, Any] | None,
    to_data: Callable[[str, Any], TensorData],
) -> bytes:
    options = save_options(config)
    return encrypt_bytes([to_data(name, t) for name, t in tensors.items()], metadata, options)


def load_file(path: str | os.PathLike[str], framework: str, device: str, config: Any) -> dict[str, Any]:
    with safe_open(path, framework, device=device, config=config) as handle:
        return {name: handle.get_tensor(name) for name in handle.offset_keys()}


def load(data: bytes, framework: str, config: Any) -> dict[str, Any] | None:
    """Tensors of an encrypted file held in memory, or None when it is plain (the caller delegates)."""
    handle = safe_open.from_bytes(data, framework, config)
    if handle is None:
        return None
    with handle:
        return {name: handle.get_tensor(name) for name in handle.offset_keys()}
