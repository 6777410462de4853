"""bench/sft_throughput.py --smoke end to end on CPU: every variant trains and results.json keeps its schema.

The numbers of a smoke run mean nothing (tiny model, CPU); what is checked is that the GPU run
(bench/run_gpu.sh) will not die on a broken variant and that a script can read its rows. The LLaMA-Factory
variants need its own venv (bench/lf_venv.sh): their test runs only when XGEN_LF_PYTHON names that venv's
python.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROW_KEYS = {
    "mode",
    "variant",
    "tokens_per_s",
    "mfu",
    "peak_mem_gib",
    "final_loss",
    "ratio_vs_padded",
    "ratio_vs_flat_flex",
    "ratio_vs_lf_default",
    "ratio_vs_lf_best",
    "first_step_s",
    "tokens_per_step",
    "repeats",
    "runs",
    "gpu",
    "versions",
}


def smoke(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """One smoke run (each variant in its own process, so a few seconds of imports per variant)."""
    out = tmp_path / "results.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TMPDIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "sft_throughput.py"), "--smoke", "--out", str(out), *extra],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads(out.read_text())


def test_smoke_run_writes_every_row(tmp_path: Path) -> None:
    # Each variant costs a process start (imports): the suite's slowest test was 73 s with flat_flex (on
    # CPU sdpa over one flattened row, not the GPU path it stands for) and 84 s in CI with both modes. LoRA
    # runs here: the same bench code as full plus peft; full training is covered by tests/runtime.
    proc, rows = smoke(tmp_path, "--modes", "lora", "--variants", "padded,runtime")
    assert [(r["mode"], r["variant"]) for r in rows] == [("lora", "padded"), ("lora", "runtime")]
    for row in rows:
        assert ROW_KEYS <= set(row), ROW_KEYS - set(row)
        assert row["tokens_per_s"] > 0 and math.isfinite(row["final_loss"]) and row["peak_mem_gib"] >= 0
        assert row["mfu"] is None  # no GPU: no measured peak to divide by
        assert {"torch", "transformers", "peft", "liger-kernel"} <= set(row["versions"])
        assert row["smoke"] is True and row["examples_per_step"] == 8
        assert row["first_step_s"] > 0 and row["repeats"] == 1 and len(row["runs"]) == 1
        assert row["ratio_vs_lf_default"] is None  # no LLaMA-Factory variant in this run
    by = {(r["mode"], r["variant"]): r for r in rows}
    for mode in ("lora",):
        padded, runtime = (by[mode, v] for v in ("padded", "runtime"))
        assert padded["ratio_vs_padded"] == 1.0 and runtime["ratio_vs_flat_flex"] is None
        expected = round(runtime["tokens_per_s"] / padded["tokens_per_s"], 3)
        assert abs(runtime["ratio_vs_padded"] - expected) < 2e-3
        assert "padding_free=on" in runtime["levers"]  # the runtime row ran the padding-free path
        # Same weights, same data, same examples per step, a few steps at a small learning rate:
        # the three variants end at nearly the same loss, so a variant training on other data shows.
        assert abs(runtime["final_loss"] - padded["final_loss"]) < 0.05
    assert "== lora SFT" in proc.stdout and "== full SFT" not in proc.stdout


@pytest.mark.skipif(
    not os.environ.get("XGEN_LF_PYTHON"),
    reason="LLaMA-Factory variants need its venv (bash bench/lf_venv.sh DIR, XGEN_LF_PYTHON=DIR/bin/python)",
)
def test_smoke_llamafactory_variants(tmp_path: Path) -> None:
    """lf_default and lf_best train from LLaMA-Factory's venv on the same data and template as the runtime."""
    _, rows = smoke(tmp_path, "--modes", "lora", "--variants", "padded,lf_default,lf_best")
    by = {r["variant"]: r for r in rows}
    lf_default, lf_best, padded = by["lf_default"], by["lf_best"], by["padded"]
    # its tokenisation of the rows equals ours (same template, same ids), and the replayed batch order is
    # its order (its own padded token count matched at every step)
    assert lf_default["same_tokens_as_bench"] is True
    assert lf_default["order_verified"] is True and lf_best["order_verified"] is True
    # the same batches as the padded Trainer: the same real tokens per step; packed rows carry more examples
    assert lf_default["tokens_per_step"] == padded["tokens_per_step"]
    assert lf_best["examples_per_row"] > 1.5 and lf_best["tokens_per_step"] > 1.5 * padded["tokens_per_step"]
    # gradient checkpointing does not change the arithmetic: the same weights after the same batches
    assert abs(lf_default["final_loss"] - padded["final_loss"]) < 1e-3
    assert lf_default["ratio_vs_lf_default"] == 1.0 and lf_best["ratio_vs_lf_best"] == 1.0
    assert lf_best["lf_keys"] == {"neat_packing": True, "disable_gradient_checkpointing": True}
    assert "llamafactory" in lf_best["versions"]["llamafactory_venv"]
