"""docs/llamafactory-keys.md is what scripts/gen_lf_table.py writes from the parser (regenerate it)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _generator():
    spec = importlib.util.spec_from_file_location("gen_lf_table", ROOT / "scripts" / "gen_lf_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lf_key_table_is_in_sync() -> None:
    doc = (ROOT / "docs" / "llamafactory-keys.md").read_text()
    assert doc == _generator().render(), "regenerate: .venv/bin/python scripts/gen_lf_table.py"


def test_table_verdicts_follow_the_parser() -> None:
    verdicts = {key: verdict for key, _, verdict, _ in _generator().verdicts()}
    assert verdicts["quantization_bit"] == "honoured"
    assert verdicts["export_quantization_bit"] == "refused"
    assert verdicts["image_max_pixels"] == "honoured"  # Qwen-VL images (runtime/mm)
    assert verdicts["audio_sampling_rate"] == "refused"
    assert verdicts["disable_gradient_checkpointing"] == "honoured"
    assert verdicts["neat_packing"] == "honoured"  # a rename
    assert set(verdicts.values()) == {"honoured", "noted", "refused"}
