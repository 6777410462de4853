"""Runtime fixtures on top of tests/conftest.py's tiny_dir: the tokenizer and a data-config factory."""

from __future__ import annotations

import dataclasses
import importlib
import sys
from pathlib import Path

import pytest

from runtime.config import TrainConfig, parse_train_config, train_fields

FAKES = Path(__file__).parent / "fakes"


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


# --- a fake torch_npu (no NPU here): tests/runtime/fakes/torch_npu ------------------------------------


@pytest.fixture
def fake_npu(monkeypatch: pytest.MonkeyPatch):
    """`import torch_npu` gives the fake (CALLS reset); it is unloaded again after the test."""
    monkeypatch.syspath_prepend(str(FAKES))
    for name in ("torch_npu", "torch_npu.optim"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    module = importlib.import_module("torch_npu")
    module.reset()
    yield module
    for name in ("torch_npu", "torch_npu.optim"):
        sys.modules.pop(name, None)


@pytest.fixture
def npu_transformers(fake_npu, monkeypatch: pytest.MonkeyPatch):
    """transformers believes an Ascend NPU is present for flash_attention_2 only: loading accepts it and
    its lazy import picks integrations/npu_flash_attention.py, which calls the fake npu_fusion_attention.
    Everything else (TrainingArguments' device, accelerate) still sees the CPU. All restored afterwards."""
    from transformers import modeling_flash_attention_utils as fa_utils
    from transformers.integrations import npu_flash_attention
    from transformers.models.llama import modeling_llama

    npu = ((lambda *a, **k: True, "npu"),)
    monkeypatch.setattr(fa_utils, "is_torch_npu_available", npu[0][0])
    monkeypatch.setitem(fa_utils.FLASH_ATTENTION_COMPATIBILITY_MATRIX[2], "supported_devices", npu)
    monkeypatch.setitem(fa_utils.FLASH_ATTENTION_COMPATIBILITY_MATRIX[2], "custom_supported_devices", npu)
    for name in ("_loaded_implementation", "_flash_fn", "_flash_varlen_fn", "_flash_with_kvcache_fn"):
        monkeypatch.setattr(
            fa_utils, name, None if name == "_loaded_implementation" else getattr(fa_utils, name)
        )
    for name in ("_pad_fn", "_unpad_fn", "_process_flash_kwargs_fn", "_process_with_kvcache_kwargs_fn"):
        monkeypatch.setattr(fa_utils, name, getattr(fa_utils, name))
    if hasattr(fake_npu, "npu_fusion_attention"):
        monkeypatch.setattr(
            npu_flash_attention, "npu_fusion_attention", fake_npu.npu_fusion_attention, raising=False
        )
    # npu_kernels patches the rotary function into transformers' modules: put the originals back afterwards
    for module in (modeling_llama, *_vision_modelings()):
        monkeypatch.setattr(module, "apply_rotary_pos_emb", module.apply_rotary_pos_emb)
    return fake_npu


def _vision_modelings() -> list:
    """The Qwen-VL modeling modules whose apply_rotary_pos_emb the NPU kernels replace (runtime/mm)."""
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl
    from transformers.models.qwen2_vl import modeling_qwen2_vl
    from transformers.models.qwen3_vl import modeling_qwen3_vl
    from transformers.models.qwen3_vl_moe import modeling_qwen3_vl_moe

    return [modeling_qwen2_vl, modeling_qwen2_5_vl, modeling_qwen3_vl, modeling_qwen3_vl_moe]
