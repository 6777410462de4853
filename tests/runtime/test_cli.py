"""The command line: bad configs are one line and exit 2 before any model load; export merges LoRA."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from trainer_harness import base_config, run_cli, run_inprocess, subprocess_env, write_config

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
    ({"deepspeed": "z4"}, "train.deepspeed: unknown ZeRO stage 'z4'; choose one of z0"),
    ({"eval_strategy": "steps"}, "train.eval_strategy: 'steps' needs val_size > 0 or eval_dataset"),
    ({"warmup_ratio": 2}, "train.warmup_ratio: expected a ratio in [0, 1)"),
    ({"lora_rank": 0}, "train.lora_rank: must be > 0"),
    ({"packing": True, "stage": "dpo"}, "train.packing: only pt and sft pack examples"),
    ({"fsdp": "hybrid_shard"}, "train.fsdp: unsupported 'hybrid_shard'"),
    ({"model_name_or_path": ""}, "train.model_name_or_path: required"),
    ({"do_predict": True}, "train.do_predict: needs predict_with_generate: true"),
    ({"quantization_bit": 4}, "train.quantization_bit: a quantised base trains adapters only"),
    ({"audio_sampling_rate": 8000}, "train.audio_sampling_rate: audio is not supported"),
    ({"ray_num_workers": 2}, "train.ray_num_workers: Ray is not supported"),
    ({"vllm_maxlen": 2048}, "train.vllm_maxlen: inference engines are out of scope"),
    ({"split_special_tokens": True}, "train.split_special_tokens: a LLaMA-Factory key (BaseModelArguments)"),
    ({"rope_scaling": "ntk"}, "train.rope_scaling: must be one of linear, dynamic, yarn, llama3"),
    ({"pure_bf16": True, "fp16": True}, "train.pure_bf16: pure_bf16 and fp16 are both true"),
    (
        {"disable_gradient_checkpointing": True, "gradient_checkpointing": True},
        "train.disable_gradient_checkpointing: contradicts gradient_checkpointing: true",
    ),
    (
        {
            "finetuning_type": "lora",
            "deepspeed": {"zero_optimization": {"stage": 2}, "tensor_parallel": {"autotp_size": 2}},
        },
        "train.deepspeed: tensor_parallel.autotp_size 2 (DeepSpeed AutoTP) does not work with LoRA",
    ),
]


@pytest.mark.parametrize(("bad", "message"), BAD, ids=[next(iter(b)) for b, _ in BAD])
def test_bad_config_is_one_line_exit_2(tiny_dir: Path, tmp_path: Path, capsys, bad, message) -> None:
    cfg = base_config(tiny_dir, tmp_path / "out")
    cfg.update(bad)
    path = write_config(tmp_path / "cfg.yaml", cfg, xgen_style=True)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"xgen-runtime: error: {message}"), err


def test_several_bad_keys_one_line_each(tiny_dir: Path, tmp_path: Path, capsys) -> None:
    cfg = base_config(tiny_dir, tmp_path / "out")
    cfg.update(
        {"ref_model_quantization_bit": 4, "learnig_rate": 1, "audio_sampling_rate": 2, "cutoff_len": "x"}
    )
    assert main(["train", str(write_config(tmp_path / "cfg.yaml", cfg, xgen_style=True))]) == 2
    keys = [line.split(": ")[2] for line in capsys.readouterr().err.splitlines()]
    assert sorted(keys) == [
        "train.audio_sampling_rate",
        "train.cutoff_len",
        "train.learnig_rate",
        "train.ref_model_quantization_bit",
    ]


LATE = [
    # (keys, expected line): only visible at run time, yet reported before the model loads
    ({"debug": "no_such_option"}, "xgen-runtime: error: debug: transformers.TrainingArguments refused it:"),
    ({"report_to": "wandb"}, "xgen-runtime: error: report_to: wandb is not installed on "),
    (
        {"deepspeed": {"zero_optimization": {"stage": 2}, "tensor_parallel": {"autotp_size": 2}}},
        "xgen-runtime: error: deepspeed: tensor_parallel.autotp_size 2 needs a world size divisible by it",
    ),
    (
        {"deepspeed": {"train_batch_size": 64, "zero_optimization": {"stage": 0}}},
        "xgen-runtime: error: deepspeed: train_batch_size 64 in the DeepSpeed JSON contradicts 2 x 1 x world",
    ),
]


@pytest.mark.parametrize(("keys", "line"), LATE, ids=[next(iter(k)) for k, _ in LATE])
def test_runtime_checks_before_model_load(tiny_dir: Path, tmp_path: Path, capsys, keys, line) -> None:
    import importlib.util

    if "report_to" in keys and importlib.util.find_spec("wandb"):
        pytest.skip("wandb is installed here")
    path = write_config(tmp_path / "cfg.yaml", base_config(tiny_dir, tmp_path / "out", **keys))
    assert main(["train", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines()[-1].startswith(line), captured.err
    assert "world_size=" not in captured.out  # the start line (after TrainingArguments) was never printed


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


CHECK_PROBE = """
import sys
from runtime.cli import main
code = main(sys.argv[1:])
print("torch imported" if "torch" in sys.modules else "no torch")
sys.exit(code)
"""


def run_check(path: Path, tmp: Path, *args: str):
    return subprocess.run(
        [sys.executable, "-c", CHECK_PROBE, "check", *args, str(path)],
        capture_output=True,
        text=True,
        env=subprocess_env(tmp),
        timeout=120,
    )


def test_check_reads_datasets_without_torch(tiny_dir: Path, tmp_path: Path) -> None:
    """`xgen-runtime check`: the scripts' per-node check; ok exits 0 and torch is never imported."""
    cfg = base_config(tiny_dir, tmp_path / "out", eval_dataset="tiny_alpaca", val_size=0)
    result = run_check(write_config(tmp_path / "cfg.yaml", cfg, xgen_style=True), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "xgen-runtime: check: ok (2 datasets read, columns present)",
        "no torch",
    ]


def test_check_lists_every_node_local_problem(tiny_dir: Path, tmp_path: Path) -> None:
    """A missing model directory, an unknown dataset and a missing column: one line each, exit 2."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "rows.json").write_text(json.dumps([{"instruction": "a", "output": "b"}]))
    info = {"rows": {"file_name": "rows.json", "columns": {"prompt": "question"}}}
    (data / "dataset_info.json").write_text(json.dumps(info))
    cfg = base_config(tiny_dir, tmp_path / "out", dataset="rows", eval_dataset="nope", val_size=0)
    cfg.update(dataset_dir=str(data), model_name_or_path=str(tmp_path / "no-model"))
    result = run_check(write_config(tmp_path / "cfg.yaml", cfg, xgen_style=True), tmp_path)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 3, result.stderr
    assert lines[0] == (
        f"xgen-runtime: error: train.model_name_or_path: {tmp_path / 'no-model'} not found on this node: "
        f"{tmp_path} has no no-model; fix the path"
    )
    assert lines[1].startswith("xgen-runtime: error: train.dataset: dataset 'rows' ")
    assert "column 'question' (columns.prompt) not found" in lines[1]
    assert lines[2].startswith("xgen-runtime: error: train.eval_dataset: unknown dataset 'nope'")
    assert result.stdout == "no torch\n" and "Traceback" not in result.stderr
