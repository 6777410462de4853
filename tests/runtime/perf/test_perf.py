"""runtime.perf.plan: the throughput levers each device gets; the packed path trains like the padded one.

The CPU equivalence test is the fp32 half of the optimised path's correctness check (the bf16 GPU half is in
test_perf_gpu.py): same data, same seed, padding_free on vs off, per-step losses within 1e-5 relative.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from trainer_harness import base_config

from runtime.config import ConfigError, TrainConfig, parse_train_config
from runtime.perf.plan import apply_perf, resolve_perf

BASE = {"model_name_or_path": "m", "dataset": "d", "stage": "sft"}
# fp32 on CPU: the packed row sees the same numbers in another order of summation (block-diagonal mask
# instead of a padding mask), so per-step losses agree to float32 rounding, far below 1e-5 relative.
FP32_RTOL = 1e-5


def plan(device: str, *, liger: bool = True, fa2: bool = False, **keys):
    cfg = parse_train_config({**BASE, **keys})
    return resolve_perf(cfg, device, liger_available=liger, fa2_available=fa2), cfg


def test_cuda_defaults_turn_every_lever_on() -> None:
    p, _ = plan("cuda")
    assert (p.padding_free, p.flash_attn, p.liger, p.optim) == (True, "flex", True, "adamw_torch_fused")
    assert (p.torch_compile, p.activation_checkpointing, p.notes) == (False, False, [])
    assert plan("cuda", fa2=True)[0].flash_attn == "fa2"  # varlen flash attention when installed
    assert plan("cuda", liger=False)[0].liger is False  # not installed: quietly off
    assert p.line() == (
        "perf: auto (cuda) padding_free=on rows=one micro_batch_tokens=off attention=flex liger=on "
        "label_logits_only=off optim=adamw_torch_fused compile=off activation_checkpointing=off"
    )  # Liger's fused linear+CE already skips the logits: label_logits_only stays off under it
    assert plan("cuda", liger=False)[0].label_logits_only is True


def test_cpu_gets_one_padding_free_row_with_sdpa_per_example() -> None:
    """CPU: padding-free on, attention sdpa once per example (sdpa_varlen), so one row per micro-batch;
    plain sdpa written by the user caps rows at cutoff_len (attention cost linear in the rows)."""
    p, cfg = plan("cpu", cutoff_len=512)
    assert (p.padding_free, p.rows, p.flash_attn, p.liger, p.label_logits_only, p.optim) == (
        True,
        "one",
        "sdpa_varlen",
        False,
        True,
        "adamw_torch",
    )
    assert p.line() == (
        "perf: auto (cpu) padding_free=on rows=one micro_batch_tokens=off attention=sdpa_varlen liger=off "
        "label_logits_only=on optim=adamw_torch compile=off activation_checkpointing=off "
        "fused_rms_norm=off fused_lora=on cpu_allocator_cache=on"
    )
    apply_perf(cfg, p)
    assert cfg.padding_free and cfg.label_logits_only and not cfg.packing and cfg.flash_attn == "sdpa_varlen"
    assert plan("cpu", flash_attn="sdpa", cutoff_len=512)[0].rows == "<=512"  # the user's sdpa: capped rows
    assert plan("cpu", packing=False)[0].flash_attn == "auto"  # nothing packed: nothing to cut
    assert plan("cpu", neat_packing=True)[0].flash_attn == "sdpa_varlen"  # neat rows: examples kept apart
    assert plan("cpu", packing=True)[0].flash_attn == "auto"  # LLaMA-Factory's packing: examples meet
    assert plan("cpu", stage="pt")[0].flash_attn == "auto"  # pt blocks: likewise
    # fused_rms_norm (no effect measured): off unless written; fused_lora: plain LoRA pt/sft on CPU only
    assert not cfg.fused_rms_norm and cfg.fused_lora
    assert plan("cpu", fused_rms_norm=True)[0].fused_rms_norm
    not_plain_lora = ({"finetuning_type": "full"}, {"use_dora": True}, {"quantization_bit": 4})
    for keys in (*not_plain_lora, {"fused_lora": False}, {"perf": "off"}):
        assert not plan("cpu", **keys)[0].fused_lora, keys
    assert not plan("cpu", stage="dpo", dataset="p")[0].fused_lora  # measured on sft steps only
    assert not plan("cuda")[0].fused_lora and plan("cuda", fused_lora=True)[0].fused_lora  # unmeasured there
    assert plan("cuda", flash_attn="sdpa")[0].rows == "<=2048"  # sdpa on CUDA too: capped rows
    assert plan("cpu", stage="pt")[0].rows == "-"  # pt: LLaMA-Factory's blocks (its packing default)


def test_cpu_allocator_cache_on_cpu_only() -> None:
    """cpu_allocator_cache: CPU only, any stage; written where it cannot act: off with one note naming it."""
    assert plan("cpu")[0].cpu_allocator_cache and plan("cpu", stage="dpo", dataset="p")[0].cpu_allocator_cache
    for keys in ({"perf": "off"}, {"cpu_allocator_cache": False}):
        assert not plan("cpu", **keys)[0].cpu_allocator_cache, keys
    assert not plan("cuda")[0].cpu_allocator_cache
    p, _ = plan("cuda", cpu_allocator_cache=True)
    assert not p.cpu_allocator_cache
    assert p.notes == ["cpu_allocator_cache: the tensors are in cuda memory, not malloc's; off"]


def test_cpu_allocator_cache_needs_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    """musl and the like: unset, quietly off; written, off with one note."""
    import runtime.perf.plan

    monkeypatch.setattr(runtime.perf.plan, "glibc", lambda: False)
    assert plan("cpu")[0].cpu_allocator_cache is False and plan("cpu")[0].notes == []
    p, _ = plan("cpu", cpu_allocator_cache=True)
    assert not p.cpu_allocator_cache
    assert p.notes == ["cpu_allocator_cache: the C library is not glibc (mallopt); off"]


def test_levers_switch_off_with_the_keys_the_user_wrote() -> None:
    p, _ = plan("cpu", packing=False, label_logits_only=False)
    assert (p.padding_free, p.rows, p.label_logits_only) == (False, "-", False)
    p, _ = plan("cpu", perf="off")
    assert (p.padding_free, p.label_logits_only) == (False, False)
    for loss in ("use_dft_loss", "use_eaft_loss", "use_asft_loss"):  # they read the full logits
        assert plan("cpu", **{loss: True})[0].label_logits_only is False
    assert plan("cpu", stage="pt")[0].label_logits_only is False  # every pt token is trained


def test_micro_batch_tokens_is_refused_where_it_cannot_apply() -> None:
    p, _ = plan("cpu", micro_batch_tokens=4096, cutoff_len=512)
    assert p.micro_batch_tokens == 4096 and "micro_batch_tokens=4096" in p.line()
    cases = [
        ({"stage": "dpo"}, "applies to stages pt and sft"),
        ({"neat_packing": True}, "neat_packing already makes rows"),
        ({"packing": True}, "packing already makes rows"),
        ({"cutoff_len": 8192}, "below cutoff_len 8192"),
        ({"perf": "off"}, "perf: off"),
        ({"streaming": True, "max_steps": 2}, "drop streaming"),
    ]
    for keys, message in cases:
        with pytest.raises(ConfigError, match=f"^micro_batch_tokens: .*{message}"):
            parse_train_config({**BASE, "micro_batch_tokens": 4096, **keys})
    with pytest.raises(ConfigError, match="^micro_batch_tokens: must be a positive integer"):
        parse_train_config({**BASE, "micro_batch_tokens": 0})
    with pytest.raises(ConfigError, match="^micro_batch_tokens: needs the padding-free path"):
        plan("npu", micro_batch_tokens=4096)  # perf auto leaves padding-free off on NPU


def test_keys_the_user_wrote_win() -> None:
    keys = dict(packing=False, enable_liger_kernel=False, optim="adamw_torch", flash_attn="sdpa")
    p, _ = plan("cuda", torch_compile=True, **keys)
    assert (p.padding_free, p.liger, p.optim, p.flash_attn, p.torch_compile) == (
        False,
        False,
        "adamw_torch",
        "sdpa",
        True,
    )
    p, cfg = plan("cuda", packing=True, flash_attn="sdpa")  # LLaMA-Factory's rows, the user's attention
    assert (cfg.packing, p.padding_free, p.flash_attn) == (True, False, "sdpa")


def test_perf_off_is_exactly_the_keys() -> None:
    p, _ = plan("cuda", perf="off")
    assert (p.padding_free, p.flash_attn, p.liger, p.optim) == (False, "auto", False, "adamw_torch")


def test_pairwise_stages_get_only_the_fused_optimizer() -> None:
    for stage in ("rm", "dpo"):
        p, _ = plan("cuda", stage=stage)
        assert (p.padding_free, p.liger, p.optim) == (False, False, "adamw_torch_fused")


def test_liger_asked_for_where_it_cannot_run_falls_back_with_a_note() -> None:
    p, _ = plan("cpu", enable_liger_kernel=True)
    assert not p.liger and p.notes == ["enable_liger_kernel: Liger's Triton kernels need CUDA; off on cpu"]
    p, _ = plan("cuda", liger=False, use_liger_kernel=True)  # transformers' name is read as ours
    assert p.liger is False and "not installed" in p.notes[0]


def test_apply_writes_the_plan_into_the_keys() -> None:
    p, cfg = plan("cuda")
    apply_perf(cfg, p)
    # perf's lever is padding_free; `packing` keeps LLaMA-Factory's meaning (offline rows).
    assert (cfg.padding_free, cfg.packing, cfg.flash_attn, cfg.enable_liger_kernel, cfg.optim) == (
        True,
        False,
        "flex",
        True,
        "adamw_torch_fused",
    )
    direct = TrainConfig(model_name_or_path="m", dataset="d")  # built in code: nothing counts as written
    assert resolve_perf(direct, "cuda", liger_available=False).padding_free is True


def test_config_checks_the_new_keys() -> None:
    with pytest.raises(ConfigError, match="^perf: must be one of auto, off"):
        parse_train_config({**BASE, "perf": "fast"})
    import yaml  # an unquoted `perf: off` is YAML's false: it means off, as the docs write it

    assert parse_train_config({**BASE, **yaml.safe_load("perf: off")}).perf == "off"
    with pytest.raises(ConfigError, match="^fused_lora: applies to finetuning_type lora; it is full"):
        parse_train_config({**BASE, "fused_lora": True, "finetuning_type": "full"})
    with pytest.raises(ConfigError, match="^fused_lora: DoRA runs peft's own forward"):
        parse_train_config({**BASE, "fused_lora": True, "use_dora": True})
    cfg = parse_train_config({**BASE, "flash_attn": "flex", "neat_packing": True})
    assert cfg.flash_attn == "flex" and cfg.packing is True and "packing" in cfg.explicit
    p = resolve_perf(cfg, "cuda", liger_available=False)
    apply_perf(cfg, p)
    assert not p.padding_free and not cfg.padding_free  # the config's neat_packing, not the lever


def test_flex_off_cuda_falls_back_to_sdpa() -> None:
    from runtime.model import attn_implementation

    assert attn_implementation("flex", "cuda") == ("flex_attention", None)
    attn, warning = attn_implementation("flex", "cpu")
    assert attn == "sdpa" and "flex needs CUDA" in warning


def _run(tiny_dir: Path, out: Path, **keys):
    from runtime.config import parse_train_config
    from runtime.train import run_training

    keys = {"per_device_train_batch_size": 4, "max_steps": 5, "save_strategy": "no", **keys}
    raw = base_config(tiny_dir, out, **keys)
    result = run_training(parse_train_config(raw))
    assert result.code == 0
    history = result.trainer.state.log_history
    return result, [e["loss"] for e in history if "loss" in e]


def test_cpu_defaults_train_like_padded_batches(
    tiny_dir: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same batches, same seed: perf auto on CPU (padding-free rows <= cutoff_len under sdpa, lm_head only
    at trained positions) vs padded batches with full logits (both levers switched off by their keys).
    cpu_allocator_cache: the run calls host_memory.keep_freed_blocks (recorded here, not applied), unless
    the key says false."""
    import runtime.levers.cpu_allocator_cache

    kept: list[bool] = []
    monkeypatch.setattr(
        runtime.levers.cpu_allocator_cache, "keep_freed_blocks", lambda: kept.append(True) or True
    )
    padded, padded_losses = _run(
        tiny_dir, tmp_path / "padded", packing=False, label_logits_only=False, cpu_allocator_cache=False
    )
    assert kept == []
    packed, packed_losses = _run(tiny_dir, tmp_path / "packed")
    assert kept == [True] and packed.perf.cpu_allocator_cache
    assert packed.trainer.data_collator.__class__.__name__ == "PackingCollator"
    assert packed.trainer.data_collator.max_row is None  # sdpa per example: one row per micro-batch
    assert packed.trainer.label_logits is not None and padded.trainer.label_logits is None
    assert padded.trainer.data_collator.__class__.__name__ == "PaddingCollator"
    # the resolved config trains the same way again: no `packing: false` where perf chose padding-free
    import yaml

    resolved = [
        yaml.safe_load((tmp_path / run / "xgen_config_resolved.yaml").read_text())
        for run in ("packed", "padded")
    ]
    assert "packing" not in resolved[0] and resolved[1]["packing"] is False
    assert len(packed_losses) == 5 and len(set(packed_losses)) > 1  # it trained: the losses move
    for step, (a, b) in enumerate(zip(padded_losses, packed_losses, strict=True), 1):
        assert abs(a - b) <= FP32_RTOL * abs(a), f"step {step}: padded {a} vs packed {b}"
    # Both count only real tokens (non_padding): the packed row has no pads, the padded batch's are skipped.
    assert padded.trainer.state.num_input_tokens_seen == packed.trainer.state.num_input_tokens_seen
    out = capsys.readouterr().out
    assert (
        "xgen-runtime: perf: auto (cpu) padding_free=on rows=one micro_batch_tokens=off "
        "attention=sdpa_varlen liger=off label_logits_only=on optim=adamw_torch" in out
    )
    assert "perf: auto (cpu) padding_free=off rows=- micro_batch_tokens=off" in out


