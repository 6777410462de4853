"""bench/data_path.py's pieces that decide what is compared: the data is the same every time, the
summary's ratios are computed from the measured rows, and the restart cost is read from the runtime's own
line (the benchmark itself takes minutes per variant)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from data_path import FAULT_STEP, RESTART_COST, generate_alpaca, restart_keys, summarize  # noqa: E402


def test_generated_rows_are_deterministic_and_registered(tmp_path: Path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = generate_alpaca(tmp_path / "a" / "alpaca.json", 300)
    second = generate_alpaca(tmp_path / "b" / "alpaca.json", 300)
    assert first == second and first["rows"] == 300
    assert (tmp_path / "a" / "alpaca.json").read_bytes() == (tmp_path / "b" / "alpaca.json").read_bytes()
    info = json.loads((tmp_path / "a" / "dataset_info.json").read_text())
    assert info == {"bench_alpaca": {"file_name": "alpaca.json"}}
    rows = json.loads((tmp_path / "a" / "alpaca.json").read_text())
    assert set(rows[0]) == {"instruction", "input", "output"} and any(r["input"] for r in rows)
    stamp = (tmp_path / "a" / "alpaca.json").stat().st_mtime_ns
    generate_alpaca(tmp_path / "a" / "alpaca.json", 300)  # unchanged: not rewritten, warm caches stay warm
    assert (tmp_path / "a" / "alpaca.json").stat().st_mtime_ns == stamp


def test_summary_medians_and_ratios():
    rows = [
        {"variant": "runtime_cold", "first_step_s": 10.0, "cpu_s": 8.0},
        {"variant": "runtime_cold", "first_step_s": 30.0, "cpu_s": 12.0},
        {"variant": "lf_cold", "first_step_s": 40.0, "cpu_s": 20.0},
        {"variant": "runtime_warm", "first_step_s": 5.0, "cpu_s": 2.0},
    ]
    out = summarize(rows)
    assert out["median_first_step_s"] == {"runtime_cold": 20.0, "lf_cold": 40.0, "runtime_warm": 5.0}
    assert out["ratios_first_step_s"] == {"lf_cold / runtime_cold": 2.0, "runtime_cold / runtime_warm": 4.0}
    assert out["ratios_cpu_s"]["lf_cold / runtime_cold"] == 2.0


def test_restart_cost_is_read_from_the_runtimes_line_and_compared_with_lf_warm():
    # The line runtime/fit/progress.py prints at the first step after a restart.
    line = "xgen-runtime: restart cost: 4.2 s from the failure to step 2 (after the resume)"
    found = RESTART_COST.search(line)
    assert found and (float(found.group(1)), int(found.group(2))) == (4.2, FAULT_STEP)
    rows = [
        {"variant": "lf_warm", "round": 0, "first_step_s": 6.0, "cpu_s": 6.0},
        {"variant": "runtime_restart", "round": 0, "restart_cost_s": 3.0, "cpu_s": 10.0},
        {"variant": "lf_warm", "round": 1, "first_step_s": 4.0, "cpu_s": 5.0},
        {"variant": "runtime_restart", "round": 1, "restart_cost_s": 5.0, "cpu_s": 11.0},
    ]
    out = summarize(rows)
    assert out["median_restart_cost_s"] == 4.0 and out["median_first_step_s"] == {"lf_warm": 5.0}
    assert out["ratio_restart_cost / lf_warm_first_step"] == 0.8
    assert out["ratio_restart_cost / lf_warm_first_step, per round"] == {0: 0.5, 1: 1.25}


def test_the_restart_run_saves_before_the_fault_and_steps_after_it():
    keys = restart_keys({"max_steps": 1, "save_strategy": "no", "cutoff_len": 1024})
    assert keys["save_strategy"] == "steps" and keys["save_steps"] == 1  # checkpoint-(FAULT_STEP - 1) exists
    assert keys["max_steps"] == FAULT_STEP + 1 and keys["cutoff_len"] == 1024  # one step after the resume
