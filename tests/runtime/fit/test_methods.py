"""Adapters and optimizers (LLaMA-Factory's extras): each trains a few steps on the tiny model and
changes exactly the parameters the method says it changes; adapters reload with peft.

A callback snapshots every parameter when training begins and ends, so "changed" is measured on the
model the Trainer really stepped.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from trainer_harness import (
    base_config,
    max_diff,
    reload_adapter,
    run_inprocess,
    run_torchrun,
    weights,
    write_config,
)
from transformers import TrainerCallback

from runtime.config import ConfigError, load_config, parse_train_config
from runtime.train import run_training


class Snapshot(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
        self.before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def on_train_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
        self.after = {n: p.detach().clone() for n, p in model.named_parameters()}

    def changed(self) -> set[str]:
        return {n for n, p in self.after.items() if not torch.equal(p, self.before[n])}


def train(tiny_dir: Path, tmp_path: Path, **overrides):
    out = tmp_path / "out"
    cfg = base_config(tiny_dir, out, **{"max_steps": 2, **overrides})
    snap = Snapshot()
    result = run_training(load_config(write_config(tmp_path / "cfg.yaml", cfg)), extra_callbacks=[snap])
    assert result.code == 0
    return result, snap, out


def logits(model, tiny_dir: Path) -> torch.Tensor:
    ids = torch.arange(3, 40).reshape(1, -1)
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def base_model(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def reloaded_adapter(tiny_dir: Path, out: Path):
    from peft import PeftModel

    return PeftModel.from_pretrained(base_model(tiny_dir / "model"), out)


# --- adapters ------------------------------------------------------------------------------
def test_dora_trains_magnitudes_and_lora_only_and_reloads(tiny_dir, tmp_path) -> None:
    result, snap, out = train(tiny_dir, tmp_path, finetuning_type="lora", use_dora=True)
    changed = snap.changed()
    magnitudes = {n for n in snap.before if "lora_magnitude_vector" in n}
    assert magnitudes and magnitudes <= changed
    assert all("lora_" in n for n in changed), sorted(changed)
    assert (
        max_diff(  # the trained model and peft's reload of the save compute the same thing
            {"x": logits(result.model, tiny_dir)}, {"x": logits(reloaded_adapter(tiny_dir, out), tiny_dir)}
        )
        < 1e-5
    )


def test_rslora_scaling_is_alpha_over_sqrt_rank(tiny_dir, tmp_path) -> None:
    result, snap, _ = train(tiny_dir, tmp_path, finetuning_type="lora", use_rslora=True, lora_rank=4)
    layer = next(m for m in result.model.modules() if isinstance(getattr(m, "scaling", None), dict))
    assert layer.scaling["default"] == pytest.approx(8 / 4**0.5)  # alpha defaults to 2 * rank


def test_additional_target_trains_and_saves_the_named_module(tiny_dir, tmp_path) -> None:
    result, snap, out = train(tiny_dir, tmp_path, finetuning_type="lora", additional_target="embed_tokens")
    changed = snap.changed()
    assert any("embed_tokens.modules_to_save" in n for n in changed), sorted(changed)
    assert all("lora_" in n or "modules_to_save" in n for n in changed), sorted(changed)
    assert any("embed_tokens" in k for k in weights(out))
    assert (
        max_diff(
            {"x": logits(result.model, tiny_dir)}, {"x": logits(reloaded_adapter(tiny_dir, out), tiny_dir)}
        )
        < 1e-5
    )


def test_loraplus_steps_b_at_ratio_times_lr(tiny_dir, tmp_path) -> None:
    lr, ratio = 1e-3, 16.0
    result, snap, _ = train(
        tiny_dir,
        tmp_path,
        finetuning_type="lora",
        loraplus_lr_ratio=ratio,
        learning_rate=lr,
        lr_scheduler_type="constant",
        max_steps=1,
    )
    optimizer = result.trainer.optimizer
    b_ids = {id(p) for n, p in result.model.named_parameters() if "lora_B" in n}
    a_ids = {id(p) for n, p in result.model.named_parameters() if "lora_A" in n}
    lrs = {(id(p) in b_ids, id(p) in a_ids): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert lrs == {(True, False): pytest.approx(lr * ratio), (False, True): pytest.approx(lr)}
    # Adam's first step moves each weight by lr: B (zero at init) by lr * ratio; A's gradient is 0 at B = 0.
    moved = {n: (snap.after[n] - snap.before[n]).abs().max().item() for n in snap.before if "lora_" in n}
    assert max(v for n, v in moved.items() if "lora_B" in n) == pytest.approx(lr * ratio, rel=1e-3)
    assert max(v for n, v in moved.items() if "lora_A" in n) == 0.0


def test_pissa_convert_gives_a_plain_lora_for_the_original_base(tiny_dir, tmp_path) -> None:
    result, snap, out = train(
        tiny_dir, tmp_path, finetuning_type="lora", pissa_init=True, pissa_iter=-1, pissa_convert=True
    )
    assert (out / "pissa_init" / "adapter_model.safetensors").is_file()
    from peft import PeftModel

    converted = PeftModel.from_pretrained(base_model(tiny_dir / "model"), out / "pissa_converted")
    assert converted.peft_config["default"].r == 2 * 4
    trained = logits(result.model, tiny_dir)
    assert max_diff({"x": trained}, {"x": logits(converted, tiny_dir)}) < 1e-4
    assert max_diff({"x": trained}, {"x": logits(base_model(tiny_dir / "model"), tiny_dir)}) > 1e-3


def test_oft_trains_only_its_blocks_and_reloads(tiny_dir, tmp_path) -> None:
    result, snap, out = train(tiny_dir, tmp_path, finetuning_type="oft", oft_block_size=16)
    changed = snap.changed()
    assert changed and all(".oft_" in n for n in changed), sorted(changed)
    assert {n for n in snap.before if ".oft_" in n and n.endswith(".weight")} <= changed
    assert (out / "adapter_config.json").is_file()
    assert (
        max_diff(
            {"x": logits(result.model, tiny_dir)}, {"x": logits(reloaded_adapter(tiny_dir, out), tiny_dir)}
        )
        < 1e-5
    )


@pytest.fixture(scope="module")
def pro_model(tiny_dir: Path, tmp_path_factory) -> Path:
    """The tiny model (2 layers) expanded by 2 blocks: layers 1 and 3 are the added ones."""
    from runtime.cli import main

    dst = tmp_path_factory.mktemp("pro") / "model"
    assert main(["llama-pro", str(tiny_dir / "model"), str(dst), "--num-expand", "2"]) == 0
    return dst


def test_llama_pro_expansion_keeps_the_function(tiny_dir, pro_model) -> None:
    expanded = base_model(pro_model)
    assert expanded.config.num_hidden_layers == 4
    assert (
        max_diff({"x": logits(expanded, tiny_dir)}, {"x": logits(base_model(tiny_dir / "model"), tiny_dir)})
        < 1e-5
    )


@pytest.mark.parametrize("finetuning_type", ["freeze", "lora"])
def test_llama_pro_trains_the_expanded_blocks_only(tiny_dir, tmp_path, pro_model, finetuning_type) -> None:
    _, snap, _ = train(
        tiny_dir,
        tmp_path,
        model_name_or_path=str(pro_model),
        finetuning_type=finetuning_type,
        use_llama_pro=True,
        freeze_trainable_layers=2,
    )
    changed = snap.changed()
    layers = {n.split(".layers.")[1].split(".")[0] for n in changed}
    assert layers == {"1", "3"}, sorted(changed)
    if finetuning_type == "freeze":  # every weight of the added blocks, nothing else
        assert changed == {n for n in snap.before if ".layers.1." in n or ".layers.3." in n}


# --- optimizers ----------------------------------------------------------------------------
def test_muon_orthogonalises_hidden_matrices_adamw_the_rest(tiny_dir, tmp_path) -> None:
    from runtime.fit.optimizers import MuonWithAdamW

    result, snap, _ = train(tiny_dir, tmp_path, use_muon=True)
    optimizer = result.trainer.optimizer.optimizer  # accelerate's wrapper holds ours
    assert isinstance(optimizer, MuonWithAdamW)
    names = {id(p): n for n, p in result.model.named_parameters()}
    muon = {names[id(p)] for g in optimizer.muon.param_groups for p in g["params"]}
    assert muon == {n for n in names.values() if ".layers." in n and n.endswith("proj.weight")}
    assert all(
        "momentum_buffer" in optimizer.muon.state[p] for g in optimizer.muon.param_groups for p in g["params"]
    )
    assert snap.changed() == set(snap.before)


def test_badam_trains_one_block_at_a_time(tiny_dir, tmp_path) -> None:
    _, snap, _ = train(tiny_dir, tmp_path, use_badam=True, badam_switch_mode="ascending", badam_start_block=1)
    changed = snap.changed()
    assert changed == {n for n in snap.before if ".layers.1." in n}, sorted(changed)


def test_adam_mini_trains_every_weight(tiny_dir, tmp_path) -> None:
    from adam_mini import Adam_mini

    result, snap, _ = train(tiny_dir, tmp_path, use_adam_mini=True)
    assert isinstance(result.trainer.optimizer.optimizer, Adam_mini)
    assert snap.changed() == set(snap.before)


def test_muon_resume_from_a_checkpoint_is_exact(tiny_dir, tmp_path, monkeypatch) -> None:
    """The combined optimizer's state (Muon momentum + AdamW moments) round-trips through a checkpoint."""
    once, twice = tmp_path / "once", tmp_path / "twice"
    cfg = base_config(tiny_dir, once, use_muon=True, save_steps=2)
    assert run_inprocess(write_config(tmp_path / "once.yaml", cfg)) == 0
    cfg = write_config(tmp_path / "twice.yaml", base_config(tiny_dir, twice, use_muon=True, save_steps=2))
    monkeypatch.setenv("XGEN_FAULT_SIGNAL_AT_STEP", "2")
    assert run_inprocess(cfg) == 75
    monkeypatch.delenv("XGEN_FAULT_SIGNAL_AT_STEP")
    assert run_inprocess(cfg) == 0
    assert max_diff(weights(twice), weights(once)) == 0.0


