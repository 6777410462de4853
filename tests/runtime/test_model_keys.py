"""LLaMA-Factory's model/training keys on the tiny model (in-process, 2 steps), the NPU kernels against
a stand-in torch_npu, the saved-weights check, and export without an adapter / in the base dtype."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch
from trainer_harness import base_config, write_config

from runtime.cli import main
from runtime.config import load_config
from runtime.train import run_training


def _run(tmp_path: Path, tiny_dir: Path, **keys):
    out = tmp_path / "out"
    path = write_config(tmp_path / "cfg.yaml", base_config(tiny_dir, out, max_steps=2, **keys))
    result = run_training(load_config(path))
    assert result.code == 0
    return result.trainer, out


def test_lora_with_lf_model_keys_and_training_arguments_passthrough(tiny_dir: Path, tmp_path: Path) -> None:
    trainer, out = _run(
        tmp_path,
        tiny_dir,
        finetuning_type="lora",
        disable_gradient_checkpointing=False,  # LLaMA-Factory's default: checkpointing on, reentrant
        add_special_tokens="<tool_call>,</tool_call>",
        moe_aux_loss_coef=0.01,  # dense model: a warning, no effect
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr": 1e-5},
        neftune_noise_alpha=5,
    )
    assert trainer.args.neftune_noise_alpha == 5 and trainer.args.lr_scheduler_kwargs == {"min_lr": 1e-5}
    assert trainer.model.base_model.model.is_gradient_checkpointing
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert sorted(adapter["modules_to_save"]) == ["embed_tokens", "lm_head"]  # the new rows learn
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    assert "<tool_call>" in tokenizer.get_vocab()
    rows = trainer.model.get_input_embeddings().weight.shape[0]
    assert rows >= len(tokenizer) and rows % 64 == 0


def test_pure_bf16_with_upcasts(tiny_dir: Path, tmp_path: Path) -> None:
    trainer, out = _run(
        tmp_path,
        tiny_dir,
        pure_bf16=True,
        upcast_layernorm=True,
        upcast_lmhead_output=True,
        gradient_checkpointing=True,
    )
    model = trainer.model
    assert model.get_input_embeddings().weight.dtype == torch.bfloat16
    norms = [p.dtype for n, p in model.named_parameters() if p.ndim == 1 and "norm" in n]
    assert norms and set(norms) == {torch.float32}
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[5, 6, 7]])).logits
    assert logits.dtype == torch.float32
    assert model.model.layers[0].mlp.gate_proj.weight.dtype == torch.bfloat16  # trained in bf16, no fp32 copy


def test_upcast_layernorm(tiny_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    from runtime.config import parse_train_config
    from runtime.model import apply_upcasts

    model = AutoModelForCausalLM.from_pretrained(tiny_dir / "model", dtype=torch.bfloat16)
    apply_upcasts(
        model, parse_train_config({"model_name_or_path": "m", "upcast_layernorm": True, "dataset": "d"})
    )
    norms = {p.dtype for n, p in model.named_parameters() if p.ndim == 1 and "norm" in n}
    assert norms == {torch.float32} and model.lm_head.weight.dtype == torch.bfloat16


def test_rope_scaling_and_moe_config(tiny_dir: Path) -> None:
    from transformers import MixtralConfig

    from runtime.config import parse_train_config
    from runtime.model import apply_moe_aux_loss, model_config

    cfg = parse_train_config({"model_name_or_path": str(tiny_dir / "model"), "dataset": "d"})
    cfg.rope_scaling, cfg.cutoff_len = "yarn", 2048  # the tiny model has 512 positions
    config = model_config(cfg, cfg.model_name_or_path)
    assert config.max_position_embeddings == 2048
    assert config.rope_parameters["rope_type"] == "yarn" and config.rope_parameters["factor"] == 4.0
    assert config.rope_parameters["original_max_position_embeddings"] == 512
    moe = MixtralConfig()
    apply_moe_aux_loss(moe, 0.02)
    assert moe.router_aux_loss_coef == 0.02 and moe.output_router_logits is True


def _fake_torch_npu() -> types.ModuleType:
    """torch_npu's three fused ops written in plain torch: same maths, so the patched model must match."""
    npu = types.ModuleType("torch_npu")

    def rms_norm(x, gamma, epsilon=1e-6):
        var = x.float().pow(2).mean(-1, keepdim=True)
        return ((x.float() * torch.rsqrt(var + epsilon)).to(x.dtype) * gamma,)

    def swiglu(x, dim=-1):
        a, b = x.chunk(2, dim=dim)
        return torch.nn.functional.silu(a) * b

    def rotary_mul(x, cos, sin):
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    npu.npu_rms_norm, npu.npu_swiglu, npu.npu_rotary_mul = rms_norm, swiglu, rotary_mul
    return npu


