"""Bytes autograd saves per token for Llama-3.2-1B's shape (HF code, bf16 autocast over fp32 weights), on CPU.

    python bench/activation_bytes.py      # ~1 min on 2 cores; feeds the memory arithmetic in bench/README.md

Runs the model with 2 and with 1 decoder layers at 256 and 512 tokens and takes slopes, so weight copies
(which do not grow with tokens) drop out: per-layer and outside-the-layers (embedding, norm, lm head, loss).
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

VOCAB = 128256


def saved_bytes(model, tokens: int) -> int:
    """Sum of distinct storages autograd saves for backward during one forward with the loss."""
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    ids = torch.randint(0, VOCAB, (1, tokens))
    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        torch.autocast("cpu", dtype=torch.bfloat16),
    ):
        _ = model(input_ids=ids, labels=ids).loss
    return sum(seen.values())


def main() -> None:
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=2,
        num_attention_heads=32,
        num_key_value_heads=8,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    model = LlamaForCausalLM(config)
    layers = model.model.layers
    slope = {}
    for n in (2, 1):
        model.model.layers = layers[:n]
        model.config.num_hidden_layers = n
        slope[n] = (saved_bytes(model, 512) - saved_bytes(model, 256)) / 256
    print(f"per decoder layer: {(slope[2] - slope[1]) / 1024:.1f} KiB/token")
    print(
        "outside the layers (embedding, final norm, lm head, loss): "
        f"{(2 * slope[1] - slope[2]) / 1024:.1f} KiB/token"
    )


if __name__ == "__main__":
    main()
