"""Write the conformance test vectors under ``testdata/`` (run once; the output is committed).

The vectors are the format's examples, in the style of age's test kit and Wycheproof: files that must load,
with their keys and the SHA-256 of every tensor's bytes, and files that must be refused, with the error class.
They are checked in, so that a change in the writer cannot silently change what "valid" means; rerunning this
script makes new random keys and IVs, so only rerun it to add vectors, and review the diff.

    .venv/bin/python scripts/make_vectors.py            # rewrites testdata/
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the tamper matrix's mutations become the invalid vectors

import pycryptotensors as pc  # noqa: E402
from pycryptotensors.config import SaveOptions  # noqa: E402
from pycryptotensors.format.dtypes import DTYPES, nbytes_of  # noqa: E402
from pycryptotensors.numpy import FRONTEND  # noqa: E402
from pycryptotensors.writing.writer import TensorData, encrypt_file  # noqa: E402

OUT = ROOT / "testdata"
POLICY_ALLOW = "package model\n\nallow := true\n"
POLICY_CLAIMS = 'package model\n\ndefault allow := false\n\nallow if input.claims.tier == "gold"\n'


def _raw(dtype: str, shape: tuple[int, ...], seed: int) -> TensorData:
    """Random bytes of the right length: every dtype, including the sub-byte ones, as raw bytes."""
    dt = DTYPES[dtype]
    nbytes = nbytes_of(dt, shape)
    data = np.random.default_rng(seed).integers(0, 256, size=nbytes, dtype=np.uint8)
    if dtype == "BOOL":
        data &= 1
    return TensorData(f"t_{dtype.lower()}", dt, shape, memoryview(data))


def _digests(tensors: list[TensorData]) -> dict[str, Any]:
    return {
        t.name: {"dtype": t.dtype.name, "shape": list(t.shape), "sha256": hashlib.sha256(bytes(t.data)).hexdigest()}
        for t in tensors
    }


class Writer:
    def __init__(self) -> None:
        self.vectors: list[dict[str, Any]] = []
        self.masters = {alg: pc.generate_master_key(alg=alg, kid=f"master-{alg}") for alg in sorted(_algs())}
        self.signer = pc.generate_signing_key(kid="publisher")
        self.other_signer = pc.generate_signing_key(kid="publisher")  # same kid, another key

    def keys_document(self) -> dict[str, Any]:
        return {
            "master_keys": {alg: k.to_jwk("reference") for alg, k in self.masters.items()},
            "signing_key": self.signer.to_jwk("reference"),
            "verify_key": self.signer.verify_key.to_jwk("reference"),
        }

    def valid(self, name: str, data: list[TensorData], what: str, *, alg: str = "aes256gcm", **save: Any) -> None:
        options = SaveOptions(self.masters[alg], self.signer, **save)
        path = OUT / "valid" / f"{name}.safetensors"
        encrypt_file(data, path, {"format": "pt"}, options)
        self.vectors.append(
            {"file": f"valid/{name}.safetensors", "description": what, "expect": "valid",
             "master_key": alg, "tensors": _digests(data)}
        )  # fmt: skip

    def invalid(self, name: str, data: bytes, what: str, errors: list[str], exact: bool = False, **load: Any) -> None:
        (OUT / "invalid" / f"{name}.safetensors").write_bytes(data)
        self.vectors.append(
            {"file": f"invalid/{name}.safetensors", "description": what, "expect": "error", "errors": errors,
             "exact": exact, "master_key": "aes256gcm", **load}
        )  # fmt: skip


def _algs() -> list[str]:
    from pycryptotensors.cipher.aead import ALGORITHMS

    return list(ALGORITHMS)


def _valid_vectors(w: Writer) -> None:
    every = [_raw(name, (3, 4) if DTYPES[name].bits >= 8 else (4, 4), i) for i, name in enumerate(DTYPES)]
    w.valid("every-dtype-v2", every, "every safetensors dtype, all encrypted, version 2, 1 MiB chunks")
    w.valid("every-dtype-v1", every, "every safetensors dtype, all encrypted, version 1", version="1")
    sample = [_raw("F32", (33, 7), 100), _raw("I64", (5,), 101), _raw("BF16", (2, 3, 4), 102)]
    for alg in _algs():
        for version in ("1", "2"):
            w.valid(f"{alg}-v{version}", sample, f"{alg}, version {version}", alg=alg, version=version)
    for chunk in (1, 7, 64, 1000, 65537):
        w.valid(f"chunk-{chunk}", sample, f"version 2 with chunk_size {chunk}", chunk_size=chunk)
    w.valid("partial", sample, "only t_f32 encrypted; the others plain with signed digests", tensors=["t_f32"])
    w.valid("partial-no-digests", sample, "only t_f32 encrypted; no digest extension", tensors=["t_f32"],
            integrity=False)  # fmt: skip
    empties = [TensorData(f"empty_{d.lower()}", DTYPES[d], (0, 3), memoryview(b"")) for d in ("I64", "F32", "F16")]
    empties.append(TensorData("empty_f32_b", DTYPES["F32"], (0,), memoryview(b"")))
    w.valid("zero-size-tensors", [*empties, *sample], "four zero-size tensors tie at one offset")
    w.valid("scalar", [TensorData("s", DTYPES["F64"], (), memoryview(np.array([2.5]).view(np.uint8)))], "a 0-d scalar")
    w.valid("policy-allow", sample, "a local policy that allows", policy_local=POLICY_ALLOW)


def _invalid_vectors(w: Writer) -> None:
    import test_tamper as tamper  # the mutations of the tamper matrix
    from _filecraft import make_sample

    master, signer = w.masters["aes256gcm"], w.signer
    for version in ("2", "1"):
        sample = make_sample(master, signer, version)
        if version == "2":
            (OUT / "valid" / "tamper-base-v2.safetensors").write_bytes(sample.data)
            w.vectors.append(
                {"file": "valid/tamper-base-v2.safetensors", "description": "the file the tamper vectors alter",
                 "expect": "valid", "master_key": "aes256gcm",
                 "tensors": _digests([FRONTEND.to_bytes(n, a) for n, a in sample.tensors.items()])}
            )  # fmt: skip
        for case in tamper.CASES:
            if version not in case.versions or case.expect in (tamper.UNCHANGED, tamper.EITHER):
                continue
            kinds = case.expect if isinstance(case.expect, tuple) else (case.expect,)
            w.invalid(f"v{version}-{case.id}", case.mutate(sample), f"tamper matrix case {case.id}",
                      [k.__name__ for k in kinds], case.exact)  # fmt: skip
    sample = make_sample(master, signer, "2")
    w.invalid("truncated-data", sample.data[:-1], "one byte short of the data area", ["FormatError"])
    w.invalid("truncated-header", sample.data[:40], "cut inside the header", ["FormatError"])
    w.invalid("length-prefix-only", sample.data[:8], "nothing but the length prefix", ["FormatError"])
    header_len = int.from_bytes(sample.data[:8], "little")
    header = json.loads(sample.data[8 : 8 + header_len])
    stripped = {k: v for k, v in header.items() if k != "__metadata__"}
    stripped["__metadata__"] = {"format": "pt"}
    body = json.dumps(stripped, separators=(",", ":")).encode()
    body += b" " * (-len(body) % 8)
    plain = len(body).to_bytes(8, "little") + body + sample.data[8 + header_len :]
    w.invalid("downgrade-stripped", plain, "crypto metadata stripped: a plain file where encryption is required",
              ["NotEncryptedError"], require_encryption=True)  # fmt: skip
    other = make_sample(master, w.other_signer, "2")
    w.invalid("other-publisher", other.data, "signed by another key with the publisher's kid", ["SignatureError"])


def main() -> None:
    shutil.rmtree(OUT / "valid", ignore_errors=True)
    shutil.rmtree(OUT / "invalid", ignore_errors=True)
    (OUT / "valid").mkdir(parents=True)
    (OUT / "invalid").mkdir(parents=True)
    w = Writer()
    _valid_vectors(w)
    _invalid_vectors(w)
    (OUT / "keys.json").write_text(json.dumps(w.keys_document(), indent=1) + "\n")
    (OUT / "vectors.json").write_text(json.dumps({"version": 1, "vectors": w.vectors}, indent=1) + "\n")
    print(f"{len(w.vectors)} vectors in {OUT}")


if __name__ == "__main__":
    main()
