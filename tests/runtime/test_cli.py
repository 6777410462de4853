"""The command line: bad configs are one line and exit 2 before any model load; export merges LoRA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from trainer_harness import base_config, run_cli, run_inprocess, write_config

from runtime.cli import main

BAD = [
    # (train: section, expected start of the message after "xgen-runtime: error: ")
    ({"learnig_rate": 1e-4}, "train.learnig_rate: unknown key; did you mean 'learning_rate'?"),
    ({"cutoff_len": "long"}, "train.cutoff_len: expected an integer, got str 'long'"),
    ({"stage": "ppo"}, "train.stage: PPO is not supported"),
    ({"finetuning_type": "qlora"}, "train.finetuning_type: must be one of full, freeze, lora"),
    ({"flash_attn": "fa3"}, "train.flash_attn: must be one of auto, sdpa, fa2, eager"),
    ({"deepspeed": "z2", "fsdp": True}, "train.fsdp: deepspeed and fsdp are both set"),
    ({"bf16": True, "fp16": True}, "train.fp16: bf16 and fp16 are both true"),
    ({"deepspeed": "missing/ds_z3.json"}, "train.deepspeed: file not found: missing/ds_z3.json"),
    ({"deepspeed": "z4"}, "train.deepspeed: 'z4' is neither a named stage"),
    ({"eval_strategy": "steps"}, "train.eval_strategy: 'steps' needs val_size > 0 or eval_dataset"),
    ({"warmup_ratio": 2}, "train.warmup_ratio: expected a ratio in [0, 1)"),
    ({"lora_rank": 0}, "train.lora_rank: must be > 0"),
    ({"packing": True, "stage": "dpo"}, "train.packing: only pt and sft pack examples"),
    ({"fsdp": "hybrid_shard"}, "train.fsdp: unsupported 'hybrid_shard'"),
    ({"model_name_or_path": ""}, "train.model_name_or_path: required"),
    ({"do_predict": True}, "train.do_predict: not supported"),
]


@pytest.mark.parametrize(("bad", "message"), BAD, ids=[next(iter(b)) for b, _ in BAD])
def test_bad_config_is_one_line_exit_2(tiny_dir: Path, tmp_path: Path, capsys, bad, message) -> None:
    cfg = base_config(tiny_dir, tmp_path / "out")
    cfg.update(bad)
    path = write_config(tmp_path / "cfg.yaml", cfg, xgen_style=True)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"xgen-runtime: error: {message}"), err


def test_bad_config_subprocess_has_no_traceback_and_loads_no_torch(tmp_path: Path) -> None:
    path = tmp_path / "flat.yaml"
    path.write_text(yaml.safe_dump({"model_name_or_path": "m", "dataset": "d", "stagee": "sft"}))
    proc = run_cli(["train", str(path)], tmp_path, env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
    assert lines == ["xgen-runtime: error: stagee: unknown key; did you mean 'stage'?"]
    imported = {
        line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")
    }
    assert "torch" not in imported and "transformers" not in imported


def test_missing_config_file(tmp_path: Path, capsys) -> None:
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err.startswith("xgen-runtime: error: config: file not found:")


def test_unknown_dataset_fails_before_model_load(tiny_dir: Path, tmp_path: Path, capsys) -> None:
    path = write_config(tmp_path / "cfg.yaml", base_config(tiny_dir, tmp_path / "out", dataset="no_such_set"))
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("xgen-runtime: error: dataset:") and "no_such_set" in err[-1], err
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_export_merges_lora_with_equal_logits(tiny_dir: Path, tmp_path: Path, capsys) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    cfg = base_config(tiny_dir, out, finetuning_type="lora", learning_rate=1e-2, max_steps=6)
    assert run_inprocess(write_config(tmp_path / "train.yaml", cfg)) == 0
    export_cfg = {
        "model_name_or_path": str(tiny_dir / "model"),
        "adapter_name_or_path": str(out),
        "finetuning_type": "lora",
        "export_dir": str(tmp_path / "merged"),
        "export_size": 2,
        "export_legacy_format": False,
    }
    assert main(["export", str(write_config(tmp_path / "export.yaml", export_cfg))]) == 0
    assert "exported model to" in capsys.readouterr().out

    ids = torch.tensor([[5, 9, 14, 3, 22, 7]])
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(tiny_dir / "model")
        base_logits = base(input_ids=ids).logits
        adapter_logits = PeftModel.from_pretrained(base, out)(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
        merged_logits = merged(input_ids=ids).logits
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert (
        adapter_logits - base_logits
    ).abs().max() > 1e-3  # the adapter matters, so the check means something
    assert (merged_logits - adapter_logits).abs().max() < 1e-4
    assert (tmp_path / "merged" / "tokenizer_config.json").is_file()


def test_export_without_adapter_needs_a_model_dir(tmp_path: Path, capsys) -> None:
    path = write_config(tmp_path / "e.yaml", {"model_name_or_path": "m", "export_dir": str(tmp_path / "x")})
    assert main(["export", str(path)]) == 2
    assert capsys.readouterr().err.startswith("xgen-runtime: error: model_name_or_path: m has no config.json")


def test_make_tiny(tmp_path: Path, capsys) -> None:
    assert main(["make-tiny", str(tmp_path / "t")]) == 0
    assert (tmp_path / "t" / "model" / "config.json").is_file()
    assert (tmp_path / "t" / "data" / "dataset_info.json").is_file()
