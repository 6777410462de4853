"""bench/data_path.py's pieces that decide what is compared: the data is the same every time, and the
summary's ratios are computed from the measured rows (the benchmark itself takes minutes per variant)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from data_path import generate_alpaca, summarize  # noqa: E402


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
