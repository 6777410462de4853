"""LLaMA-Factory's other vision-language example configs, each as its users run it, on make-tiny's models:

    train_full/qwen3vl_full_sft.yaml            ZeRO-3 (LLaMA-Factory's ds_z3_config.json), vision tower and
                                                projector frozen: `xgen-runtime train FILE`
    ascend/qwen3vlmoe_full_sft_fsdp2.yaml       `accelerate launch --config_file examples/accelerate/
                                                fsdp2_config.yaml` there: `xgen accelerate FILE
                                                --accelerate-config fsdp2_config.yaml` here, 2 CPU processes
    ascend/qwen3vlmoe_lora_sft_fsdp.yaml        the same with fsdp_config.yaml (FSDP1's file), text rows

Each trains 2 steps and saves what reloads with the processor parts (a checkpoint too). Keys and values are
in tests/runtime/lf_examples; only paths, datasets and max_steps differ (each file's header says which).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from trainer_harness import run_cli

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "tests" / "runtime" / "lf_examples"


def _example(name: str, tiny_vl_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "out"
    text = (EXAMPLES / name).read_text().replace("TINY", str(tiny_vl_dir)).replace("OUT", str(out))
    text = text.replace("DS_Z3", str(EXAMPLES / "ds_z3_config.json"))
    path = tmp_path / name
    path.write_text(text)
    return path, out


def _reloads_with_processor(folder: Path, base: Path | None = None) -> None:
    """The folder's image processor, chat template and weights (or adapter on `base`) load, and the model
    runs an image row."""
    import torch
    from transformers import AutoModelForImageTextToText

    from runtime.mm.stage import load_image_processor

    assert (folder / "chat_template.jinja").is_file() and (folder / "preprocessor_config.json").is_file()
    assert load_image_processor(str(folder)).merge_size == 2
    if base is None:
        model = AutoModelForImageTextToText.from_pretrained(folder)
    else:
        from peft import PeftModel

        model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base), folder)
    with torch.no_grad():
        logits = model.eval()(input_ids=torch.tensor([[5, 9, 14]])).logits
    assert torch.isfinite(logits).all()


def test_lf_qwen3vl_full_sft_example_trains_under_zero3(tiny_vl_dir: Path, tmp_path: Path) -> None:
    path, out = _example("qwen3vl_full_sft.yaml", tiny_vl_dir, tmp_path)
    run = run_cli(["train", str(path)], tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    log = run.stdout
    assert "strategy=deepspeed-z3" in log, log
    # whole counts, not ZeRO-3's partitions: the language model trains, tower and projector stay frozen
    assert "qwen3_vl: 140,160 of 258,336 parameters train (full)" in log, log
    assert "resizing" not in run.stdout + run.stderr  # nor are the partitioned embeddings taken for 0 rows
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2
    from safetensors import safe_open

    def names(folder: Path) -> set[str]:
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            return set(f.keys())

    # the base's names (a plain save_pretrained): transformers' ZeRO-3 loader had them saved as
    # model.language_model.model.* (runtime.model.keep_used_conversions)
    assert names(out) == names(out / "checkpoint-2") == names(tiny_vl_dir / "vl3_model")
    _reloads_with_processor(out)
    _reloads_with_processor(out / "checkpoint-2")  # every checkpoint, as LLaMA-Factory's callback saves


def _accelerate(name: str, accelerate: str, tiny_vl_dir: Path, tmp_path: Path) -> tuple[str, Path]:
    """`xgen accelerate NAME --accelerate-config examples/accelerate/ACCELERATE` rendered and run here on
    2 CPU processes; (what the script printed, output_dir)."""
    path, out = _example(name, tiny_vl_dir, tmp_path)
    (tmp_path / "examples" / "accelerate").mkdir(parents=True)
    (tmp_path / "examples" / "accelerate" / accelerate).write_text(
        (EXAMPLES / "accelerate" / accelerate).read_text()
    )
    flags = ["--accelerate-config", f"examples/accelerate/{accelerate}", "--device", "cpu"]
    flags += ["--devices-per-node", "2", "--python", sys.executable, "--node-rank", "0", "-o", "node0.sh"]
    made = subprocess.run(
        [sys.executable, "-m", "xgen.cli", "accelerate", path.name, *flags],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert made.returncode == 0, made.stderr
    (tmp_path / "tmp").mkdir()
    env = {
        **os.environ,
        "TMPDIR": str(tmp_path / "tmp"),
        "HF_DATASETS_CACHE": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(ROOT),
    }
    for variable in ("NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "XGEN_RUN_DIR", "CUDA_VISIBLE_DEVICES"):
        env.pop(variable, None)
    run = subprocess.run(
        ["bash", "node0.sh"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "world_size=2 nodes=1" in run.stdout and "strategy=fsdp" in run.stdout, run.stdout[-3000:]
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2
    return run.stdout + run.stderr, out


@pytest.mark.slow
def test_lf_ascend_qwen3vlmoe_full_fsdp2_example_runs_through_xgen_accelerate(
    tiny_vl_dir: Path, tmp_path: Path
) -> None:
    said, out = _accelerate("qwen3vlmoe_full_sft_fsdp2.yaml", "fsdp2_config.yaml", tiny_vl_dir, tmp_path)
    assert "fsdp in qwen3vlmoe_full_sft_fsdp2.yaml (unset) -> full_shard auto_wrap" in said
    assert "qwen3_vl_moe: " in said and "(full)" in said
    assert "note: padding-free rows are off for vision-language models" in said
    assert "note: use_v1_kernels: torch_npu's fused kernels are for Ascend NPUs; nothing to do on cpu" in said
    _reloads_with_processor(out)


@pytest.mark.slow
def test_lf_ascend_qwen3vlmoe_lora_fsdp_example_trains_text_rows(tiny_vl_dir: Path, tmp_path: Path) -> None:
    """Text rows only (alpaca): every batch gets LLaMA-Factory's dummy image, so FSDP's ranks all run the
    vision tower and meet in its collectives."""
    said, out = _accelerate("qwen3vlmoe_lora_sft_fsdp.yaml", "fsdp_config.yaml", tiny_vl_dir, tmp_path)
    assert "fsdp in qwen3vlmoe_lora_sft_fsdp.yaml (unset) -> full_shard auto_wrap" in said
    assert "qwen3_vl_moe: " in said and "(lora)" in said
    _reloads_with_processor(out, base=tiny_vl_dir / "vl3moe_model")
