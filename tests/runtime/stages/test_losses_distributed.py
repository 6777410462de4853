"""The new losses on 2 gloo ranks end within 1e-5 of one process with the same global batch (2 × 2 = 4).

KTO's reference point is averaged over the ranks, so DDP equals the single run exactly as for other
stages; DFT's token sum is divided by the tokens of the global batch (Trainer's num_items_in_batch);
ZeRO-3 gives KTO's full reference model its own DeepSpeed engine.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from trainer_harness import base_config, max_diff, run_inprocess, run_torchrun, weights, write_config

pytestmark = pytest.mark.slow
STEPS = 4
TOLERANCE = 1e-5

CASES = [
    # (name, config overrides, strategy in the start line)
    ("kto_ddp", {"stage": "kto"}, "ddp"),
    ("kto_z3", {"stage": "kto", "deepspeed": "z3"}, "deepspeed-z3"),
    ("dft_ddp", {"use_dft_loss": True}, "ddp"),
    ("orpo_ddp", {"stage": "dpo", "pref_loss": "orpo"}, "ddp"),
]


@pytest.mark.parametrize(("name", "overrides", "strategy"), CASES, ids=[c[0] for c in CASES])
def test_two_ranks_equal_one_process(
    tiny_dir: Path, tmp_path: Path, name: str, overrides: dict, strategy: str
) -> None:
    single = tmp_path / "single"
    cfg = base_config(tiny_dir, single, max_steps=STEPS, per_device_train_batch_size=4, **overrides)
    cfg.pop("deepspeed", None)
    assert run_inprocess(write_config(tmp_path / "single.yaml", cfg)) == 0

    out = tmp_path / name
    cfg = write_config(tmp_path / "cfg.yaml", base_config(tiny_dir, out, max_steps=STEPS, **overrides))
    proc = run_torchrun(cfg, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"strategy={strategy}" in proc.stdout
    assert max_diff(weights(out), weights(single)) < TOLERANCE
