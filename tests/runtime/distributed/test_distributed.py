"""Distributed modes train for real on CPU (gloo, 2 ranks) and end with the same weights.

Baselines are single-process runs with the same global batch (2 ranks × 2 = 4): DDP itself is
checked against that baseline to 1e-5, so "equal to the baseline" is "equal to DDP".
Each mode is one torchrun launch (~10 s), so one launch checks several things at once.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from trainer_harness import (
    base_config,
    max_diff,
    run_inprocess,
    run_torchrun,
    step_losses,
    weights,
    write_config,
)

pytestmark = pytest.mark.slow
STEPS = 6
TOLERANCE = 1e-5


def _config(tiny_dir: Path, out: Path, **overrides):
    return base_config(tiny_dir, out, max_steps=STEPS, **overrides)


@pytest.fixture(scope="module")
def baselines(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One single-process run per fine-tuning type with the global batch of the 2-rank runs."""
    root = tmp_path_factory.mktemp("baselines")
    outs = {}
    for finetuning_type in ("full", "lora", "freeze", "dpo"):
        out = root / finetuning_type
        kind = {"stage": "dpo", "dataset": "tiny_pref"} if finetuning_type == "dpo" else {}
        cfg = _config(
            tiny_dir,
            out,
            finetuning_type="full" if kind else finetuning_type,
            per_device_train_batch_size=4,
            **kind,
        )
        assert run_inprocess(write_config(root / f"{finetuning_type}.yaml", cfg)) == 0
        outs[finetuning_type] = out
    return outs


def _check_run(proc, out: Path, strategy: str) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    start = [line for line in proc.stdout.splitlines() if line.startswith("xgen-runtime: world_size=")]
    assert start == [
        f"xgen-runtime: world_size=2 nodes=1 hosts={start[0].split('hosts=')[1].split()[0]} "
        f"device=cpu backend=gloo strategy={strategy}"
    ], start
    assert (
        f"xgen-runtime: saved {'adapter' if (out / 'adapter_config.json').exists() else 'model'} to {out}"
        in proc.stdout
    )
    results = json.loads((out / "train_results.json").read_text())
    assert results["world_size"] == 2 and results["strategy"] == strategy and results["global_step"] == STEPS


MODES = [
    # (name, finetuning_type, config overrides, strategy in the start line)
    ("ddp", "full", {}, "ddp"),
    ("z0", "full", {"deepspeed": "z0"}, "deepspeed-z0"),
    ("z1", "full", {"deepspeed": "z1"}, "deepspeed-z1"),
    ("z2", "full", {"deepspeed": "z2"}, "deepspeed-z2"),
    ("z3", "full", {"deepspeed": "z3"}, "deepspeed-z3"),
    ("z2_offload", "full", {"deepspeed": "z2_offload"}, "deepspeed-z2"),
    ("z3_offload", "full", {"deepspeed": "z3_offload"}, "deepspeed-z3"),
    ("fsdp2", "full", {"fsdp": "full_shard auto_wrap"}, "fsdp"),
    ("z3_lora", "lora", {"deepspeed": "z3"}, "deepspeed-z3"),
    ("z2_freeze", "freeze", {"deepspeed": "z2"}, "deepspeed-z2"),
    # DPO with a full-model reference: under ZeRO-3 the reference is its own DeepSpeed engine.
    ("z3_dpo", "dpo", {"deepspeed": "z3", "stage": "dpo", "dataset": "tiny_pref"}, "deepspeed-z3"),
]


@pytest.mark.parametrize(
    ("name", "finetuning_type", "overrides", "strategy"), MODES, ids=[m[0] for m in MODES]
)
def test_mode_matches_baseline(
    tiny_dir, tmp_path, baselines, name, finetuning_type, overrides, strategy
) -> None:
    out = tmp_path / name
    cfg = write_config(
        tmp_path / "cfg.yaml",
        _config(
            tiny_dir,
            out,
            finetuning_type="full" if finetuning_type == "dpo" else finetuning_type,
            **overrides,
        ),
        xgen_style=True,
    )
    proc = run_torchrun(cfg, tmp_path)
    _check_run(proc, out, strategy)
    assert max_diff(weights(out), weights(baselines[finetuning_type])) < TOLERANCE
    if name == "z3_dpo":  # step 1: policy == reference, so the loss is exactly log 2
        assert step_losses(out)[1] == pytest.approx(0.693147, abs=1e-5)
    if name.endswith("offload"):
        assert "zero_force_ds_cpu_optimizer=false" in proc.stdout
    if "deepspeed" in overrides:  # the exact DeepSpeed JSON used is kept next to the model
        used = json.loads((out / "deepspeed_config.json").read_text())
        assert used["zero_optimization"]["stage"] == int(overrides["deepspeed"][1])
    if name == "z3":  # a full ZeRO-3 save must be real weights that transformers loads
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(out)
        assert all(p.numel() > 0 for p in model.parameters())


def test_ddp_preempt_then_resume_continues_exactly(tiny_dir, tmp_path, baselines) -> None:
    """Rank 1 alone gets SIGUSR1 after step 3: both ranks checkpoint step 3 and exit 75, rank 0 names
    the signal; the rerun resumes there, logs the same step-4 loss and ends with the uninterrupted
    run's weights."""
    out = tmp_path / "ddp"
    cfg = write_config(tmp_path / "cfg.yaml", _config(tiny_dir, out, save_steps=100))
    first = run_torchrun(cfg, tmp_path, env={"XGEN_FAULT_SIGNAL_AT_STEP": "3@1"})
    assert first.returncode != 0
    assert "SIGUSR1 received (on another rank): checkpointing at step 3" in first.stdout, first.stdout[-3000:]
    assert "exitcode: 75" in first.stderr or "exitcode  : 75" in first.stderr, first.stderr[-2000:]
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-3"]
    assert not (out / "model.safetensors").exists()

    second = run_torchrun(cfg, tmp_path)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"resuming from {out / 'checkpoint-3'}" in second.stdout
    expected = step_losses(baselines["full"])
    resumed = step_losses(out)
    assert resumed[4] == pytest.approx(expected[4], abs=1e-6)
    assert max_diff(weights(out), weights(baselines["full"])) < TOLERANCE
