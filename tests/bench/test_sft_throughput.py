"""bench/sft_throughput.py --smoke end to end on CPU: every variant trains and results.json keeps its schema.

The numbers of a smoke run mean nothing (tiny model, CPU); what is checked is that the GPU run of issue 7
will not die on a broken variant and that a script can read its rows.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

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
    "gpu",
    "versions",
}


def test_smoke_run_writes_every_row(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TMPDIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "sft_throughput.py"), "--smoke", "--out", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [(r["mode"], r["variant"]) for r in rows] == [
        (mode, variant) for mode in ("full", "lora") for variant in ("padded", "flat_flex", "runtime")
    ]
    for row in rows:
        assert ROW_KEYS <= set(row), ROW_KEYS - set(row)
        assert row["tokens_per_s"] > 0 and math.isfinite(row["final_loss"]) and row["peak_mem_gib"] >= 0
        assert row["mfu"] is None  # no GPU: no measured peak to divide by
        assert {"torch", "transformers", "peft", "liger-kernel"} <= set(row["versions"])
        assert row["smoke"] is True and row["examples_per_step"] == 8
    by = {(r["mode"], r["variant"]): r for r in rows}
    for mode in ("full", "lora"):
        padded, flat, runtime = (by[mode, v] for v in ("padded", "flat_flex", "runtime"))
        assert padded["ratio_vs_padded"] == 1.0 and flat["ratio_vs_flat_flex"] == 1.0
        expected = round(runtime["tokens_per_s"] / padded["tokens_per_s"], 3)
        assert abs(runtime["ratio_vs_padded"] - expected) < 2e-3
        assert "packing=on" in runtime["levers"]  # the runtime row ran the packed path
        # Same weights, same data, same examples per step, a few steps at a small learning rate:
        # the three variants end at nearly the same loss, so a variant training on other data shows.
        assert abs(runtime["final_loss"] - padded["final_loss"]) < 0.05
    assert "== full SFT" in proc.stdout and "== lora SFT" in proc.stdout
