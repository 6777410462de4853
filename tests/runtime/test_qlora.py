"""Quantised LoRA (QLoRA, `quantization_bit`): numerics against the dequantised weights, LLaMA-Factory's
QLoRA examples under FSDP2 and DDP (2 gloo ranks), the other measured strategies against one process,
and export into the unquantised base. The refusals are in tests/runtime/config/test_quantization.py."""

from __future__ import annotations

import json
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

pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes (pip install bitsandbytes)")

QLORA = Path(__file__).parent / "lf_examples" / "qlora"


# --- one step against the dequantised weights (in-process) ----------------------------------------------


def _lora_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if "lora_" in n}


def _dequantised_copy(quantised: torch.nn.Module, plain: torch.nn.Module) -> None:
    """Every Linear4bit weight of `quantised`, dequantised by bitsandbytes, into the same layer of `plain`."""
    import bitsandbytes as bnb
    from bitsandbytes.functional import dequantize_4bit

    plain_modules = dict(plain.named_modules())
    count = 0
    for name, module in quantised.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            weight = module.weight
            dense = dequantize_4bit(weight.data, weight.quant_state).to(torch.float32)
            target = plain_modules[name]
            assert target.weight.shape == dense.shape, name
            target.weight.data.copy_(dense)
            count += 1
    assert count == 14  # q, k, v, o, gate, up, down in each of the tiny model's 2 layers


def _step(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[float, dict[str, torch.Tensor]]:
    model.train()
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    return loss.item(), {n: p.grad.detach().clone() for n, p in _lora_state(model).items()}


# Measured on this machine (torch 2.13 CPU, bitsandbytes 0.50.2, fp32 compute, nf4 and fp4): the 4-bit step
# and the step on its dequantised weights are bitwise equal, loss and every LoRA gradient (difference 0.0;
# gradients up to 0.25): in training bitsandbytes' CPU path dequantises and then runs the same F.linear. The
# bound allows a fused kernel's rounding (a few fp32 ulps over 64-wide sums). The unquantised model's loss is
# 1.1e-3 (fp4) and 5.1e-3 (nf4) away, so the check does tell a quantised forward pass from a plain one.
TOLERANCE = 1e-6


@pytest.mark.parametrize(
    ("quantization_type", "double_quantization"), [("nf4", True), ("fp4", False)], ids=["nf4-double", "fp4"]
)
def test_4bit_lora_step_equals_the_step_on_dequantised_weights(
    data_cfg, tiny_tokenizer, quantization_type: str, double_quantization: bool
) -> None:
    from runtime.model import build_model

    keys = dict(finetuning_type="lora", lora_rank=4, lora_dropout=0.0, flash_attn="eager")
    quantised_cfg = data_cfg(
        dataset="tiny_alpaca",
        quantization_bit=4,
        quantization_type=quantization_type,
        double_quantization=double_quantization,
        **keys,
    )
    quantised = build_model(quantised_cfg, stage="sft", device="cpu", tokenizer=tiny_tokenizer)
    plain = build_model(
        data_cfg(dataset="tiny_alpaca", **keys), stage="sft", device="cpu", tokenizer=tiny_tokenizer
    )
    unquantised = build_model(
        data_cfg(dataset="tiny_alpaca", **keys), stage="sft", device="cpu", tokenizer=tiny_tokenizer
    )
    _dequantised_copy(quantised, plain)
    torch.manual_seed(0)  # the same non-zero LoRA weights everywhere (B starts at 0: its A gets no gradient)
    for name, param in _lora_state(quantised).items():
        param.data.normal_(0, 0.2)
        _lora_state(plain)[name].data.copy_(param.data)
        _lora_state(unquantised)[name].data.copy_(param.data)
    ids = tiny_tokenizer(["write a short story about the red cat and the blue fish"] * 2, return_tensors="pt")
    batch = {**ids, "labels": ids["input_ids"].clone()}

    loss_q, grads_q = _step(quantised, batch)
    loss_d, grads_d = _step(plain, batch)
    loss_u, _ = _step(unquantised, batch)

    assert abs(loss_q - loss_d) < TOLERANCE, (loss_q, loss_d)
    worst = max((grads_q[n] - grads_d[n]).abs().max().item() for n in grads_q)
    assert worst < TOLERANCE, worst
    assert max(g.abs().max().item() for g in grads_q.values()) > 1e-3  # real gradients, not zeros
    assert abs(loss_q - loss_u) > 1e-4  # quantisation changed the forward pass


# --- LLaMA-Factory's QLoRA examples on 2 gloo ranks ------------------------------------------------------


def _example(name: str, tiny_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "out"
    text = (QLORA / name).read_text().replace("TINY", str(tiny_dir)).replace("OUT", str(out))
    path = tmp_path / name
    path.write_text(text)
    return path, out


def _trained(proc, out: Path, strategy: str) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"device=cpu backend=gloo strategy={strategy}" in proc.stdout
    assert "quantization: 4-bit bnb nf4, double quantisation, compute bfloat16: 14 of 15" in proc.stdout
    assert "Failed to load CPU gemm_4bit_forward" not in proc.stdout + proc.stderr  # bitsandbytes' noise
    results = json.loads((out / "train_results.json").read_text())
    assert (results["world_size"], results["strategy"], results["global_step"]) == (2, strategy, 3)


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=torch.tensor([[5, 9, 14, 3, 7]])).logits


@pytest.mark.slow
def test_lf_fsdp_qlora_example_trains_on_fsdp2_and_the_adapter_reloads(
    tiny_dir: Path, tmp_path: Path
) -> None:
    """examples/extras/fsdp_qlora: 4-bit weights stored in the compute dtype (bf16) so FSDP2 shards them."""
    path, out = _example("fsdp_qlora_llama3_lora_sft.yaml", tiny_dir, tmp_path)
    # what the example's accelerate file (FULL_SHARD, TRANSFORMER_BASED_WRAP) stands for, under torchrun
    path.write_text(path.read_text() + "fsdp: full_shard auto_wrap\n")
    _trained(run_torchrun(path, tmp_path), out, "fsdp")
    adapter = weights(out)
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in adapter.items())  # trained (B starts at 0)
    model = reload_adapter(tiny_dir / "model", out, dtype=torch.float32)
    with model.disable_adapter():
        without = _logits(model)
    assert (_logits(model) - without).abs().max() > 1e-4  # the reloaded adapter changes the output


