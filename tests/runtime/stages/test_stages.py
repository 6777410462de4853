"""Every stage × fine-tuning type trains a few steps in-process and its output reloads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from trainer_harness import base_config, run_inprocess, weights, write_config

from runtime.config import STAGES

TYPES = ("full", "freeze", "lora")


def _reload(out: Path, model_dir: Path, stage: str, finetuning_type: str):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForSequenceClassification if stage == "rm" else AutoModelForCausalLM
    kwargs = {"num_labels": 1} if stage == "rm" else {}
    if finetuning_type == "lora":
        return PeftModel.from_pretrained(auto.from_pretrained(model_dir, **kwargs), out)
    return auto.from_pretrained(out)


def test_every_stage_has_one_runner() -> None:
    from runtime.stages import RUNNERS

    assert tuple(RUNNERS) == STAGES


@pytest.mark.parametrize("finetuning_type", TYPES)
@pytest.mark.parametrize("stage", STAGES)
def test_stage_trains_saves_and_reloads(
    tiny_dir: Path, tmp_path: Path, stage: str, finetuning_type: str
) -> None:
    out = tmp_path / "out"
    cfg = write_config(
        tmp_path / "cfg.yaml", base_config(tiny_dir, out, stage=stage, finetuning_type=finetuning_type)
    )
    assert run_inprocess(cfg) == 0

    results = json.loads((out / "train_results.json").read_text())
    assert results["global_step"] == 4 and results["strategy"] == "single" and results["world_size"] == 1
    assert results["effective_tokens"] > 0 and results["effective_tokens_per_second"] > 0
    assert (out / "training_loss.png").stat().st_size > 0
    assert (out / "tokenizer_config.json").is_file()

    saved = weights(out)
    base = weights(tiny_dir / "model")
    if finetuning_type == "lora":
        assert any("lora_A" in k for k in saved)
    elif stage != "rm":
        changed = {k for k in saved if not torch.equal(saved[k], base[k])}
        assert changed, "training changed no weight"
        if finetuning_type == "freeze":  # only the last layer (freeze_trainable_layers: 1) moved
            assert all(".layers.1." in k for k in changed), sorted(changed)

    model = _reload(out, tiny_dir / "model", stage, finetuning_type)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape[-1] == (1 if stage == "rm" else model.config.vocab_size)
    assert torch.isfinite(logits).all()
