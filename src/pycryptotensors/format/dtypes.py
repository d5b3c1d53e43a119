"""The safetensors dtype table: names, sizes, and the order writers lay data out in.

Sizes are in bits because safetensors 0.8 also knows sub-byte types (F4, F6); a tensor's byte length is
``elements * bits / 8`` and must come out whole. Framework front-ends map these names to their own types.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DType:
    name: str
    bits: int
    rank: int  # position in safetensors' Dtype enum; writers sort data by (rank descending, name)

    @property
    def itemsize(self) -> int:
        """Bytes per element, rounded up (1 for the sub-byte types)."""
        return max(1, self.bits // 8)


# Declaration order of safetensors' Rust `Dtype` enum, which its writer (and the reference's) sorts by.
_DECLARED = [
    ("BOOL", 8),
    ("F4", 4),
    ("F6_E2M3", 6),
    ("F6_E3M2", 6),
    ("U8", 8),
    ("I8", 8),
    ("F8_E5M2", 8),
    ("F8_E4M3", 8),
    ("F8_E8M0", 8),
    ("I16", 16),
    ("U16", 16),
    ("F16", 16),
    ("BF16", 16),
    ("I32", 32),
    ("U32", 32),
    ("F32", 32),
    ("C64", 64),
    ("F64", 64),
    ("I64", 64),
    ("U64", 64),
]

DTYPES: dict[str, DType] = {name: DType(name, bits, rank) for rank, (name, bits) in enumerate(_DECLARED)}


def nbytes_of(dtype: DType, shape: tuple[int, ...]) -> int | None:
    """Byte length of a tensor, or None when the element count does not fill whole bytes."""
    count = 1
    for dim in shape:
        count *= dim
    bits = count * dtype.bits
    if bits % 8:
        return None
    return bits // 8
