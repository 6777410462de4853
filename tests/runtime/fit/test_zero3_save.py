"""A ZeRO-3 run ends with a model transformers can load: without stage3_gather_16bit_weights_on_model_save
the flag is set (with a note); with it false the shards are consolidated after the save (with a note)."""

from __future__ import annotations

from pathlib import Path

import pytest
from trainer_harness import base_config, run_cli, write_config

pytestmark = pytest.mark.slow

CASES = [
    ({}, "stage3_gather_16bit_weights_on_model_save; set to true"),
    ({"stage3_gather_16bit_weights_on_model_save": False}, "ZeRO-3 saved shards only"),
]


@pytest.mark.parametrize(("zero", "note"), CASES, ids=["missing", "false"])
def test_zero3_save_holds_weights(zero: dict, note: str, tiny_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    ds = {"train_micro_batch_size_per_gpu": "auto", "zero_optimization": {"stage": 3, **zero}}
    cfg = base_config(tiny_dir, out, max_steps=2, deepspeed=ds)
    proc = run_cli(["train", str(write_config(tmp_path / "cfg.yaml", cfg))], tmp_path, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert note in proc.stdout and f"saved model to {out}" in proc.stdout, proc.stdout[-3000:]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.model.embed_tokens.weight.abs().sum() > 0
