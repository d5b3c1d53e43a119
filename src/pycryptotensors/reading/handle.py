"""``safe_open``: the lazy handle frameworks use, with the same shape as ``safetensors.safe_open``.

Opening verifies the header and checks the master key on one data key (nothing else is read; each other
data key is unwrapped at its tensor's first read); ``get_tensor`` reads and decrypts one tensor;
``get_slice(name)[...]`` reads and decrypts only the chunks under the selection.
Plain safetensors files are handed to the ``safetensors`` package itself, untouched and at its speed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from ..config import LoadOptions, device_name, load_options
from ..errors import CryptoTensorsError, FormatError, TensorNotFoundError, UnsupportedError
from ..format.crypto_header import CryptoHeader
from ..format.header import TensorEntry
from ..format.reserved import RESERVED_KEYS
from .reader import OpenedFile, open_file
from .slicing import cut, select
from .source import BytesSource, is_url, open_source


def framework_module(framework: str) -> ModuleType:
    """The front-end module (``pycryptotensors.numpy``, ``.torch``, ``.flax``, ...) for a framework name."""
    from .._frontend import frontend

    return frontend(framework)


def _missing(error: Exception, name: str) -> Exception:
    """safetensors' "no such tensor" as our TensorNotFoundError (also a SafetensorError), the same for
    plain and encrypted files; any other error unchanged."""
    if str(error).startswith("File does not contain tensor"):
        return TensorNotFoundError(str(error))
    return error


@contextlib.contextmanager
def plain_errors() -> Iterator[None]:
    """Report safetensors' own refusals of a plain file as our FormatError (the documented type)."""
    import safetensors

    try:
        yield
    except safetensors.SafetensorError as error:
        raise FormatError(f"not a valid safetensors file: {error}") from error


def unwrapped(function: Any) -> Any:
    """The safetensors function itself, under any wrapper transparent mode put around it."""
    return getattr(function, "__wrapped__", function)


def user_metadata(metadata: dict[str, str]) -> dict[str, str] | None:
    """Metadata with the reserved CryptoTensors keys hidden; None when nothing is left, like safetensors."""
    visible = {k: v for k, v in metadata.items() if k not in RESERVED_KEYS}
    return visible or None


def _device(module: ModuleType, device: Any) -> str:
    """The device in its one spelling (config.device_name), refused here when the framework lacks it."""
    name = device_name(device)
    check = getattr(module, "check_device", None)
    if check is not None:
        check(name)
    return name


class TensorSlice:
    """What ``get_slice`` returns: shape and dtype without reading, and ``[...]`` that reads only what it needs."""

    def __init__(self, file: OpenedFile, entry: TensorEntry, frontend: ModuleType, device: str) -> None:
        self._file, self._entry, self._frontend, self._device = file, entry, frontend, device

    def get_shape(self) -> list[int]:
        return list(self._entry.shape)

    def get_dtype(self) -> str:
        return self._entry.dtype.name

    def __getitem__(self, index: Any) -> Any:
        entry = self._entry
        selection = select(entry.shape, index)
        if entry.dtype.bits % 8:
            raise UnsupportedError(f"slicing {entry.dtype.name} tensors is not supported; read them whole")
        itemsize = entry.dtype.itemsize
        if selection.empty:
            data = _empty_bytes()
        elif selection.shape == entry.shape and all(step == 1 for step in selection.steps):
            data = self._file.tensor_bytes(entry.name)
        else:
            first, last = selection.element_span()
            buffer, start = self._file.range_bytes(entry.name, first * itemsize, (last + 1) * itemsize, borrow=True)
            data = cut(selection, buffer, start, itemsize).reshape(-1)
        return self._frontend.to_tensor(data, entry.dtype, selection.shape, self._device)


def _empty_bytes() -> Any:
    import numpy as np

    return np.empty(0, dtype=np.uint8)