def test_token_budget_micro_batches(tiny_dir: Path, tmp_path: Path) -> None:
    """micro_batch_tokens: whole examples up to the budget per micro-batch, whatever the batch size says."""
    from runtime.data.packing import TokenBudgetBatches

    result, losses = _run(tiny_dir, tmp_path / "budget", micro_batch_tokens=160, max_steps=3)
    trainer = result.trainer
    sampler = trainer.get_train_dataloader().batch_sampler  # one process: accelerate leaves it unwrapped
    assert isinstance(sampler, TokenBudgetBatches)
    lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
    sizes = [sum(lengths[i] for i in batch) for batch in sampler]
    assert max(sizes) <= 160 and max(len(batch) for batch in sampler) > 4  # more than the batch size of 4
    assert len(losses) == 3 and trainer.state.num_input_tokens_seen <= 3 * 160


@pytest.mark.slow
def test_token_budget_two_ranks_equal_one_process(tiny_dir: Path, tmp_path: Path) -> None:
    """2 gloo ranks with micro_batch_tokens = 1 process accumulating 2 micro-batches: the same global
    micro-batches per step (rank r takes r, r + 2, ...), the loss a per-token mean over the whole step."""
    from trainer_harness import max_diff, run_inprocess, run_torchrun, weights, write_config

    keys = dict(micro_batch_tokens=160, max_steps=4, save_strategy="no")
    single = tmp_path / "single"
    cfg = base_config(tiny_dir, single, gradient_accumulation_steps=2, **keys)
    assert run_inprocess(write_config(tmp_path / "single.yaml", cfg)) == 0
    out = tmp_path / "ddp"
    proc = run_torchrun(write_config(tmp_path / "ddp.yaml", base_config(tiny_dir, out, **keys)), tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "strategy=ddp" in proc.stdout and "micro_batch_tokens=160" in proc.stdout
    assert max_diff(weights(out), weights(single)) < FP32_RTOL


# --- padding-free rows and label_logits_only: same loss and gradients as padded batches --------------


@pytest.fixture(scope="module")
def alpaca_rows(_tiny_tokenizer_loaded, tiny_dir: Path, tmp_path_factory):
    import copy

    from runtime.data import build_datasets

    cfg = TrainConfig(
        dataset="tiny_alpaca",
        dataset_dir=str(tiny_dir / "data"),
        cutoff_len=64,
        max_samples=12,
        cache_dir=str(tmp_path_factory.mktemp("cache")),
    )
    train = build_datasets(cfg, copy.deepcopy(_tiny_tokenizer_loaded), stage="sft").train
    rows = [train[i] for i in range(len(train))]
    assert sum(len(r["input_ids"]) for r in rows) > 2 * 64  # more than two rows of cutoff_len
    return rows


def _loss_and_grads(model, batch: dict, *, label_logits: bool = False):
    """Trainer's per-token loss over the batch (num_items_in_batch), then its gradients."""
    from runtime.stages.sft import LabelLogits

    model.zero_grad()
    labels = batch["labels"]
    count = (labels[:, 1:] != -100).sum()
    if label_logits:
        head = LabelLogits(model)
        with head.only_trained(labels):
            out = model(**{k: v for k, v in batch.items() if k != "labels"})
        head.handle.remove()
        assert out.logits.shape[:2] == (1, count.item())  # only the trained positions reached the lm_head
        loss = head.loss(out, labels, count)
    else:
        loss = model(**batch, num_items_in_batch=count).loss
    loss.backward()
    return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters()}