@pytest.mark.slow
def test_lf_otfq_example_trains_on_ddp_and_exports_into_the_unquantised_base(
    tiny_dir: Path, tmp_path: Path, capsys
) -> None:
    """examples/train_qlora/qwen3_lora_sft_otfq under DDP, then LLaMA-Factory's merge_lora config with the
    training's quantization_bit left in (an export job reuses the training config): the adapter is merged
    into the unquantised base, and the export computes what base + adapter compute."""
    from runtime.cli import main

    path, out = _example("qwen3_lora_sft_otfq.yaml", tiny_dir, tmp_path)
    _trained(run_torchrun(path, tmp_path), out, "ddp")
    export = tmp_path / "export"
    merge = (QLORA.parent / "qwen3_lora_sft_merge.yaml").read_text()
    merge = merge.replace("TINY", str(tiny_dir)).replace("ADAPTER", str(out)).replace("EXPORT", str(export))
    (tmp_path / "merge.yaml").write_text(merge + "quantization_bit: 4\n")
    capsys.readouterr()
    assert main(["export", str(tmp_path / "merge.yaml")]) == 0
    said = capsys.readouterr().out
    assert (
        "note: quantization_bit 4 is not applied on export: the adapter is merged into the unquantised"
        in said
    )
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(export)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert all(p.dtype == torch.float32 for p in merged.parameters())  # the base's dtype, not 4-bit
    want = _logits(reload_adapter(tiny_dir / "model", out, dtype=torch.float32))
    assert (_logits(merged) - want).abs().max() < 1e-4


# --- the other measured strategies against one process ---------------------------------------------------

STRATEGIES = [
    # (name, bits, overrides): ZeRO-3 with persistence threshold 0, or the tiny model's weights (< 640
    # elements each) would stay whole on every rank and nothing 4-bit would be sharded.
    ("fsdp2_4bit", 4, {"fsdp": True}),
    ("z3_4bit", 4, {"deepspeed": "Z3_JSON"}),
    ("z2_8bit", 8, {"deepspeed": "z2"}),
]
STEPS = 4
# Measured: every one ends 1.5e-8 .. 4.0e-8 from the one-process run with the same global batch (fp32).
STRATEGY_TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def qlora_baselines(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("qlora-baselines")
    outs = {}
    for bits in (4, 8):
        out = root / f"{bits}bit"
        cfg = base_config(
            tiny_dir,
            out,
            finetuning_type="lora",
            quantization_bit=bits,
            max_steps=STEPS,
            per_device_train_batch_size=4,
        )
        assert run_inprocess(write_config(root / f"{bits}.yaml", cfg)) == 0
        outs[bits] = out
    return outs


@pytest.mark.slow
@pytest.mark.parametrize(("name", "bits", "overrides"), STRATEGIES, ids=[s[0] for s in STRATEGIES])
def test_qlora_strategy_matches_one_process(
    tiny_dir: Path, tmp_path: Path, qlora_baselines, name: str, bits: int, overrides: dict
) -> None:
    from runtime.contract.zero import zero_config

    if overrides.get("deepspeed") == "Z3_JSON":
        z3 = zero_config("z3")
        z3["zero_optimization"]["stage3_param_persistence_threshold"] = 0
        (tmp_path / "z3.json").write_text(json.dumps(z3))
        overrides = {"deepspeed": str(tmp_path / "z3.json")}
    out = tmp_path / name
    cfg = base_config(
        tiny_dir, out, finetuning_type="lora", quantization_bit=bits, max_steps=STEPS, **overrides
    )
    proc = run_torchrun(write_config(tmp_path / "cfg.yaml", cfg), tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"quantization: {bits}-bit bnb" in proc.stdout
    assert max_diff(weights(out), weights(qlora_baselines[bits])) < STRATEGY_TOLERANCE
