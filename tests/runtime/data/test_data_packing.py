"""Padding-free packing (runtime.perf.plan's lever): one flattened row must give each example exactly its own
logits. LLaMA-Factory's packing/neat_packing: tests/runtime/data/test_data_keys.py."""

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

    from runtime.levers import sdpa_varlen

    sdpa_varlen.register()
    model = AutoModelForCausalLM.from_pretrained(tiny_dir / "model", attn_implementation=attn)
    assert model.config._attn_implementation == attn
    check_packing_support(model)  # what the trainer calls; also turns the KV cache off
    assert model.config.use_cache is False
    return model.eval()


@pytest.mark.parametrize(
    ("attn", "collator_attn"),
    [("sdpa", "sdpa"), ("eager", "eager"), ("sdpa", "flash_attention_2"), ("xgen_sdpa_varlen",) * 2],
    ids=["sdpa-rows", "eager-rows", "varlen-one-row", "sdpa_varlen-one-row"],
)
def test_packed_logits_equal_per_example_logits(
    tiny_dir: Path, tiny_tokenizer, sft_rows, data_cfg, attn: str, collator_attn: str
):
    """sdpa/eager: rows of at most cutoff_len; a variable-length attention: the whole micro-batch as one row
    (computed here with sdpa, which keeps the examples apart as well, only more slowly)."""
    import torch

    model = _model(tiny_dir, attn)
    cfg = data_cfg(dataset="tiny_sharegpt", padding_free=True, cutoff_len=64)
    batch = build_collator(cfg, tiny_tokenizer, stage="sft", attention=collator_attn)(sft_rows)
    assert set(batch) == {"input_ids", "labels", "position_ids"}  # no attention_mask: packed mode
    total = sum(len(r["input_ids"]) for r in sft_rows)
    if collator_attn in ("flash_attention_2", "xgen_sdpa_varlen"):
        assert batch["input_ids"].shape == (1, total)
    else:
        assert batch["input_ids"].shape[0] > 1 and batch["input_ids"].shape[1] <= 64
        assert int((batch["labels"] != IGNORE).sum()) == sum(
            sum(label != IGNORE for label in r["labels"][1:]) for r in sft_rows
        )
    with torch.no_grad():
        packed = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        # Control: the same rows without restarting positions must differ (the check can fail).
        leaky = model(input_ids=batch["input_ids"]).logits
    # Find each example in the rows: it starts where position 0 is followed by its own tokens.
    found, worst, leak = 0, 0.0, 0.0
    for row in sft_rows:
        n = len(row["input_ids"])
        hits = [
            (r, c)
            for r in range(batch["input_ids"].shape[0])
            for c in range(batch["input_ids"].shape[1] - n + 1)
            if batch["position_ids"][r, c] == 0
            and batch["input_ids"][r, c : c + n].tolist() == row["input_ids"]
        ]
        assert hits, "an example was split or lost"
        r, c = hits[0]
        with torch.no_grad():
            alone = model(input_ids=torch.tensor([row["input_ids"]])).logits[0]
        worst = max(worst, (packed[r, c : c + n] - alone).abs().max().item())
        leak = max(leak, (leaky[r, c : c + n] - alone).abs().max().item())
        assert batch["position_ids"][r, c : c + n].tolist() == list(range(n))
        assert batch["labels"][r, c].item() == IGNORE
        assert batch["labels"][r, c + 1 : c + n].tolist() == row["labels"][1:]
        found += 1
    assert found == len(sft_rows)
    assert worst < 1e-5, f"{attn}: packed examples see each other (max |diff| {worst})"
    assert leak > 1e-3
    model.train()  # what Trainer runs: the same isolation in training mode, with the loss
    out = model(**batch)
    assert (out.logits - packed).abs().max().item() < 1e-5 and torch.isfinite(out.loss)


def test_micro_batch_rows_and_token_budget_batches() -> None:
    from runtime.data.packing import TokenBudgetBatches, pack_micro_batch, row_capacity

    features = [
        {"input_ids": list(range(1, n + 1)), "labels": list(range(1, n + 1))} for n in (5, 9, 3, 7, 2)
    ]
    rows = pack_micro_batch(features, 10)
    assert all(len(r["input_ids"]) <= 10 for r in rows) and len(rows) == 3  # 26 tokens: three rows of <= 10
    assert sorted(len(r["input_ids"]) for r in rows) == [
        7,
        9,
        10,
    ]  # whole examples (9 | 3+7 | 5+2), batch order kept in a row
    assert rows[0]["position_ids"] == list(range(9)) and rows[1]["position_ids"] == [*range(3), *range(7)]
    assert len(pack_micro_batch(features, None)) == 1  # variable-length attention: one row
    # An example longer than the cap (only a pt/sft bug makes one) stays whole: rows grow to the longest.
    assert [len(r["input_ids"]) for r in pack_micro_batch(features, 4)] == [9, 9, 8]
    assert (
        row_capacity("sdpa", 512) == 512
        and row_capacity("eager", 512) == 512
        and row_capacity(None, 512) == 512
    )
    assert row_capacity("flash_attention_2", 512) is None and row_capacity("flex_attention", 512) is None
    assert row_capacity("xgen_sdpa_varlen", 512) is None

    lengths = [(i * 37) % 200 + 10 for i in range(300)]
    batches = TokenBudgetBatches(lengths, 1000, seed=3)
    first = list(batches)
    assert sorted(i for b in first for i in b) == list(range(300))  # every example once per epoch
    assert all(sum(lengths[i] for i in b) <= 1000 for b in first)
    assert sum(lengths) / (len(batches) * 1000) > 0.95  # knapsack fills the budget
    assert list(TokenBudgetBatches(lengths, 1000, seed=3)) == first  # same on every rank
    batches.set_epoch(1)
    second = list(batches)
    assert second != first and sorted(map(tuple, second)) == sorted(map(tuple, first))  # reordered only
    assert len(batches) == len(second)
    rows = TokenBudgetBatches(lengths, 1000, seed=3, row=250)  # sdpa: rows of <= 250 first, then the budget
    assert sorted(i for b in rows for i in b) == list(range(300))
    assert all(sum(lengths[i] for i in b) <= 1000 for b in rows)
    computed = 0
    for b in rows:  # what the collator then computes: its rows padded to the longest
        packed = pack_micro_batch([{"input_ids": [1] * lengths[i]} for i in b], 250)
        computed += len(packed) * max(len(r["input_ids"]) for r in packed)
    assert sum(lengths) / computed > 0.95


def test_packed_pt_block_keeps_documents_apart(tiny_dir: Path, tiny_tokenizer, data_cfg):
    import torch

    cfg = data_cfg(dataset="tiny_pt", stage="pt", cutoff_len=48, padding_free=True)
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
    with pytest.raises(ConfigError) as info:  # the config rules refuse it: the data path never sees it
        data_cfg(dataset="tiny_pref", stage="dpo", packing=True)
    assert (info.value.key, info.value.message) == ("packing", "only pt and sft pack examples; stage is dpo")