def test_npu_kernels_match_the_modules_they_replace(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModelForCausalLM
    from transformers.models.llama import modeling_llama

    from runtime.levers.use_v1_kernels import apply_npu_kernels

    monkeypatch.setitem(sys.modules, "torch_npu", _fake_torch_npu())
    monkeypatch.setattr(
        modeling_llama, "apply_rotary_pos_emb", modeling_llama.apply_rotary_pos_emb
    )  # restored
    model = AutoModelForCausalLM.from_pretrained(tiny_dir / "model", dtype=torch.float32)
    ids = torch.tensor([[5, 9, 14, 3, 22, 7]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
        done = apply_npu_kernels(model)
        after = model(input_ids=ids).logits
    assert sorted(done) == ["rms_norm x5", "rotary x1", "swiglu x2"], done
    assert modeling_llama.apply_rotary_pos_emb.__module__ == "runtime.levers.use_v1_kernels"
    assert (before - after).abs().max() < 1e-5


def test_saved_dir_without_weights_is_caught(tiny_dir: Path, tmp_path: Path) -> None:
    from runtime.fit.outputs import missing_weights

    assert missing_weights(tiny_dir / "model", "model") is None
    empty = tmp_path / "empty"
    empty.mkdir()
    assert missing_weights(empty, "model") == "no config.json"
    (empty / "config.json").write_text("{}")
    header = json.dumps({"__metadata__": {"format": "pt"}}).encode()
    (empty / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    assert missing_weights(empty, "model") == "no weights (no weight file holds any tensor)"


def test_export_resaves_full_model_in_its_dtype_and_legacy_format(tiny_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    bf16_dir = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(tiny_dir / "model", dtype=torch.bfloat16).save_pretrained(bf16_dir)
    _copy_tokenizer(tiny_dir / "model", bf16_dir)
    export_cfg = {
        "model_name_or_path": str(bf16_dir),
        "export_dir": str(tmp_path / "resaved"),
        "export_size": 1,
        "export_device": "auto",
        "export_legacy_format": True,
    }
    assert main(["export", str(write_config(tmp_path / "export.yaml", export_cfg))]) == 0
    resaved = tmp_path / "resaved"
    assert (resaved / "pytorch_model.bin").is_file() and not list(resaved.glob("*.safetensors"))
    ids = torch.tensor([[5, 9, 14]])
    with torch.no_grad():
        a = AutoModelForCausalLM.from_pretrained(bf16_dir)
        b = AutoModelForCausalLM.from_pretrained(resaved)
        assert b.dtype == torch.bfloat16
        assert torch.equal(a(input_ids=ids).logits, b(input_ids=ids).logits)


def test_export_merge_keeps_bf16(tiny_dir: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    bf16_dir, adapter = tmp_path / "bf16", tmp_path / "adapter"
    base = AutoModelForCausalLM.from_pretrained(tiny_dir / "model", dtype=torch.bfloat16)
    base.save_pretrained(bf16_dir)
    _copy_tokenizer(tiny_dir / "model", bf16_dir)
    get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter)
    export_cfg = {
        "model_name_or_path": str(bf16_dir),
        "adapter_name_or_path": str(adapter),
        "export_dir": str(tmp_path / "merged"),
    }
    assert main(["export", str(write_config(tmp_path / "export.yaml", export_cfg))]) == 0
    with safe_open(tmp_path / "merged" / "model.safetensors", "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"BF16"}  # a float32 export would be twice the size


def _copy_tokenizer(src: Path, dst: Path) -> None:
    import shutil

    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        if (src / name).is_file():
            shutil.copy(src / name, dst / name)
