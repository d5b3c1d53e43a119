"""What every benchmark here shares: interleaved runs with warm-ups, min / median / max, real cache eviction.

- ``interleaved`` runs the cases in turn (plain, encrypted, plain, ...) after one warm-up run of each, so
  that drift on a shared machine hits all of them alike; each case reports min, median and max.
- ``evict`` drops files from the page cache for real: ``fsync`` (dirty pages cannot be dropped), then
  ``posix_fadvise(DONTNEED)``, then ``mincore`` on a fresh mapping counts the pages still resident. The
  fraction is returned so that the caller prints it next to the figure it qualifies.
- ``verdict`` prints a target next to its bar.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


@dataclass
class Stats:
    """The times of one case (seconds), in run order."""

    times: list[float] = field(default_factory=list)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def max(self) -> float:
        return max(self.times)

    def spread(self, unit: str = "auto") -> str:
        """``median (min-max)`` in ms below 0.1 s, in s above."""
        scale, suffix = (1000, "ms") if unit == "ms" or (unit == "auto" and self.median < 0.1) else (1, "s")
        return f"{self.median * scale:.3f} ({self.min * scale:.3f}-{self.max * scale:.3f}) {suffix}"


def interleaved(
    cases: dict[str, Callable[[], object]],
    repeat: int,
    *,
    before: Callable[[str], None] | None = None,
    warmup: bool = True,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Stats]:
    """Time each case ``repeat`` times, in turn, after one untimed warm-up run each. ``before(name)`` runs
    untimed before every run (e.g. evicting the files from the page cache). ``clock=time.thread_time``
    measures this thread's CPU time instead of wall time: on a shared machine, what the code itself costs."""
    stats = {name: Stats() for name in cases}
    if warmup:
        for name, fn in cases.items():
            if before is not None:
                before(name)
            fn()
    for _ in range(repeat):
        for name, fn in cases.items():
            if before is not None:
                before(name)
            start = clock()
            result = fn()
            stats[name].times.append(clock() - start)
            del result
    return stats


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]


def resident_pages(path: str | os.PathLike[str]) -> tuple[int, int]:
    """Pages of the file in the page cache, and pages in all (``mincore`` on a mapping that touches none)."""
    size = os.path.getsize(path)
    if size == 0:
        return 0, 0
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as mapped:
        pages = -(-size // mmap.PAGESIZE)
        vec = (ctypes.c_ubyte * pages)()
        anchor = ctypes.c_char.from_buffer(mapped)
        try:
            if _libc.mincore(ctypes.addressof(anchor), size, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
        finally:
            del anchor  # the mapping cannot close while a ctypes object points into it
        return sum(v & 1 for v in vec), pages


def evict(paths: Iterable[str | os.PathLike[str]]) -> float:
    """Drop the files from the page cache and return the fraction of their pages still resident (0.0 when
    the eviction worked; clean pages need no root)."""
    resident = total = 0
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        r, t = resident_pages(path)
        resident, total = resident + r, total + t
    return resident / total if total else 0.0


def verdict(value: float, bar: float, *, at_least: bool = False, unit: str = "x") -> str:
    """``target <= bar: met`` (or ``>=``), printed next to the figure."""
    met = value >= bar if at_least else value <= bar
    return f"target {'>=' if at_least else '<='} {bar:g}{unit}: {'met' if met else 'MISSED'}"
