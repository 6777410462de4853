"""runtime.config: LLaMA-Factory keys, transformers-5 translations, torch-free."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from runtime.config import ConfigError, TrainConfig, load_config, parse_train_config
from runtime.contract.zero import zero_config

BASE = {"model_name_or_path": "m", "dataset": "d"}


def parse(**keys):
    return parse_train_config({**BASE, **keys}, key_prefix="train.")


def test_defaults_follow_the_contract() -> None:
    cfg = parse()
    assert (cfg.template, cfg.cutoff_len, cfg.val_size, cfg.packing, cfg.seed, cfg.dataset_dir) == (
        None,
        2048,
        0.0,
        False,
        42,
        "data",
    )
    assert cfg.ddp_timeout == 7200 and cfg.resume_from_checkpoint == "auto" and cfg.lora_alpha == 16


def test_removed_transformers_keys_are_translated_with_notes() -> None:
    cfg = parse(
        warmup_ratio=0.1,
        evaluation_strategy="steps",
        val_size=0.1,
        no_cuda=True,
        logging_dir="x",
        neat_packing=True,
        fsdp_transformer_layer_cls_to_wrap="LlamaDecoderLayer",
        fsdp=True,
    )
    assert cfg.warmup_steps == 0.1 and cfg.eval_strategy == "steps" and cfg.use_cpu
    assert cfg.neat_packing and cfg.packing  # LLaMA-Factory: neat_packing implies packing (its own key now)
    assert cfg.fsdp_config == {"transformer_layer_cls_to_wrap": "LlamaDecoderLayer"}
    notes = "\n".join(cfg.notes)
    for key in ("warmup_ratio", "evaluation_strategy", "no_cuda", "logging_dir"):
        assert f"train.{key}" in notes


def test_yaml_float_strings_and_int_floats() -> None:
    cfg = parse(learning_rate="1e-4", num_train_epochs=3, max_steps=10.0)
    assert cfg.learning_rate == 1e-4 and cfg.num_train_epochs == 3.0 and cfg.max_steps == 10


def test_lf_cli_keys_accepted() -> None:
    cfg = parse(
        do_train=True,
        do_eval=False,
        overwrite_cache=True,
        plot_loss=False,
        trust_remote_code=True,
        ddp_timeout=180000000,
        per_device_eval_batch_size=2,
        eval_strategy="no",
        overwrite_output_dir=True,
        resume_from_checkpoint=None,
        flash_attn="disabled",
    )
    assert cfg.overwrite_cache and not cfg.plot_loss and cfg.flash_attn == "eager"
    assert cfg.resume_from_checkpoint == "auto"  # LLaMA-Factory's null also resumes


def test_an_absurd_ddp_timeout_is_capped_with_a_note() -> None:
    """LLaMA-Factory's ddp_timeout: 180000000 (5.7 years) would let a hung collective hold the allocation
    to its time limit; it is capped at MAX_DDP_TIMEOUT with one note, a sane value is left alone."""
    from runtime.config.rules import MAX_DDP_TIMEOUT

    cfg = parse(ddp_timeout=180000000)
    assert cfg.ddp_timeout == MAX_DDP_TIMEOUT == 7200
    assert [n for n in cfg.notes if "ddp_timeout" in n] == [
        "train.ddp_timeout: 180000000 s (2083 days) capped at 7200 s: a collective waiting longer is a hang, "
        "and tokenization here never waits in one (LLaMA-Factory's reason for the large value)"
    ]
    assert parse(ddp_timeout=1800).ddp_timeout == 1800 and not parse(ddp_timeout=1800).notes


def test_deepspeed_named_stage_path_and_dict(tmp_path: Path) -> None:
    assert parse(deepspeed="z3").deepspeed_config == zero_config("z3")
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    cfg = parse(deepspeed=str(path))
    assert cfg.strategy == "deepspeed-z2"
    assert parse(deepspeed={"zero_optimization": {"stage": 1}}).strategy == "deepspeed-z1"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="train.deepspeed: cannot read"):
        parse(deepspeed=str(path))


def test_fsdp_strings() -> None:
    cfg = parse(fsdp="full_shard auto_wrap offload")
    assert cfg.fsdp is True and cfg.fsdp_config == {"cpu_offload": True} and cfg.strategy == "fsdp"
    assert parse(fsdp="shard_grad_op").fsdp_config == {"reshard_after_forward": False}
    with pytest.raises(ConfigError, match="only FSDP2"):
        parse(fsdp=True, fsdp_config={"version": 1})


def test_keys_for_other_methods_are_noted_not_fatal() -> None:
    cfg = parse(finetuning_type="full", lora_rank=16, stage="sft", pref_beta=0.2)
    assert any("train.lora_rank ignored" in n for n in cfg.notes)
    assert any("train.pref_beta ignored: stage is sft" in n for n in cfg.notes)


def test_every_key_has_a_doc() -> None:
    import dataclasses

    for f in dataclasses.fields(TrainConfig):
        assert f.metadata.get("doc") or f.metadata.get("internal"), f.name


def test_load_config_xgen_and_flat(tmp_path: Path) -> None:
    xgen = tmp_path / "xgen.yaml"
    xgen.write_text(yaml.safe_dump({"job": {"name": "j"}, "cluster": {}, "train": {**BASE, "stage": "pt"}}))
    assert load_config(xgen).stage == "pt"
    flat = tmp_path / "flat.yaml"
    flat.write_text(yaml.safe_dump({**BASE, "stage": "rm", "foo": 1}))
    with pytest.raises(ConfigError, match="^foo: unknown key"):
        load_config(flat)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"train": [1, 2]}))
    with pytest.raises(ConfigError, match="^train: must be a mapping"):
        load_config(bad)


def test_config_module_is_torch_free() -> None:
    code = "import sys, runtime.config, runtime.contract.zero; assert 'torch' not in sys.modules, 'torch in'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_docs_list_every_key() -> None:
    import dataclasses

    docs = (Path(__file__).resolve().parents[3] / "docs" / "runtime.md").read_text()
    missing = [
        f.name
        for f in dataclasses.fields(TrainConfig)
        if not f.metadata.get("internal") and f"`{f.name}`" not in docs
    ]
    assert not missing, missing


def test_local_model_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A saved adapter records its base model path; a relative one would only load from the run's cwd."""
    (tmp_path / "models" / "base").mkdir(parents=True)
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump({"model_name_or_path": "models/base", "dataset": "d"}))
    monkeypatch.chdir(tmp_path)
    assert load_config(cfg_file).model_name_or_path == str(tmp_path / "models" / "base")
    # A hub-style name that is not a local directory is left alone.
    cfg_file.write_text(yaml.safe_dump({"model_name_or_path": "org/not-here", "dataset": "d"}))
    assert load_config(cfg_file).model_name_or_path == "org/not-here"


def test_base_dir_resolves_relative_paths(tmp_path: Path, monkeypatch) -> None:
    """The generator parses with base_dir=job.workdir; the runtime (running there) passes none."""
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 1}}))
    (tmp_path / "fsdp.json").write_text(json.dumps({"cpu_offload": True}))
    keys = {**BASE, "deepspeed": "ds.json", "output_dir": "out"}
    cfg = parse_train_config(keys, base_dir=tmp_path)
    assert cfg.deepspeed_config == {"zero_optimization": {"stage": 1}} and cfg.deepspeed == "ds.json"
    assert cfg.dataset_dir == str(tmp_path / "data")
    cfg = parse_train_config({**BASE, "fsdp": True, "fsdp_config": "fsdp.json"}, base_dir=tmp_path)
    assert cfg.fsdp_config == {"cpu_offload": True}
    with pytest.raises(ConfigError, match="file not found"):
        parse_train_config(keys)  # relative to the cwd, which has no ds.json
    monkeypatch.chdir(tmp_path)
    cfg = parse_train_config(keys)
    assert cfg.deepspeed_config == {"zero_optimization": {"stage": 1}} and cfg.dataset_dir == "data"
