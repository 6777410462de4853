"""Runtime fixtures on top of tests/conftest.py's tiny_dir: the tokenizer and a data-config factory."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from runtime.config import TrainConfig, parse_train_config, train_fields


@pytest.fixture(scope="session")
def _tiny_tokenizer_loaded(tiny_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir / "model")


@pytest.fixture
def tiny_tokenizer(_tiny_tokenizer_loaded):
    """A fresh copy per test: a named template adds its stop words to the tokenizer it formats for."""
    import copy

    return copy.deepcopy(_tiny_tokenizer_loaded)


@pytest.fixture
def data_cfg(tiny_dir: Path, tmp_path: Path):
    """data_cfg(dataset=..., **overrides) -> a TrainConfig with the tiny data dir and a per-test cache.

    Resolved by the config gate (parse_train_config), as a run's is: runtime.data reads defaults such as
    `packing`'s from the config rules and does not re-check keys. Overrides that are not keys (the
    padding_free lever perf sets) are set on the result. Each test gets its own datasets cache
    (cache_dir), so tests never read each other's cached maps.
    """

    def make(**overrides) -> TrainConfig:
        keys = {
            "model_name_or_path": str(tiny_dir / "model"),
            "dataset_dir": str(tiny_dir / "data"),
            "cache_dir": str(tmp_path / "hf-cache"),
            **overrides,
        }
        internal = {name: keys.pop(name) for name in list(keys) if name not in train_fields()}
        return dataclasses.replace(parse_train_config(keys), **internal)

    return make


@pytest.fixture
def small_llama():
    """small_llama(seed=0, **config) -> a random-weight fp32 Llama with grouped-query attention (hidden 64,
    2 layers, 4 query heads over 2 key/value heads, vocab 97) and no KV cache, for tests that compare the
    model with a patched copy of itself (attention, RMSNorm, LoRA kernels). `config` overrides LlamaConfig."""

    def make(seed: int = 0, **config):
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        shape = dict(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=97, max_position_embeddings=256, use_cache=False,
        )  # fmt: skip
        torch.manual_seed(seed)
        return LlamaForCausalLM(LlamaConfig(**{**shape, **config})).float()

    return make