def _grad_diff(a: dict, b: dict) -> float:
    return max(((a[k] - b[k]).abs().max() / a[k].abs().max().clamp_min(1e-12)).item() for k in a)


def test_padding_free_rows_give_the_padded_loss_and_grads(tiny_dir: Path, alpaca_rows) -> None:
    """sdpa on CPU: padded batch vs padding-free rows (<= cutoff_len, restarting positions, no mask) vs the
    same rows with label_logits_only: loss within 1e-5 relative, every gradient within 1e-5 of its scale."""
    import torch
    from transformers import AutoModelForCausalLM

    from runtime.data import check_packing_support
    from runtime.data.collators import PackingCollator, PaddingCollator

    model = AutoModelForCausalLM.from_pretrained(tiny_dir / "model", attn_implementation="sdpa")
    check_packing_support(model)
    model.train()
    padded = PaddingCollator(0)(alpaca_rows)
    rows = PackingCollator(0, max_row=64)(alpaca_rows)
    assert set(rows) == {"input_ids", "labels", "position_ids"}  # no attention_mask: packed mode
    assert 1 < rows["input_ids"].shape[0] < len(alpaca_rows) and rows["input_ids"].shape[1] <= 64
    loss, grads = _loss_and_grads(model, padded)
    for label_logits in (False, True):
        other, other_grads = _loss_and_grads(model, rows, label_logits=label_logits)
        assert abs(other - loss) <= FP32_RTOL * abs(loss), (label_logits, loss, other)
        assert _grad_diff(grads, other_grads) <= FP32_RTOL, label_logits
    # Control (the check can fail): the same rows with positions that do not restart let examples mix.
    leaky = dict(rows, position_ids=torch.arange(rows["input_ids"].shape[1]).expand_as(rows["input_ids"]))
    assert abs(_loss_and_grads(model, leaky)[0] - loss) > 1e-3