@pytest.mark.skipif(importlib.util.find_spec("galore_torch") is None, reason="pip install 'xgen[galore]'")
def test_galore_projects_the_linear_weights(tiny_dir, tmp_path) -> None:
    result, snap, _ = train(tiny_dir, tmp_path, use_galore=True, galore_rank=4, galore_target="mlp,self_attn")
    optimizer = result.trainer.optimizer.optimizer
    projected = {id(p) for g in optimizer.param_groups if "rank" in g for p in g["params"]}
    names = {n for n, p in result.model.named_parameters() if id(p) in projected}
    assert names == {n for n in snap.before if ".layers." in n and n.endswith("proj.weight")}
    assert all(
        "projector" in optimizer.state[p] for g in optimizer.param_groups if "rank" in g for p in g["params"]
    )
    assert snap.changed() == set(snap.before)


@pytest.mark.skipif(importlib.util.find_spec("apollo_torch") is None, reason="pip install 'xgen[apollo]'")
def test_apollo_projects_the_linear_weights(tiny_dir, tmp_path) -> None:
    result, snap, _ = train(tiny_dir, tmp_path, use_apollo=True, apollo_rank=4)
    optimizer = result.trainer.optimizer.optimizer
    projected = {id(p) for g in optimizer.param_groups if "rank" in g for p in g["params"]}
    names = {n for n, p in result.model.named_parameters() if id(p) in projected}
    assert names == {n for n in snap.before if ".layers." in n and n.endswith("proj.weight")}
    assert all(
        "projector" in optimizer.state[p] for g in optimizer.param_groups if "rank" in g for p in g["params"]
    )
    assert snap.changed() == set(snap.before)


