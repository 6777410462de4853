"""Padding-free packing (runtime.perf's lever): one flattened row must give each example exactly its own
logits. LLaMA-Factory's packing/neat_packing: tests/runtime/test_data_keys.py."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from runtime.config import ConfigError, TrainConfig
from runtime.data import build_collator, build_datasets, check_packing_support

IGNORE = -100


@pytest.fixture(scope="module")
def sft_rows(_tiny_tokenizer_loaded, tiny_dir: Path, tmp_path_factory):
    cfg = TrainConfig(
        dataset="tiny_sharegpt",
        dataset_dir=str(tiny_dir / "data"),
        cutoff_len=64,
        max_samples=6,
        cache_dir=str(tmp_path_factory.mktemp("cache")),
    )
    train = build_datasets(cfg, copy.deepcopy(_tiny_tokenizer_loaded), stage="sft").train
    rows = [train[i] for i in range(len(train))]
    assert len({len(r["input_ids"]) for r in rows}) > 2  # examples of different lengths
    return rows


def _model(tiny_dir: Path, attn: str):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir / "model", attn_implementation=attn)
    assert model.config._attn_implementation == attn
    check_packing_support(model)  # what the trainer calls; also turns the KV cache off
    assert model.config.use_cache is False
    return model.eval()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_logits_equal_per_example_logits(
    tiny_dir: Path, tiny_tokenizer, sft_rows, data_cfg, attn: str
):
    import torch

    model = _model(tiny_dir, attn)
    collate = build_collator(data_cfg(padding_free=True), tiny_tokenizer, stage="sft")
    batch = collate(sft_rows)
    assert set(batch) == {"input_ids", "labels", "position_ids"}  # no attention_mask: packed mode
    assert batch["input_ids"].shape == (1, sum(len(r["input_ids"]) for r in sft_rows))
    with torch.no_grad():
        packed = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
        # Control: the same row without restarting positions must differ (the check can fail).
        leaky = model(input_ids=batch["input_ids"]).logits[0]
        start, worst, leak = 0, 0.0, 0.0
        for row in sft_rows:
            n = len(row["input_ids"])
            alone = model(input_ids=torch.tensor([row["input_ids"]])).logits[0]
            worst = max(worst, (packed[start : start + n] - alone).abs().max().item())
            leak = max(leak, (leaky[start : start + n] - alone).abs().max().item())
            assert batch["position_ids"][0, start : start + n].tolist() == list(range(n))
            assert batch["labels"][0, start].item() == IGNORE
            assert batch["labels"][0, start + 1 : start + n].tolist() == row["labels"][1:]
            start += n
    assert worst < 1e-5, f"{attn}: packed examples see each other (max |diff| {worst})"
    assert leak > 1e-3
    model.train()  # what Trainer runs: the same isolation in training mode, with the loss
    out = model(**batch)
    assert (out.logits[0] - packed).abs().max().item() < 1e-5 and torch.isfinite(out.loss)


def test_packed_pt_block_keeps_documents_apart(tiny_dir: Path, tiny_tokenizer, data_cfg):
    import torch

    cfg = data_cfg(dataset="tiny_pt", cutoff_len=48, padding_free=True)
    block = build_datasets(cfg, tiny_tokenizer, stage="pt").train[1]
    batch = build_collator(cfg, tiny_tokenizer, stage="pt")([block])
    positions = block["position_ids"]
    starts = [i for i, p in enumerate(positions) if p == 0] + [len(positions)]
    assert len(starts) > 2
    model = _model(tiny_dir, "sdpa")
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        for a, b in zip(starts[:-1], starts[1:], strict=True):
            alone = model(input_ids=torch.tensor([block["input_ids"][a:b]])).logits[0]
            assert (packed[a:b] - alone).abs().max().item() < 1e-5
    assert [batch["labels"][0, i].item() for i in starts[:-1]] == [IGNORE] * (len(starts) - 1)


def test_packing_support_and_stage_rules(data_cfg, tiny_tokenizer):
    for attn in ("sdpa", "eager", "flash_attention_2", "flex_attention"):
        check_packing_support(attn)
    with pytest.raises(ConfigError) as info:
        check_packing_support("paged|sdpa")
    assert info.value.key == "packing"
    with pytest.raises(ConfigError) as info:
        build_collator(data_cfg(packing=True), tiny_tokenizer, stage="dpo")
    assert info.value.key == "packing"
