"""The trainer really learns: SFT masters a held-out reversal task, DPO ranks its pairs.

Settings and thresholds were measured on this CPU machine (torch 2.13, seed 42):
SFT 200 steps: eval loss 6.2 -> 0.087, greedy exact match 64/64 on unseen triples (threshold 0.9).
DPO 200 steps on 64 reverse_pref pairs: reward accuracy 1.0 (threshold > 0.9; 150 steps gave 0.95).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from trainer_harness import base_config, log_history, run_inprocess, write_config

EXACT_MATCH_THRESHOLD = 0.9


def _eval_loss_only(tiny_dir: Path, tmp_path: Path) -> float:
    """do_train: false + eval_dataset → evaluate the untrained model (LLaMA-Factory's eval-only run)."""
    out = tmp_path / "before"
    cfg = base_config(
        tiny_dir,
        out,
        dataset="reverse_sft",
        eval_dataset="reverse_sft_eval",
        do_train=False,
        do_eval=True,
        per_device_eval_batch_size=64,
    )
    assert run_inprocess(write_config(tmp_path / "before.yaml", cfg)) == 0
    return json.loads((out / "eval_results.json").read_text())["eval_loss"]


def _exact_match(model_dir: Path, rows: list[dict]) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    hits = 0
    for row in rows:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": row["instruction"]}], add_generation_prompt=True, return_dict=False
        )
        out = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=12,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=end,
        )
        hits += tokenizer.decode(out[0, len(prompt) :], skip_special_tokens=True).strip() == row["output"]
    return hits / len(rows)


def test_sft_learns_reversal(tiny_dir: Path, tmp_path: Path) -> None:
    before = _eval_loss_only(tiny_dir, tmp_path)
    out = tmp_path / "sft"
    cfg = base_config(
        tiny_dir,
        out,
        dataset="reverse_sft",
        eval_dataset="reverse_sft_eval",
        max_steps=200,
        learning_rate=5e-3,
        per_device_train_batch_size=16,
        lr_scheduler_type="cosine",
        warmup_ratio=0.05,
        logging_steps=50,
        eval_strategy="steps",
        eval_steps=100,
    )
    assert run_inprocess(write_config(tmp_path / "sft.yaml", cfg)) == 0
    after = json.loads((out / "eval_results.json").read_text())["eval_loss"]
    assert after <= before / 2, (before, after)
    assert [e["step"] for e in log_history(out) if "eval_loss" in e][:2] == [100, 200]  # eval at eval_steps
    rows = json.loads((tiny_dir / "data" / "reverse_sft_eval.json").read_text())
    assert _exact_match(out, rows) >= EXACT_MATCH_THRESHOLD


def test_dpo_ranks_chosen_over_rejected(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "dpo"
    cfg = base_config(
        tiny_dir,
        out,
        stage="dpo",
        dataset="reverse_pref",
        eval_dataset="reverse_pref",
        max_samples=64,
        max_steps=200,
        learning_rate=5e-3,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=64,
        logging_steps=50,
    )
    assert run_inprocess(write_config(tmp_path / "dpo.yaml", cfg)) == 0
    metrics = json.loads((out / "eval_results.json").read_text())
    assert metrics["eval_rewards/accuracies"] > 0.9, metrics
    assert metrics["eval_rewards/margins"] > 0
    logged = [e for e in log_history(out) if "rewards/accuracies" in e]
    assert logged and "rewards/margins" in logged[-1]
