"""Turning a ``get_slice(...)[index]`` into the byte range it touches, and cutting the result out of it.

Indexing follows numpy for the forms safetensors 0.8 accepts: integers (negative from the end), slices with
any non-zero step, and one ``...``. The selection's lowest and highest byte decide which chunks are read and
decrypted; everything else of the tensor stays on disk. Results are computed on raw bytes, so this module
knows nothing of dtypes beyond their size.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Selection:
    """A normalized index: per dimension a start, a step and a count; ``keep`` marks sliced dimensions."""

    starts: tuple[int, ...]
    steps: tuple[int, ...]
    counts: tuple[int, ...]
    keep: tuple[bool, ...]
    strides: tuple[int, ...]  # in elements, C order

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(c for c, k in zip(self.counts, self.keep, strict=True) if k)

    @property
    def empty(self) -> bool:
        return 0 in self.counts

    def element_span(self) -> tuple[int, int]:
        """First and last flat element index touched (inclusive)."""
        lo = hi = 0
        for start, step, count, stride in zip(self.starts, self.steps, self.counts, self.strides, strict=True):
            last = start + (count - 1) * step
            lo += min(start, last) * stride
            hi += max(start, last) * stride
        return lo, hi

    def first_element(self) -> int:
        return sum(s * t for s, t in zip(self.starts, self.strides, strict=True))


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool | np.bool_):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def select(shape: tuple[int, ...], index: Any) -> Selection:
    """Normalize ``index`` against ``shape``; raises IndexError / TypeError like numpy."""
    items = index if isinstance(index, tuple) else (index,)
    ellipses = sum(1 for item in items if item is Ellipsis)
    if ellipses > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if ellipses:
        at = next(i for i, item in enumerate(items) if item is Ellipsis)
        fill = len(shape) - (len(items) - 1)
        if fill < 0:
            raise IndexError(f"too many indices for a tensor of {len(shape)} dimensions")
        items = items[:at] + (slice(None),) * fill + items[at + 1 :]
    if len(items) > len(shape):
        raise IndexError(f"too many indices for a tensor of {len(shape)} dimensions: {len(items)}")
    items = items + (slice(None),) * (len(shape) - len(items))

    starts, steps, counts, keep = [], [], [], []
    for dim, (item, size) in enumerate(zip(items, shape, strict=True)):
        position = _as_int(item)
        if position is not None:
            if not -size <= position < size:
                raise IndexError(f"index {position} is out of bounds for dimension {dim} with size {size}")
            starts.append(position % size)
            steps.append(1)
            counts.append(1)
            keep.append(False)
        elif isinstance(item, slice):
            start, stop, step = item.indices(size)  # raises ValueError for step 0, TypeError for non-ints
            starts.append(start)
            steps.append(step)
            counts.append(len(range(start, stop, step)))
            keep.append(True)
        else:
            raise TypeError(f"unsupported index {item!r}: use integers, slices and '...'")

    strides, acc = [], 1
    for size in reversed(shape):
        strides.append(acc)
        acc *= size
    return Selection(tuple(starts), tuple(steps), tuple(counts), tuple(keep), tuple(reversed(strides)))


def cut(selection: Selection, buffer: np.ndarray, buffer_start: int, itemsize: int) -> np.ndarray:
    """Copy the selected elements out of ``buffer`` (uint8, holding tensor bytes from ``buffer_start``).

    Returns a new contiguous uint8 array of ``selection.shape + (itemsize,)`` that the caller owns.
    """
    offset = selection.first_element() * itemsize - buffer_start
    shape, strides = [], []
    for step, count, stride, kept in zip(
        selection.steps, selection.counts, selection.strides, selection.keep, strict=True
    ):
        if kept:
            shape.append(count)
            strides.append(step * stride * itemsize)
    # The ndarray constructor checks that every element lies inside ``buffer`` (as_strided would not), and
    # costs a microsecond where as_strided's Python wrapper costs tens: a slice's fixed cost is mostly this.
    view = np.ndarray((*shape, itemsize), dtype=np.uint8, buffer=buffer, offset=offset, strides=(*strides, 1))
    return view.copy(order="C")