@pytest.mark.skipif(importlib.util.find_spec("galore_torch") is None, reason="pip install 'xgen[galore]'")
def test_galore_layerwise_steps_in_backward(tiny_dir, tmp_path) -> None:
    from transformers.trainer_pt_utils import LayerWiseDummyOptimizer

    result, snap, _ = train(tiny_dir, tmp_path, use_galore=True, galore_rank=4, galore_layerwise=True)
    assert isinstance(result.trainer.optimizer.optimizer, LayerWiseDummyOptimizer)
    assert snap.changed() == set(snap.before)


# --- refusals ------------------------------------------------------------------------------
BASE = {"model_name_or_path": "m", "dataset": "d"}


@pytest.mark.parametrize(
    ("overrides", "key", "words"),
    [
        ({"finetuning_type": "full", "use_dora": True}, "use_dora", "only valid for finetuning_type lora"),
        ({"finetuning_type": "freeze", "loraplus_lr_ratio": 16}, "loraplus_lr_ratio", "only valid"),
        ({"finetuning_type": "full", "use_llama_pro": True}, "use_llama_pro", "freeze or lora"),
        ({"use_galore": True}, "use_galore", "not with finetuning_type lora"),
        ({"finetuning_type": "full", "use_galore": True, "use_badam": True}, "use_badam", "keep one"),
        ({"finetuning_type": "full", "use_muon": True, "deepspeed": "z2"}, "use_muon", "DeepSpeed"),
        ({"finetuning_type": "full", "use_apollo": True, "fsdp": True}, "use_apollo", "FSDP"),
        ({"finetuning_type": "full", "use_badam": True, "deepspeed": "z3"}, "use_badam", "one process only"),
        ({"finetuning_type": "full", "use_badam": True, "fsdp": True}, "use_badam", "one process only"),
        ({"finetuning_type": "full", "use_adam_mini": True, "deepspeed": "z2"}, "use_adam_mini", "DeepSpeed"),
        ({"pissa_init": True, "stage": "dpo"}, "pissa_init", "no reference"),
        ({"pissa_init": True, "deepspeed": "z3"}, "pissa_init", "ZeRO-3"),
        ({"pissa_convert": True}, "pissa_convert", "pissa_init"),
        ({"pissa_init": True, "adapter_name_or_path": "a"}, "pissa_init", "give one of them"),
        ({"pissa_init": True, "pissa_convert": True, "fsdp": True}, "pissa_convert", "fsdp"),
        ({"finetuning_type": "oft", "oft_rank": 4}, "oft_block_size", "exactly one"),
        (
            {
                "finetuning_type": "full",
                "use_galore": True,
                "galore_layerwise": True,
                "gradient_accumulation_steps": 2,
            },
            "galore_layerwise",
            "gradient_accumulation_steps: 1",
        ),
    ],
)
def test_refused_combinations(overrides, key, words) -> None:
    with pytest.raises(ConfigError) as err:
        parse_train_config({**BASE, **overrides})
    assert err.value.key == key and words in err.value.message, str(err.value)


