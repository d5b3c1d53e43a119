"""Demo: encrypt a model-sized set of tensors, load it back lazily, and compare with plain safetensors.

Run through ``bash scripts/demo.sh`` (which sets up the environment first). Later versions of the demo use a
real model through transformers; this one shows the core library on its own.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import safetensors.numpy
import safetensors.torch
import torch

import pycryptotensors as pc
import pycryptotensors.torch as ct_torch

MiB = 1024 * 1024


def llama_like(size_mib: int) -> dict[str, torch.Tensor]:
    """Random bf16 weights shaped like a small decoder: embeddings, attention and MLP blocks, norms."""
    hidden, rng = 1024, np.random.default_rng(0)
    per_layer = (4 * hidden * hidden + 3 * hidden * 4 * hidden + 2 * hidden) * 2
    layers = max(1, (size_mib * MiB - 2 * 8192 * hidden * 2) // per_layer)

    def weight(*shape: int) -> torch.Tensor:
        return torch.from_numpy(rng.standard_normal(shape, dtype=np.float32)).to(torch.bfloat16)

    tensors = {"model.embed_tokens.weight": weight(8192, hidden), "lm_head.weight": weight(8192, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}"
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            tensors[f"{p}.self_attn.{name}.weight"] = weight(hidden, hidden)
        tensors[f"{p}.mlp.gate_proj.weight"] = weight(4 * hidden, hidden)
        tensors[f"{p}.mlp.up_proj.weight"] = weight(4 * hidden, hidden)
        tensors[f"{p}.mlp.down_proj.weight"] = weight(hidden, 4 * hidden)
        tensors[f"{p}.input_layernorm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
        tensors[f"{p}.post_attention_layernorm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
    return tensors


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=512, help="approximate model size")
    args = parser.parse_args()

    print(f"pycryptotensors {pc.__version__} demo: a {args.size_mib} MiB bf16 model\n")
    tensors = llama_like(args.size_mib)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    master, signer = pc.generate_master_key(kid="demo-master"), pc.generate_signing_key(kid="demo-publisher")
    norms = [n for n in tensors if "norm" in n]
    publisher = {
        "enc_key": master,
        "sign_key": signer,
        "tensors": [n for n in tensors if n not in norms],
    }  # layer norms stay plain (but signed)
    consumer = pc.KeyRing([master, signer.verify_key])

    with tempfile.TemporaryDirectory() as tmp:
        plain, encrypted = Path(tmp, "model.safetensors"), Path(tmp, "model.cryptotensors")
        _, t_plain_save = timed(lambda: safetensors.torch.save_file(tensors, plain, metadata={"format": "pt"}))
        _, t_enc_save = timed(lambda: ct_torch.save_file(tensors, encrypted, {"format": "pt"}, publisher))
        print(f"{len(tensors)} tensors, {total / MiB:.0f} MiB; {len(norms)} layer norms left unencrypted (signed)")
        print(
            f"  save   plain safetensors {t_plain_save:6.3f} s   encrypted {t_enc_save:6.3f} s "
            f"({t_enc_save / t_plain_save:.2f}x)"
        )

        def open_lazily() -> list[str]:
            with pc.safe_open(encrypted, "pt", config=consumer) as f:
                return f.keys()

        _, t_open = timed(open_lazily)
        print(
            f"  open   verify signature, check policy, unwrap {len(tensors) - len(norms)} keys: {t_open * 1000:.1f} ms"
        )

        def one_row() -> torch.Tensor:
            with pc.safe_open(encrypted, "pt", config=consumer) as f:
                return f.get_slice("lm_head.weight")[42:43]

        row, t_row = timed(one_row)
        print(f"  slice  one row of lm_head (decrypts one 2 MiB chunk): {t_row * 1000:.1f} ms")

        def touch(loaded: dict[str, torch.Tensor]) -> float:
            return float(sum(t.float().sum() for t in loaded.values()))

        t_plain = min(timed(lambda: touch(safetensors.torch.load_file(plain)))[1] for _ in range(3))
        t_enc = min(timed(lambda: touch(ct_torch.load_file(encrypted, config=consumer)))[1] for _ in range(3))
        print(f"  load   plain safetensors {t_plain:6.3f} s   encrypted {t_enc:6.3f} s ({t_enc / t_plain:.2f}x)")
        loaded = ct_torch.load_file(encrypted, config=consumer)
        assert all(torch.equal(loaded[k], v) for k, v in tensors.items()), "round trip changed a tensor"
        assert torch.equal(row, tensors["lm_head.weight"][42:43])
        print("  check  every tensor equals the original\n")

        ciphertext = safetensors.torch.load_file(encrypted)["lm_head.weight"]
        print(f"plain safetensors reading the encrypted file sees noise: lm_head[0,:3] = {ciphertext[0, :3].tolist()}")
        for label, config in (
            ("a wrong master key", pc.KeyRing([pc.generate_master_key(), signer.verify_key])),
            ("an untrusted publisher key", pc.KeyRing([master, pc.generate_signing_key().verify_key])),
        ):
            try:
                ct_torch.load_file(encrypted, config=config)
            except pc.CryptoTensorsError as error:
                print(f"loading with {label:<27} -> {type(error).__name__}: {error}")
        data = bytearray(encrypted.read_bytes())
        data[-5] ^= 0x01  # one bit of the last tensor's data
        encrypted.write_bytes(data)
        try:
            ct_torch.load_file(encrypted, config=consumer)
        except pc.CryptoTensorsError as error:
            print(f"loading after flipping one bit           -> {type(error).__name__}: {error}")
    _ = safetensors.numpy  # plain numpy files load through pycryptotensors.numpy the same way


if __name__ == "__main__":
    main()
