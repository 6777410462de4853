"""Image rows: same token ids, labels, pixel_values and image_grid_thw as LLaMA-Factory 0.9.5.

tests/runtime/mm/cases.jsonl holds what LLaMA-Factory's qwen2_vl / qwen3_vl plugin and supervised
processor produce on make-tiny's VL models and image rows (scripts/lf_mm_cases.py wrote it, under three
image_max/min_pixels settings, plus rows whose placeholders do not match their images), and what its
pairwise (DPO) processor and collator make of image preference rows. The runtime is
checked against that file always, and against a fresh run when LLaMA-Factory is installed
(XGEN_LF_PYTHON, default /work/lfvenv/bin/python).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

from runtime.data.templates import resolve_template
from runtime.mm.data import encode_row
from runtime.mm.plugin import PLUGINS, ImageSettings, image_inputs

ROOT = Path(__file__).resolve().parents[3]
CASES = Path(__file__).parent / "cases.jsonl"


def _load(path: Path) -> tuple[dict, list[dict]]:
    """The meta line and the image-row cases (the `trainable` lines: _trainable)."""
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return lines[0]["meta"], [line for line in lines[1:] if "kind" not in line]


def _trainable(path: Path) -> list[dict]:
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines[1:] if line.get("kind") == "trainable"]


def check_trainable(tiny_vl_dir: Path, rows: list[dict]) -> int:
    """LoRA targets (`all`), and the parameters full and freeze tuning train, as LLaMA-Factory chose them."""
    from transformers import AutoModelForImageTextToText

    from runtime.config import parse_train_config
    from runtime.mm.model import adapter_targets, apply_frozen_parts, apply_vl_freeze, composite_of

    for row in rows:
        keys = {
            "model_name_or_path": "x",
            "dataset": "d",
            **{
                k: row[k]
                for k in row
                if k.startswith("freeze_") and not k.endswith("_trainable") and row[k] is not None
            },
        }
        cfg = parse_train_config(keys)
        at = f"{row['model']} {keys}"
        model = AutoModelForImageTextToText.from_pretrained(tiny_vl_dir / row["model"])
        parts = composite_of(model)
        assert sorted(adapter_targets(model, parts, cfg, ["all"])) == row["lora_targets"], at
        for method, apply in (("full", apply_frozen_parts), ("freeze", apply_vl_freeze)):
            model = AutoModelForImageTextToText.from_pretrained(tiny_vl_dir / row["model"])
            apply(model, parts, cfg)
            trained = sorted(n for n, p in model.named_parameters() if p.requires_grad)
            assert trained == row[f"{method}_trainable"], (method, at)
    return len(rows)


def _unpack(packed: dict) -> np.ndarray:
    raw = zlib.decompress(base64.b64decode(packed["f32_zlib_b64"]))
    return np.frombuffer(raw, dtype=np.float32).reshape(packed["shape"])


# One 8-bit level after Qwen's normalisation (1 / 255 / the smallest std, 0.2613): Pillow 13's bicubic
# resize differs from Pillow 11's by one level on some pixels (measured on the 42x35 image).
ONE_LEVEL = 1 / 255 / 0.26130258 + 1e-6


def check_cases(tiny_vl_dir: Path, rows: list[dict], meta: dict) -> int:
    import PIL
    from transformers import AutoImageProcessor, AutoTokenizer

    atol = 1e-6 if meta.get("pillow") == PIL.__version__ else ONE_LEVEL
    compared = 0
    data = tiny_vl_dir / "data"
    for case in rows:
        model = tiny_vl_dir / case["model"]
        tokenizer = AutoTokenizer.from_pretrained(model)
        chat = resolve_template(case["template"], tokenizer)
        image_processor = AutoImageProcessor.from_pretrained(model)
        settings = ImageSettings(
            max_pixels=case.get("image_max_pixels", 768 * 768),
            min_pixels=case.get("image_min_pixels", 32 * 32),
        )
        messages, images = case["messages"], [str(data / p) for p in case["images"]]
        at = f"{case['template']}/{case['setting']}/{case['case']}"
        kwargs = dict(
            tokenizer=tokenizer,
            chat=chat,
            image_processor=image_processor,
            settings=settings,
            image_token=PLUGINS[case["template"]][1],
            cutoff_len=100000,
        )
        if "error" in case:
            with pytest.raises(ValueError, match="placeholder"):
                encode_row(messages[:-1], messages[-1:], "", "", images, **kwargs)
            assert "does not match" in case["error"], at
            compared += 1
            continue
        row = encode_row(messages[:-1], messages[-1:], "", "", images, **kwargs)
        assert row is not None, at
        assert row["input_ids"] == case["input_ids"], at
        assert row["labels"] == case["labels"], at
        mm = image_inputs(image_processor, images, settings)
        assert mm["image_grid_thw"].tolist() == case["image_grid_thw"], at
        np.testing.assert_allclose(
            mm["pixel_values"].numpy(), _unpack(case["pixel_values"]), atol=atol, err_msg=at
        )
        compared += 1
    return compared


def _pairwise(path: Path) -> list[dict]:
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines[1:] if line.get("kind", "").startswith("pairwise")]


def check_pairwise(tiny_vl_dir: Path, rows: list[dict]) -> int:
    """DPO rows with images: chosen/rejected ids and labels as LLaMA-Factory's pairwise processor made them,
    and the collated batch of two rows (chosen rows, then rejected, each with its own images) as its
    PairwiseDataCollatorWithPadding made it."""
    import torch
    from transformers import AutoTokenizer

    from runtime.mm.data import VisionCollator, encode_pair_row
    from runtime.mm.plugin import VISION_BOS, VISION_EOS
    from runtime.mm.stage import load_image_processor

    data = tiny_vl_dir / "data"
    encoded: dict[tuple[str, str], dict] = {}
    compared = 0
    for case in rows:
        model = tiny_vl_dir / case["model"]
        tokenizer = AutoTokenizer.from_pretrained(model)
        image_processor = load_image_processor(str(model))
        image_token = PLUGINS[case["template"]][1]
        if case["kind"] == "pairwise_batch":
            collator = VisionCollator(
                pad_token_id=tokenizer.pad_token_id,
                image_processor=image_processor,
                settings=ImageSettings(),
                image_token_id=tokenizer.convert_tokens_to_ids(image_token),
                vision_start_id=tokenizer.convert_tokens_to_ids(VISION_BOS),
                vision_end_id=tokenizer.convert_tokens_to_ids(VISION_EOS),
            )
            batch = collator([encoded[(case["template"], name)] for name in case["rows"]])
            at = f"{case['template']}/batch"
            assert batch["input_ids"].tolist() == case["input_ids"], at
            assert batch["labels"].tolist() == case["labels"], at
            assert batch["image_grid_thw"].tolist() == case["image_grid_thw"], at
            assert list(batch["pixel_values"].shape) == case["pixel_values_shape"], at
            assert torch.equal(
                batch["mm_token_type_ids"], (batch["input_ids"] == collator.image_token_id).long()
            )
            compared += 1
            continue
        images = [str(data / p) for p in case["images"]]
        kwargs = dict(
            tokenizer=tokenizer,
            chat=resolve_template(case["template"], tokenizer),
            image_processor=image_processor,
            settings=ImageSettings(),
            image_token=image_token,
            cutoff_len=100000,
        )
        at = f"{case['template']}/{case['case']}"
        if "error" in case:
            with pytest.raises(ValueError, match="placeholder"):
                encode_pair_row(case["prompt"], case["response"], "", "", images, **kwargs)
            compared += 1
            continue
        row = encode_pair_row(case["prompt"], case["response"], "", "", images, **kwargs)
        assert row is not None, at
        for key in ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"):
            assert row[key] == case[key], (at, key)
        encoded[(case["template"], case["case"])] = {**row, "images": images}
        compared += 1
    return compared


def test_cases_cover_both_families_and_the_settings():
    _, rows = _load(CASES)
    assert {r["template"] for r in rows} == {"qwen2_vl", "qwen3_vl"}
    assert {r["setting"] for r in rows} == {"defaults", "small", "large"}
    assert sum("error" in r for r in rows) == 12
    assert any(len(r["images"]) == 2 for r in rows if "error" not in r)


def test_matches_llamafactory_recorded(tiny_vl_dir: Path):
    meta, rows = _load(CASES)
    assert check_cases(tiny_vl_dir, rows, meta) == len(rows) == 48


def test_trainable_parts_match_llamafactory_recorded(tiny_vl_dir: Path):
    assert check_trainable(tiny_vl_dir, _trainable(CASES)) == 12  # 3 models x 4 freeze settings


def test_pairwise_rows_match_llamafactory_recorded(tiny_vl_dir: Path):
    # 2 templates x (6 preference rows + 1 bad row + 1 collated batch of two rows)
    assert check_pairwise(tiny_vl_dir, _pairwise(CASES)) == 16


def _lf_python() -> str | None:
    python = os.environ.get("XGEN_LF_PYTHON", "/work/lfvenv/bin/python")
    if not Path(python).exists():
        return None
    probe = subprocess.run([python, "-c", "import llamafactory"], capture_output=True, timeout=300)
    return python if probe.returncode == 0 else None


def test_matches_llamafactory_live(tiny_vl_dir: Path, tmp_path: Path):
    """LLaMA-Factory's own plugin, run now on the same models, images and rows."""
    python = _lf_python()
    if python is None:
        pytest.skip("LLaMA-Factory is not installed (set XGEN_LF_PYTHON to its python)")
    out = tmp_path / "cases.jsonl"
    subprocess.run(
        [python, str(ROOT / "scripts" / "lf_mm_cases.py"), str(tiny_vl_dir), str(out)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    meta, rows = _load(out)
    assert check_cases(tiny_vl_dir, rows, meta) == len(rows)
    assert check_trainable(tiny_vl_dir, _trainable(out)) == 12
    assert check_pairwise(tiny_vl_dir, _pairwise(out)) == 16
    recorded_meta, recorded = _load(CASES)
    if recorded_meta["llamafactory"] == meta["llamafactory"]:
        assert rows == recorded  # the committed file is what this LLaMA-Factory produces
        assert _trainable(out) == _trainable(CASES)
        assert _pairwise(out) == _pairwise(CASES)
