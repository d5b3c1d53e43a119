"""Trust: which publishers a consumer accepts, and which files must be encrypted.

A consumer pins publishers (their public signing keys) and can require encryption for everything, or for a
model file or directory. A file signed by anyone else, or stripped of its crypto header (which makes it
look like plain safetensors), is then refused instead of loaded. The most specific rule (longest path)
applies to a file; the global settings apply where no rule matches.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SignatureError
from .jwk import VerifyKey


@dataclass(frozen=True)
class TrustRule:
    """Requirements for the files at or under ``path``."""

    path: Path
    signers: tuple[VerifyKey, ...] = ()  # pinned publishers; empty: any configured signer
    require_encryption: bool = True

    def covers(self, file: Path) -> bool:
        return file == self.path or self.path in file.parents


@dataclass(frozen=True)
class Trust:
    """The consumer's trust settings, resolved for one file by :meth:`for_file`."""

    signers: tuple[VerifyKey, ...] = ()
    require_encryption: bool = False
    rules: tuple[TrustRule, ...] = field(default=())

    def for_file(self, path: str | os.PathLike[str] | None) -> Trust:
        if path is None or not self.rules:
            return self
        resolved = Path(os.path.realpath(path))
        matching = [r for r in self.rules if r.covers(resolved)]
        if not matching:
            return self
        rule = max(matching, key=lambda r: len(r.path.parts))
        return Trust(rule.signers or self.signers, rule.require_encryption or self.require_encryption)

    def check_signer(self, key: VerifyKey) -> None:
        """Refuse a verification key that is not one of the pinned publishers (when any are pinned)."""
        if self.signers and key.raw not in {s.raw for s in self.signers}:
            raise SignatureError(f"the file's signer (kid {key.kid!r}) is not a pinned publisher for this file")

    def pinned_among(self, candidates: Sequence[VerifyKey]) -> list[VerifyKey]:
        if not self.signers:
            return list(candidates)
        allowed = {s.raw for s in self.signers}
        return [k for k in candidates if k.raw in allowed]


def trust_rule(
    path: str | os.PathLike[str], signers: Sequence[VerifyKey] = (), require_encryption: bool = True
) -> TrustRule:
    return TrustRule(Path(os.path.realpath(Path(path).expanduser())), tuple(signers), require_encryption)
