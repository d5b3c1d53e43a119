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
from typing import TYPE_CHECKING

from ..errors import SignatureError

if TYPE_CHECKING:
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
        """The requirements for one file: those of the most specific rule covering it. The path is matched as
        given and as resolved; when a symlink puts the two under different rules, both rules' requirements
        apply (encryption if either requires it; the signers of the one naming any), so a link can neither
        lead a file out of a rule nor bring an outside file into one unchecked."""
        if path is None or not self.rules:
            return self
        chosen = [
            max(matching, key=lambda r: len(r.path.parts))
            for name in (Path(os.path.abspath(path)), Path(os.path.realpath(path)))
            if (matching := [r for r in self.rules if r.covers(name)])
        ]
        if not chosen:
            return self
        signers = next((r.signers for r in chosen if r.signers), self.signers)
        return Trust(signers, self.require_encryption or any(r.require_encryption for r in chosen))

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
