"""Per-stage tokenization: exact prompt masking (checked by decoding), cutoff_len, pt blocks, pairs."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from runtime.data import build_collator, build_datasets, resolve_template

IGNORE = -100


def _kept(tokenizer, row, prefix=""):
    ids, labels = row[f"{prefix}input_ids"], row[f"{prefix}labels"]
    assert len(ids) == len(labels)
    # efficient_eos templates (glm4) train a later prompt's first token to predict the EOS
    assert all(
        label in (IGNORE, token, tokenizer.eos_token_id) for token, label in zip(ids, labels, strict=True)
    )
    return tokenizer.decode([t for t, lab in zip(ids, labels, strict=True) if lab == t])


def _masked(tokenizer, row, prefix=""):
    ids, labels = row[f"{prefix}input_ids"], row[f"{prefix}labels"]
    return tokenizer.decode([t for t, lab in zip(ids, labels, strict=True) if lab == IGNORE])


def test_sft_masks_exactly_the_prompt(data_cfg, tiny_tokenizer, tiny_dir: Path):
    rows = json.loads((tiny_dir / "data" / "reverse_sft.json").read_text())
    train = build_datasets(data_cfg(dataset="reverse_sft"), tiny_tokenizer, stage="sft").train
    assert len(train) == len(rows)
    for src, row in zip(rows[:50], train.select(range(50)), strict=True):
        messages = [{"role": "user", "content": src["instruction"]}]
        prompt = tiny_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert _masked(tiny_tokenizer, row) == prompt
        assert _kept(tiny_tokenizer, row) == src["output"] + "<|im_end|>\n"
        # The training prompt tokens are exactly what inference feeds the model.
        n_prompt = row["labels"].index(next(lab for lab in row["labels"] if lab != IGNORE))
        assert row["input_ids"][:n_prompt] == tiny_tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert row["attention_mask"] == [1] * len(row["input_ids"])


def test_sft_multi_turn_trains_every_reply(data_cfg, tiny_tokenizer, tiny_dir: Path):
    source = [
        json.loads(line) for line in (tiny_dir / "data" / "tiny_sharegpt.jsonl").read_text().splitlines()
    ]
    train = build_datasets(data_cfg(dataset="tiny_sharegpt"), tiny_tokenizer, stage="sft").train
    multi = 0
    for src, row in zip(source, train, strict=True):
        replies = [t["value"] for t in src["conversations"] if t["from"] == "gpt"]
        multi += len(replies) > 1
        assert _kept(tiny_tokenizer, row) == "".join(r + "<|im_end|>\n" for r in replies)
        assert "<|im_start|>assistant\n" in _masked(tiny_tokenizer, row)
    assert multi > 50


@pytest.mark.parametrize(
    "name", ["alpaca", "default", "empty", "llama3", "mistral", "qwen", "qwen3_nothink", "glm4"]
)
def test_named_templates_mask_the_reply(data_cfg, tiny_tokenizer, tiny_dir: Path, name: str):
    rows = json.loads((tiny_dir / "data" / "tiny_alpaca.json").read_text())
    tokenizer = copy.deepcopy(tiny_tokenizer)  # a template fixes its tokenizer (EOS, stop words)
    train = build_datasets(
        data_cfg(dataset="tiny_alpaca", template=name, max_samples=20), tokenizer, stage="sft"
    ).train
    chat = resolve_template(name, tokenizer)
    for src, row in zip(rows[:20], train, strict=True):
        kept = _kept(tokenizer, row)
        assert src["output"] in kept and src["instruction"] not in kept
        assert src["instruction"] in _masked(tokenizer, row)
        history = [m for pair in src.get("history") or [] for m in pair]
        messages = [
            {"role": r, "content": c}
            for r, c in zip(["user", "assistant"] * (len(history) // 2), history, strict=True)
        ]
        messages.append(
            {"role": "user", "content": "\n".join(x for x in (src["instruction"], src["input"]) if x)}
        )
        full = chat.render(
            tokenizer,
            ([{"role": "system", "content": src["system"]}] if src.get("system") else [])
            + messages
            + [{"role": "assistant", "content": src["output"]}],
        )
        assert tokenizer.decode(row["input_ids"]) == full + (
            tokenizer.eos_token if chat.efficient_eos else ""
        )


def test_cutoff_len_keeps_the_response(data_cfg, tiny_tokenizer):
    long_prompt = build_datasets(data_cfg(dataset="tiny_alpaca"), tiny_tokenizer, stage="sft").train
    cut = build_datasets(data_cfg(dataset="tiny_alpaca", cutoff_len=24), tiny_tokenizer, stage="sft").train
    assert max(len(r["input_ids"]) for r in long_prompt) > 24
    truncated = checked = 0
    for full, short in zip(long_prompt, cut, strict=True):
        assert len(short["input_ids"]) <= 24
        if len(full["input_ids"]) <= 24:
            assert short == full
            continue
        truncated += 1
        reply = [lab for lab in full["labels"] if lab != IGNORE]
        single_turn = full["labels"][-len(reply) :] == reply
        if single_turn and 2 * len(reply) < 24:
            # Single-turn with a short reply: the whole reply survives, the prompt loses its start.
            assert [lab for lab in short["labels"] if lab != IGNORE] == reply
            assert short["input_ids"] == full["input_ids"][-len(short["input_ids"]) :]
            checked += 1
    assert truncated > 20 and checked > 10


def test_pt_blocks(data_cfg, tiny_tokenizer, tiny_dir: Path):
    texts = [r["text"] for r in json.loads((tiny_dir / "data" / "tiny_pt.json").read_text())]
    stream = [
        t
        for text in texts
        for t in tiny_tokenizer(text + "<|im_end|>", add_special_tokens=False)["input_ids"]
    ]
    train = build_datasets(
        data_cfg(dataset="tiny_pt", stage="pt", cutoff_len=32), tiny_tokenizer, stage="pt"
    ).train
    assert set(train.column_names) == {"input_ids", "attention_mask", "labels"}
    assert all(len(ids) == 32 for ids in train["input_ids"][:-1]) and 0 < len(train[-1]["input_ids"]) <= 32
    assert [t for ids in train["input_ids"] for t in ids] == stream
    assert train["labels"] == train["input_ids"]

    # LLaMA-Factory's pt `packing: false`: one row per document, cut to cutoff_len.
    single = build_datasets(
        data_cfg(dataset="tiny_pt", stage="pt", cutoff_len=32, packing=False), tiny_tokenizer, stage="pt"
    )
    documents = [tiny_tokenizer(t + "<|im_end|>", add_special_tokens=False)["input_ids"][:32] for t in texts]
    assert single.train["input_ids"] == documents

    packed = build_datasets(  # the padding-free lever: positions restart per document inside a block
        data_cfg(dataset="tiny_pt", stage="pt", cutoff_len=32, padding_free=True), tiny_tokenizer, stage="pt"
    ).train
    eos = tiny_tokenizer.eos_token_id
    for row in packed:
        ids, positions = row["input_ids"], row["position_ids"]
        assert positions[0] == 0
        for i in range(1, len(ids)):  # a document starts right after each EOS, and only there
            assert positions[i] == (0 if ids[i - 1] == eos else positions[i - 1] + 1)


def test_preference_rows(data_cfg, tiny_tokenizer, tiny_dir: Path):
    rows = json.loads((tiny_dir / "data" / "reverse_pref.json").read_text())
    train = build_datasets(data_cfg(dataset="reverse_pref"), tiny_tokenizer, stage="dpo").train
    assert {"chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"} <= set(
        train.column_names
    )
    for src, row in zip(rows[:40], train.select(range(40)), strict=True):
        assert _kept(tiny_tokenizer, row, "chosen_") == src["chosen"] + "<|im_end|>\n"
        assert _kept(tiny_tokenizer, row, "rejected_") == src["rejected"] + "<|im_end|>\n"
        assert _masked(tiny_tokenizer, row, "chosen_") == _masked(tiny_tokenizer, row, "rejected_")
        assert src["instruction"] in _masked(tiny_tokenizer, row, "chosen_")

    short = build_datasets(
        data_cfg(dataset="tiny_pref_sharegpt", cutoff_len=12), tiny_tokenizer, stage="rm"
    ).train
    assert all(len(r["chosen_input_ids"]) <= 12 and len(r["rejected_input_ids"]) <= 12 for r in short)
    assert all(any(lab != IGNORE for lab in r["chosen_labels"]) for r in short)


def test_padding_and_pairwise_collators(data_cfg, tiny_tokenizer):
    cfg = data_cfg(dataset="tiny_alpaca")
    rows = [build_datasets(cfg, tiny_tokenizer, stage="sft").train[i] for i in range(4)]
    batch = build_collator(cfg, tiny_tokenizer, stage="sft")(rows)
    width = max(len(r["input_ids"]) for r in rows)
    assert batch["input_ids"].shape == (4, width) and "position_ids" not in batch
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        assert batch["input_ids"][i, :n].tolist() == row["input_ids"]
        assert batch["input_ids"][i, n:].eq(tiny_tokenizer.pad_token_id).all()
        assert batch["attention_mask"][i].sum() == n and batch["labels"][i, n:].eq(IGNORE).all()

    pcfg = data_cfg(dataset="tiny_pref")
    pairs = [build_datasets(pcfg, tiny_tokenizer, stage="dpo").train[i] for i in range(3)]
    batch = build_collator(pcfg, tiny_tokenizer, stage="dpo")(pairs)
    assert batch["input_ids"].shape[0] == 6
    for i, pair in enumerate(pairs):
        for side, offset in (("chosen", 0), ("rejected", 3)):
            n = len(pair[f"{side}_input_ids"])
            assert batch["input_ids"][i + offset, :n].tolist() == pair[f"{side}_input_ids"]
            assert batch["labels"][i + offset, :n].tolist() == pair[f"{side}_labels"]


def test_tokenizer_without_chat_template_falls_back_to_chatml(tiny_dir: Path, data_cfg, capsys):
    from transformers import AutoTokenizer

    bare = AutoTokenizer.from_pretrained(tiny_dir / "model")
    bare.chat_template = None
    row = build_datasets(data_cfg(dataset="reverse_sft", max_samples=1), bare, stage="sft").train[0]
    assert "no chat template; using chatml" in capsys.readouterr().out
    assert bare.decode(row["input_ids"]).startswith("<|im_start|>user\nreverse: ")