def test_unused_method_keys_are_noted() -> None:
    cfg = parse_train_config({**BASE, "finetuning_type": "lora", "galore_rank": 8, "oft_block_size": 16})
    assert "galore_rank ignored: use_galore is false" in cfg.notes
    assert "oft_block_size ignored: finetuning_type is lora" in cfg.notes


def test_missing_package_is_refused_before_the_model_loads(tiny_dir, tmp_path, monkeypatch, capsys) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "badam" else real(name, *a)
    )
    cfg = base_config(tiny_dir, tmp_path / "out", use_badam=True, model_name_or_path=str(tmp_path / "absent"))
    assert run_inprocess(write_config(tmp_path / "cfg.yaml", cfg)) == 2
    assert "use_badam: needs the badam package, which is not installed: pip install 'xgen[badam]'" in (
        capsys.readouterr().err
    )


def test_layerwise_and_badam_refuse_several_processes() -> None:
    from runtime.fit.optimizers import check_world

    cfg = parse_train_config(
        {**BASE, "finetuning_type": "full", "use_galore": True, "galore_layerwise": True}
    )
    check_world(cfg, 1)
    with pytest.raises(ConfigError, match="one process only"):
        check_world(cfg, 2)
    cfg = parse_train_config({**BASE, "finetuning_type": "full", "use_badam": True})
    with pytest.raises(ConfigError, match="one process only"):
        check_world(cfg, 2)


