"""Tiny, deterministic models for the integration tests (built locally: nothing is downloaded)."""

from __future__ import annotations

from typing import Any


def tiny_llama(seed: int = 0, **overrides: Any) -> Any:
    """A random LlamaForCausalLM small enough to build, save and load in milliseconds, in eval mode."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    settings: dict[str, Any] = {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "vocab_size": 128,
        "intermediate_size": 128,
        "tie_word_embeddings": False,
    }
    settings.update(overrides)
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**settings)).eval()
