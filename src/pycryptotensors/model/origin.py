"""Trust for bytes whose file cannot be told (``load(bytes)``, transformers' ``disable_mmap``).

Rules are per path; bytes have none, so reading a file into memory first must not dodge a rule: the bytes
get the strictest requirements of all the rules (fail closed). Standard library only: transparent mode asks
this for every ``load(bytes)``.
"""

from __future__ import annotations

from ..keys.trust import Trust


def unknown_origin_trust(trust: Trust) -> Trust:
    """Encryption required if any rule requires it; the signers pinned globally, else those of every rule."""
    rules = trust.rules
    if not rules:
        return trust
    required = trust.require_encryption or any(r.require_encryption for r in rules)
    signers = trust.signers
    if not signers and any(r.signers for r in rules):
        signers = tuple({k.raw: k for r in rules for k in r.signers}.values())
    return Trust(signers, required)
