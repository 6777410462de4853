"""LLaMA-Factory's own example configs (paths → the tiny model, max_samples small) train and save unchanged.

The YAMLs in lf_examples/ follow LLaMA-Factory's examples/train_lora|train_full files key for key;
only model/dataset paths, dataset names and max_samples differ.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from trainer_harness import run_cli, run_inprocess

HERE = Path(__file__).parents[1] / "lf_examples"
IN_PROCESS = ["llama3_lora_dpo.yaml", "llama3_freeze_rm.yaml", "llama3_lora_pretrain.yaml"]
# DeepSpeed cannot run twice in one process (findings E3): these get their own interpreter.
SUBPROCESS = ["llama3_lora_sft_ds3.yaml", "llama3_full_sft_ds2_fa2.yaml"]


def _materialise(name: str, tiny_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "out"
    text = (HERE / name).read_text().replace("TINY", str(tiny_dir)).replace("HERE", str(HERE))
    path = tmp_path / name
    path.write_text(text.replace("OUT", str(out)))
    return path, out


def _saved(out: Path, log: str) -> None:
    assert (out / "train_results.json").is_file()
    assert (out / "adapter_model.safetensors").is_file() or (out / "model.safetensors").is_file()
    assert (out / "training_loss.png").is_file() or "plot_loss: no loss was logged" in log


@pytest.mark.parametrize("name", IN_PROCESS)
def test_lf_example_in_process(name: str, tiny_dir: Path, tmp_path: Path, capsys) -> None:
    path, out = _materialise(name, tiny_dir, tmp_path)
    assert run_inprocess(path) == 0
    stdout = capsys.readouterr().out
    assert "preprocessing_num_workers=16 capped" in stdout
    _saved(out, stdout)


@pytest.mark.slow
@pytest.mark.parametrize("name", SUBPROCESS)
def test_lf_example_deepspeed(name: str, tiny_dir: Path, tmp_path: Path) -> None:
    path, out = _materialise(name, tiny_dir, tmp_path)
    proc = run_cli(["train", str(path)], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "strategy=deepspeed-z" in proc.stdout
    if "fa2" in name:
        assert "flash_attn: fa2 unavailable" in proc.stderr + proc.stdout
    _saved(out, proc.stdout)


# LLaMA-Factory's current examples (train_lora, train_full, merge_lora): train 2 steps, then export the
# result with the matching merge_lora config; the export must load and reproduce the trained logits.
CURRENT = [
    ("qwen3_lora_sft.yaml", "qwen3_lora_sft_merge.yaml", "preprocessing_num_workers=16 capped"),
    ("qwen3_full_sft.yaml", "qwen3_full_sft_merge.yaml", "rope_scaling: yarn, factor 256"),
]


@pytest.mark.parametrize(("train", "merge", "expect"), CURRENT, ids=[t for t, _, _ in CURRENT])
def test_lf_current_example_trains_and_exports(
    train: str, merge: str, expect: str, tiny_dir: Path, tmp_path: Path, capsys, caplog
) -> None:
    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    from runtime.cli import main

    path, out = _materialise(train, tiny_dir, tmp_path)
    assert run_inprocess(path) == 0
    log = capsys.readouterr().out + caplog.text
    assert expect in log, log
    _saved(out, log)
    export = tmp_path / "export"
    text = (HERE / merge).read_text().replace("TINY", str(tiny_dir))
    (tmp_path / merge).write_text(text.replace("ADAPTER", str(out)).replace("EXPORT", str(export)))
    assert main(["export", str(tmp_path / merge)]) == 0
    ids = torch.tensor([[5, 9, 14, 3]])
    trained = AutoPeftModelForCausalLM if "lora" in train else AutoModelForCausalLM
    with torch.no_grad():
        want = trained.from_pretrained(out).eval()(input_ids=ids).logits
        got = AutoModelForCausalLM.from_pretrained(export).eval()(input_ids=ids).logits
    assert (want - got).abs().max() < 1e-4
