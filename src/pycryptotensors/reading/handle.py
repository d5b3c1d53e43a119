"""``safe_open``: the lazy handle frameworks use, with the same shape as ``safetensors.safe_open``.

Opening verifies the header and checks the master key on one data key (nothing else is read; each other
data key is unwrapped at its tensor's first read); ``get_tensor`` reads and decrypts one tensor;
``get_slice(name)[...]`` reads and decrypts only the chunks under the selection.
Plain safetensors files are handed to the ``safetensors`` package itself, untouched and at its speed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .._frontend import Frontend, frontend
from ..config import LoadOptions, device_name
from ..errors import CryptoTensorsError, FormatError, UnsupportedError
from ..format.crypto_header import CryptoHeader
from ..format.header import TensorEntry
from ..format.reserved import user_metadata
from ..keys.access import resolve
from .reader import OpenedFile, open_file
from .slicing import cut, select
from .source import BytesSource, is_url, open_source

if TYPE_CHECKING:
    from ..keys.keyring import KeyRing


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


def _device(frontend: Frontend, device: Any) -> str:
    """The device in its one spelling (config.device_name), refused here when the framework lacks it."""
    name = device_name(device)
    frontend.check_device(name)
    return name


class TensorSlice:
    """What ``get_slice`` returns: shape and dtype without reading, and ``[...]`` that reads only what it needs."""

    def __init__(self, file: OpenedFile, entry: TensorEntry, frontend: Frontend, device: str) -> None:
        self._file, self._entry, self._frontend, self._device = file, entry, frontend, device

    def get_shape(self) -> list[int]:
        """The whole tensor's shape, without reading it."""
        return list(self._entry.shape)

    def get_dtype(self) -> str:
        """The tensor's dtype as the file names it (``"F32"``, ``"BF16"``, ...)."""
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
        return self._frontend.tensor(data, entry.dtype, selection.shape, self._device)


def _empty_bytes() -> Any:
    import numpy as np

    return np.empty(0, dtype=np.uint8)


class safe_open:  # noqa: N801 - the name safetensors users already know
    """Open a CryptoTensors file lazily; a plain safetensors file opens as safetensors' own handle.

    ``safe_open(...)`` is a factory: for an encrypted file it returns this handle, for a plain one the handle
    ``safetensors.safe_open`` returns (untouched, at its speed, with its errors). ``config`` is the
    reference's dict (``enc_key``, ``sign_key``), a :class:`~pycryptotensors.KeyRing`, or
    :class:`~pycryptotensors.LoadOptions`; keys not given come from ``CRYPTOTENSOR_KEYS``. ``device`` is a
    name (``"cpu"``, ``"cuda:0"``), an index (``0`` is ``"cuda:0"``) or a ``torch.device``. ``backend`` is
    accepted for safetensors 0.8 compatibility and passed on for plain files.
    """

    _frontend: Frontend
    _device: str
    _file: OpenedFile | None

    def __new__(
        cls,
        filename: str | os.PathLike[str],
        framework: str,
        device: str | int | Any = "cpu",
        config: LoadOptions | KeyRing | Mapping[str, Any] | None = None,
        *,
        backend: str | None = None,
    ) -> Any:
        front = frontend(framework)
        place = _device(front, device)  # one spelling, checked once, for plain and encrypted files
        source = open_source(filename)  # a local file, or a URL read by ranges (reading/remote.py)
        try:
            opened = open_file(source, resolve(config), framework, place)
        except BaseException:
            source.close()
            raise
        if opened is not None:
            return cls._over(opened, front, place)
        source.close()
        if is_url(filename):
            raise UnsupportedError(
                f"{source.path} is a plain safetensors file: only encrypted files are read from URLs; "
                "download it and open the local copy"
            )
        import safetensors

        kwargs = {"backend": backend} if backend is not None else {}
        with plain_errors():  # the original, also when transparent mode has wrapped it
            return unwrapped(safetensors.safe_open)(os.fspath(filename), framework, device=place, **kwargs)

    @classmethod
    def _over(cls, opened: OpenedFile, front: Frontend, device: str) -> safe_open:
        handle = super().__new__(cls)
        handle._frontend, handle._device, handle._file = front, device, opened
        return handle

    @classmethod
    def from_bytes(cls, data: bytes, framework: str, config: Any = None, device: Any = "cpu") -> safe_open | None:
        """A handle over an encrypted file held in memory (used by ``load``); None when the data is plain."""
        front = frontend(framework)
        place = _device(front, device)
        opened = open_file(BytesSource(data), resolve(config), framework, place)
        return None if opened is None else cls._over(opened, front, place)

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
        """Close the file (also done by ``with`` and when the handle is collected); idempotent."""
        opened = getattr(self, "_file", None)
        if opened is not None:
            self._file = None
            opened.close()

    def keys(self) -> list[str]:
        """The tensor names, sorted (as safetensors returns them)."""
        return sorted(self._opened().header.tensors)

    def offset_keys(self) -> list[str]:
        """The tensor names in the order of their data in the file (the order to read them in)."""
        return [e.name for e in self._opened().header.in_offset_order()]

    def metadata(self) -> dict[str, str] | None:
        """User metadata; the reserved CryptoTensors entries are hidden (see :meth:`crypto_header`)."""
        return user_metadata(self._opened().header.metadata)

    def crypto_header(self) -> CryptoHeader:
        """The parsed, verified crypto layer (no key material)."""
        return self._opened().crypto

    def get_tensor(self, name: str) -> Any:
        """One tensor, read and authenticated whole before it is returned.

        Args:
            name: the tensor's name.

        Returns:
            The tensor, in the handle's framework and on its device.

        Raises:
            TensorNotFoundError: the file has no such tensor (also a ``safetensors.SafetensorError``).
            IntegrityError: the tensor failed authentication.
        """
        opened = self._opened()
        entry = opened.entry(name)
        return self._frontend.tensor(opened.tensor_bytes(name), entry.dtype, entry.shape, self._device)

    def get_slice(self, name: str) -> TensorSlice:
        """A lazy view of one tensor: ``[...]`` reads and authenticates only the chunks under the selection.

        Args:
            name: the tensor's name.

        Returns:
            A :class:`TensorSlice` (``get_shape()``, ``get_dtype()``, indexing as NumPy does).

        Raises:
            TensorNotFoundError: the file has no such tensor.
        """
        opened = self._opened()
        return TensorSlice(opened, opened.entry(name), self._frontend, self._device)

    def get_tensors(self) -> dict[str, Any]:
        """Every tensor, in offset order; a remote file's are fetched with parallel requests (reading/remote.py)."""
        names = self.offset_keys()
        source = self._opened().source
        if getattr(source, "remote", False):
            from .remote import RemoteSource, fetch_all

            if isinstance(source, RemoteSource):
                return fetch_all(source, names, self.get_tensor, lambda name: self._opened().entry(name).nbytes)
        return {name: self.get_tensor(name) for name in names}