# --- two ranks equal one process -------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "tolerance"),
    [
        ({"finetuning_type": "lora", "use_dora": True, "loraplus_lr_ratio": 4.0}, 1e-5),
        ({"finetuning_type": "oft", "oft_block_size": 16}, 1e-5),
        # Muon orthogonalises in bfloat16 (torch.optim.Muon, as Moonlight): the ~1e-7 difference of a
        # 2-rank gradient sum is rounded to bf16 steps: DDP agrees to bf16 precision only (measured 8.3e-5).
        ({"finetuning_type": "full", "use_muon": True}, 1e-3),
        # The sharded strategies LLaMA-Factory runs these methods under.
        ({"finetuning_type": "lora", "use_dora": True, "deepspeed": "z3"}, 1e-5),
        ({"finetuning_type": "oft", "oft_block_size": 16, "deepspeed": "z3"}, 1e-5),
        ({"finetuning_type": "lora", "loraplus_lr_ratio": 4.0, "fsdp": "full_shard auto_wrap"}, 1e-5),
    ],
    ids=["ddp_dora_loraplus", "ddp_oft", "ddp_muon", "z3_dora", "z3_oft", "fsdp_loraplus"],
)
def test_two_ranks_equal_single_process(tiny_dir, tmp_path, overrides, tolerance) -> None:
    single, multi = tmp_path / "single", tmp_path / "multi"
    plain = {k: v for k, v in overrides.items() if k not in ("deepspeed", "fsdp")}
    cfg = base_config(tiny_dir, single, max_steps=4, per_device_train_batch_size=4, **plain)
    assert run_inprocess(write_config(tmp_path / "single.yaml", cfg)) == 0
    cfg = base_config(tiny_dir, multi, max_steps=4, per_device_train_batch_size=2, **overrides)
    proc = run_torchrun(write_config(tmp_path / "multi.yaml", cfg), tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "world_size=2" in proc.stdout
    assert max_diff(weights(multi), weights(single)) < tolerance


# --- LLaMA-Factory's own examples/extras configs (paths swapped) ----------------------------------
EXTRAS = Path(__file__).parents[1] / "lf_examples" / "extras"


def _needs(name: str) -> str | None:
    """Why an example cannot run in this environment, or None."""
    from runtime.config.schema import train_fields

    package = {"galore": "galore_torch", "apollo": "apollo_torch"}.get(name.split("_")[0])
    if package and importlib.util.find_spec(package) is None:
        return f"{package} is not installed (pip install 'xgen[{name.split('_')[0]}]')"
    if package and "pure_bf16" not in train_fields():
        return "pure_bf16 is another branch's key"
    return None


@pytest.mark.parametrize("name", sorted(p.name for p in EXTRAS.glob("*.yaml")))
def test_lf_extras_example_trains_and_reloads(name, tiny_dir, tmp_path, pro_model) -> None:
    if why := _needs(name):
        pytest.skip(why)
    out = tmp_path / "out"
    text = (EXTRAS / name).read_text().replace("PRO", str(pro_model)).replace("TINY", str(tiny_dir))
    path = tmp_path / name
    path.write_text(text.replace("OUT", str(out)))
    assert run_inprocess(path) == 0
    if (out / "adapter_config.json").is_file():
        model_dir = pro_model if "llama_pro" in name else tiny_dir / "model"
        reload_adapter(model_dir, out, dtype=torch.float32)
    else:
        base_model(out)
    if "pissa" in name:
        assert (out / "pissa_converted" / "adapter_model.safetensors").is_file()
