"""Shared helpers for the trainer tests: write a config, run it in-process or under torchrun, read weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
TORCHRUN_TIMEOUT = 240


def base_config(tiny_dir: Path, out: Path, **overrides: Any) -> dict[str, Any]:
    """A few fast steps on the tiny model; deterministic (fixed seed, no dropout)."""
    stage = overrides.get("stage", "sft")
    dataset = {
        "pt": "tiny_pt",
        "sft": "tiny_alpaca",
        "rm": "tiny_pref",
        "dpo": "tiny_pref",
        "kto": "reverse_kto",
    }[stage]
    cfg = {
        "model_name_or_path": str(tiny_dir / "model"),
        "stage": stage,
        "finetuning_type": "full",
        "dataset": dataset,
        "dataset_dir": str(tiny_dir / "data"),
        "cache_dir": str(out.parent / f"{out.name}-cache"),
        "cutoff_len": 64,
        "per_device_train_batch_size": 2,
        "max_steps": 4,
        "learning_rate": 1.0e-3,
        "logging_steps": 1,
        "save_steps": 100,
        "output_dir": str(out),
        "report_to": "none",
        "lora_rank": 4,
        "freeze_trainable_layers": 1,
    }
    cfg.update(overrides)
    return cfg


def write_config(path: Path, cfg: dict[str, Any], *, xgen_style: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"train": cfg} if xgen_style else cfg))
    return path


def run_inprocess(cfg_path: Path) -> int:
    """`xgen-runtime train CFG` in this process; the environment is restored afterwards: a one-rank
    DeepSpeed run exports RANK/MASTER_PORT…, and a later subprocess inheriting that port finds it taken."""
    from runtime.cli import main

    saved = dict(os.environ)
    try:
        return main(["train", str(cfg_path)])
    finally:
        os.environ.clear()
        os.environ.update(saved)


def subprocess_env(tmp: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Own TMPDIR per run: torchrun leaves a torchelastic_* folder behind on every launch."""
    tmpdir = tmp / "tmpdir"
    tmpdir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "TMPDIR": str(tmpdir),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "DS_ACCELERATOR": "cpu",
        "PYTHONUNBUFFERED": "1",
        "XGEN_DEVICE": "cpu",
    }
    env.update(extra or {})
    return env


def run_cli(args: list[str], tmp: Path, *, env: dict[str, str] | None = None, timeout: int = 120):
    return subprocess.run(
        [sys.executable, "-m", "runtime", *args],
        cwd=REPO,
        env=subprocess_env(tmp, env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_torchrun(cfg_path: Path, tmp: Path, *, nproc: int = 2, env: dict[str, str] | None = None):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        "-m",
        "runtime",
        "train",
        str(cfg_path),
    ]
    return subprocess.run(
        cmd, cwd=REPO, env=subprocess_env(tmp, env), capture_output=True, text=True, timeout=TORCHRUN_TIMEOUT
    )


def weights(path: Path) -> dict[str, Any]:
    """All tensors of model.safetensors or adapter_model.safetensors in a save dir."""
    from safetensors.torch import load_file

    for name in ("model.safetensors", "adapter_model.safetensors"):
        if (path / name).is_file():
            return load_file(path / name)
    raise FileNotFoundError(f"no safetensors weights in {path}: {sorted(p.name for p in path.iterdir())}")


def max_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def log_history(out: Path) -> list[dict[str, Any]]:
    return json.loads((out / "trainer_state.json").read_text())["log_history"]


def step_losses(out: Path) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in log_history(out) if "loss" in e}


def reload_adapter(base_dir: Path, adapter_dir: Path, **load: Any) -> Any:
    """A saved adapter on its base, as a user reloads it: a template whose stop words the tiny tokenizer
    lacks (llama3) grew the embeddings in training, so the base gets the same rows first."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from runtime.model import fit_embeddings

    base = AutoModelForCausalLM.from_pretrained(base_dir, **load)
    return PeftModel.from_pretrained(
        fit_embeddings(base, AutoTokenizer.from_pretrained(adapter_dir)), adapter_dir
    )