class safe_open:  # noqa: N801 - the name safetensors users already know
    """Open a CryptoTensors (or plain safetensors) file lazily.

    ``config`` is the reference's dict (``enc_key``, ``sign_key``), a :class:`~pycryptotensors.KeyRing`, or
    :class:`~pycryptotensors.LoadOptions`; keys not given come from ``CRYPTOTENSOR_KEYS``. ``backend`` is
    accepted for safetensors 0.8 compatibility and passed on for plain files.
    """

    def __init__(
        self,
        filename: str | os.PathLike[str],
        framework: str,
        device: str | int = "cpu",
        config: LoadOptions | dict[str, Any] | None = None,
        *,
        backend: str | None = None,
    ) -> None:
        self._frontend = framework_module(framework)
        self._device = _device(self._frontend, device)  # one spelling, checked once, for plain and encrypted
        self._plain: Any = None
        self._file: OpenedFile | None = None
        source = open_source(filename)  # a local file, or a URL read by ranges (reading/remote.py)
        try:
            self._file = open_file(source, load_options(config), framework, self._device)
        except BaseException:
            source.close()
            raise
        if self._file is None:
            source.close()
            if is_url(filename):
                raise UnsupportedError(
                    f"{source.path} is a plain safetensors file: only encrypted files are read from URLs; "
                    "download it and open the local copy"
                )
            import safetensors

            kwargs = {"backend": backend} if backend is not None else {}
            with plain_errors():  # the original, also when transparent mode has wrapped it
                opener = unwrapped(safetensors.safe_open)
                self._plain = opener(os.fspath(filename), framework, device=self._device, **kwargs)

    @classmethod
    def from_bytes(cls, data: bytes, framework: str, config: Any = None, device: Any = "cpu") -> safe_open | None:
        """A handle over an encrypted file held in memory (used by ``load``); None when the data is plain."""
        module = framework_module(framework)
        device = _device(module, device)
        opened = open_file(BytesSource(data), load_options(config), framework, device)
        if opened is None:
            return None
        handle = cls.__new__(cls)
        handle._frontend, handle._device, handle._plain, handle._file = module, device, None, opened
        return handle

    def _opened(self) -> OpenedFile:
        if self._file is None:
            raise CryptoTensorsError("file is closed")
        return self._file

    def __enter__(self) -> safe_open:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        if getattr(self, "_file", None) is not None:
            self._file.close()
            self._file = None
        if getattr(self, "_plain", None) is not None:
            self._plain.__exit__(None, None, None)
            self._plain = None

    def keys(self) -> list[str]:
        if self._plain is not None:
            return self._plain.keys()
        return sorted(self._opened().header.tensors)

    def offset_keys(self) -> list[str]:
        if self._plain is not None:
            return self._plain.offset_keys()
        return [e.name for e in self._opened().header.in_offset_order()]

    def metadata(self) -> dict[str, str] | None:
        """User metadata; the reserved CryptoTensors entries are hidden (see :meth:`crypto_header`)."""
        if self._plain is not None:
            return self._plain.metadata()
        return user_metadata(self._opened().header.metadata)

    def crypto_header(self) -> CryptoHeader | None:
        """The parsed, verified crypto layer (no key material), or None for a plain file."""
        if self._plain is not None:
            return None
        return self._opened().crypto

    def get_tensor(self, name: str) -> Any:
        if self._plain is not None:
            try:
                return self._plain.get_tensor(name)
            except Exception as error:
                raise _missing(error, name) from error
        opened = self._opened()
        entry = opened.entry(name)
        return self._frontend.to_tensor(opened.tensor_bytes(name), entry.dtype, entry.shape, self._device)

    def get_slice(self, name: str) -> Any:
        if self._plain is not None:
            try:
                return self._plain.get_slice(name)
            except Exception as error:
                raise _missing(error, name) from error
        opened = self._opened()
        return TensorSlice(opened, opened.entry(name), self._frontend, self._device)

    def get_tensors(self) -> dict[str, Any]:
        """Every tensor, in offset order; a remote file's are fetched with parallel requests (reading/remote.py)."""
        names = self.offset_keys()
        source = self._file.source if self._file is not None else None
        if getattr(source, "remote", False):
            from .remote import fetch_all

            return fetch_all(source, names, self.get_tensor, lambda name: self._opened().entry(name).nbytes)
        return {name: self.get_tensor(name) for name in names}
