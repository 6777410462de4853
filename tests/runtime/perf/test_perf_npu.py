"""runtime.perf.npu: what `perf: auto` turns on on Ascend NPU, and that the model really calls torch_npu.

No NPU here: the wiring runs on CPU against tests/runtime/fakes/torch_npu, whose functions check their
arguments and compute the reference result in plain torch, and record each call. For the fused attention,
transformers itself is told an NPU is present (the patches in `npu_transformers`), so its own
integrations/npu_flash_attention.py builds the npu_fusion_attention call (layout TND, actual_seq_qlen)
exactly as on an Ascend machine. These tests prove decisions, wiring and numbers; the NPU speed of the
levers is unmeasured (the test names say `fake_torch_npu`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from trainer_harness import base_config

from runtime.config import parse_train_config
from runtime.perf.npu import NPU_OPS, npu_ops
from runtime.perf.plan import apply_perf, resolve_perf

FAKES = Path(__file__).parents[1] / "fakes"
ALL_OPS = frozenset(NPU_OPS.values())
BASE = {"model_name_or_path": "m", "dataset": "d", "stage": "sft"}
FP32_TOL = 1e-5


def plan(ops: frozenset[str] = ALL_OPS, **keys):
    cfg = parse_train_config({**BASE, **keys})
    return resolve_perf(cfg, "npu", liger_available=False, fa2_available=False, npu_ops=ops), cfg


# --- decisions (torch-free) -----------------------------------------------------------------------


def test_npu_auto_turns_on_padding_free_varlen_attention_kernels_and_fused_adamw() -> None:
    p, cfg = plan()
    assert (p.padding_free, p.flash_attn, p.npu_kernels, p.optim, p.notes) == (
        True,
        "fa2",
        ("rms_norm", "swiglu", "rotary"),
        "adamw_torch_npu_fused",
        [],
    )
    assert p.line().endswith("optim=adamw_torch_npu_fused compile=off activation_checkpointing=off "
                             "npu_kernels=rms_norm,swiglu,rotary")  # fmt: skip
    apply_perf(cfg, p)
    assert (cfg.padding_free, cfg.packing, cfg.flash_attn, cfg.use_v1_kernels, cfg.npu_kernels) == (
        True,
        False,  # `packing` keeps LLaMA-Factory's meaning; perf's lever is padding_free
        "fa2",
        True,
        ("rms_norm", "swiglu", "rotary"),
    )


@pytest.mark.parametrize(
    ("op", "lever", "note"),
    [
        ("npu_fusion_attention", "padding_free", "padding_free: torch_npu has no npu_fusion_attention"),
        ("npu_rms_norm", "rms_norm", "use_v1_kernels: torch_npu has no npu_rms_norm; RMSNorm stays unfused"),
        ("npu_swiglu", "swiglu", "use_v1_kernels: torch_npu has no npu_swiglu; SwiGLU stays unfused"),
        ("npu_rotary_mul", "rotary", "use_v1_kernels: torch_npu has no npu_rotary_mul; rotary embedding"),
        ("optim.NpuFusedAdamW", "optim", "optim: torch_npu has no optim.NpuFusedAdamW; using adamw_torch"),
    ],
)
def test_npu_lever_without_its_torch_npu_function_falls_back_with_one_note(
    op: str, lever: str, note: str
) -> None:
    p, _ = plan(ALL_OPS - {op})
    assert len(p.notes) == 1 and p.notes[0].startswith(note), p.notes
    levers = {
        "padding_free": p.padding_free,
        "optim": p.optim == "adamw_torch_npu_fused",
        **{k: k in p.npu_kernels for k in ("rms_norm", "swiglu", "rotary")},
    }
    assert levers.pop(lever) is False  # this lever off …
    assert all(levers.values()), levers  # … every other one still on
    assert p.flash_attn == ("auto" if lever == "padding_free" else "fa2")


def test_npu_without_torch_npu_keeps_the_plain_path_with_a_note_per_lever() -> None:
    p, _ = plan(frozenset())
    assert (p.padding_free, p.flash_attn, p.npu_kernels, p.optim) == (False, "auto", (), "adamw_torch")
    assert len(p.notes) == 5


def test_npu_keys_the_user_wrote_win() -> None:
    keys = dict(packing=False, use_v1_kernels=False, optim="adamw_torch", flash_attn="sdpa")
    p, _ = plan(**keys)
    assert (p.padding_free, p.flash_attn, p.npu_kernels, p.optim, p.notes) == (
        False,
        "sdpa",
        (),
        "adamw_torch",
        [],
    )
    # sdpa chosen, packing left to perf: not a variable-length attention, so no padding-free rows
    assert plan(flash_attn="sdpa")[0].padding_free is False
    # fa2 written, packing left to perf: packed through the fused attention
    assert plan(flash_attn="fa2")[0].padding_free is True


def test_npu_levers_asked_for_where_torch_npu_lacks_them_fall_back_with_a_note() -> None:
    for keys in ({"packing": False}, {}):  # one note either way, and no padding-free rows over sdpa
        p, _ = plan(ALL_OPS - {"npu_fusion_attention"}, flash_attn="fa2", **keys)
        assert (p.flash_attn, p.padding_free) == ("sdpa", False) and p.notes == [
            "flash_attn: torch_npu has no npu_fusion_attention (fa2 on Ascend); using sdpa"
        ]
    p, _ = plan(ALL_OPS - {"optim.NpuFusedAdamW"}, optim="adamw_torch_npu_fused")
    assert p.optim == "adamw_torch" and len(p.notes) == 1


def test_npu_stages_and_perf_off() -> None:
    p, _ = plan(stage="rm")  # pairs: no padding_free, no kernels under auto; the fused AdamW suits any stage
    assert (p.padding_free, p.npu_kernels, p.optim, p.notes) == (False, (), "adamw_torch_npu_fused", [])
    p, _ = plan(stage="rm", use_v1_kernels=True)  # written: applied in any stage
    assert p.npu_kernels == ("rms_norm", "swiglu", "rotary")
    p, _ = plan(perf="off")
    assert (p.padding_free, p.flash_attn, p.npu_kernels, p.optim) == (False, "auto", (), "adamw_torch")
    p, _ = plan(ALL_OPS - {"npu_swiglu"}, perf="off", use_v1_kernels=True)
    assert p.npu_kernels == ("rms_norm", "rotary") and len(p.notes) == 1


def test_cpu_and_cuda_plans_have_no_npu_kernels() -> None:
    for device in ("cpu", "cuda"):
        cfg = parse_train_config(BASE)
        p = resolve_perf(cfg, device, liger_available=False, fa2_available=False, npu_ops=ALL_OPS)
        assert p.npu_kernels == () and "npu_kernels" not in p.line()


# --- the fake torch_npu ---------------------------------------------------------------------------


def test_fake_torch_npu_probe_sees_what_the_module_has(fake_npu, monkeypatch: pytest.MonkeyPatch) -> None:
    assert npu_ops() == ALL_OPS
    monkeypatch.delattr(fake_npu, "npu_swiglu")
    monkeypatch.delattr(fake_npu.optim, "NpuFusedAdamW")
    assert npu_ops() == ALL_OPS - {"npu_swiglu", "optim.NpuFusedAdamW"}
    monkeypatch.setitem(sys.modules, "torch_npu", None)  # an install that does not import
    assert npu_ops() == frozenset()


def test_fake_torch_npu_refuses_wrong_arguments(fake_npu) -> None:
    """The fake is a check, not a pass-through: wrong layouts, lengths and dtypes are refused."""
    q = torch.randn(7, 4, 16)
    kv = torch.randn(7, 2, 16)
    mask = torch.triu(torch.ones(2048, 2048, dtype=torch.bool), diagonal=1)
    ok = dict(atten_mask=mask, scale=0.25, input_layout="TND", sparse_mode=3)
    fake_npu.npu_fusion_attention(q, kv, kv, 4, actual_seq_qlen=(3, 7), actual_seq_kvlen=(3, 7), **ok)
    bad_calls = [
        dict(actual_seq_qlen=(0, 3, 7), actual_seq_kvlen=(0, 3, 7)),  # a leading 0 (cu_seqlens, not ends)
        dict(actual_seq_qlen=(3, 6), actual_seq_kvlen=(3, 6)),  # does not end at T
        dict(actual_seq_qlen=None, actual_seq_kvlen=None),  # TND without lengths
    ]
    for bad in bad_calls:
        with pytest.raises(ValueError, match="fake torch_npu"):
            fake_npu.npu_fusion_attention(q, kv, kv, 4, **bad, **ok)
    with pytest.raises(ValueError, match="head_num"):
        fake_npu.npu_fusion_attention(q, kv, kv, 2, actual_seq_qlen=(7,), actual_seq_kvlen=(7,), **ok)
    with pytest.raises(ValueError, match="dtype"):
        fake_npu.npu_rms_norm(torch.randn(2, 8), torch.ones(8, dtype=torch.bfloat16), epsilon=1e-6)
    with pytest.raises(ValueError, match="odd"):
        fake_npu.npu_swiglu(torch.randn(2, 7))
    with pytest.raises(ValueError, match="4-D"):
        fake_npu.npu_rotary_mul(torch.randn(2, 8), torch.randn(2, 8), torch.randn(2, 8))
    assert fake_npu.CALLS == {"npu_fusion_attention": 1}


def _wired_model(tiny_dir: Path, tmp_path: Path):
    """build_model as a run on NPU does it: perf auto with every torch_npu function present."""
    from runtime.model import build_model, load_tokenizer

    cfg = parse_train_config({**base_config(tiny_dir, tmp_path / "out"), "finetuning_type": "full"})
    apply_perf(cfg, resolve_perf(cfg, "npu", liger_available=False, npu_ops=npu_ops()))
    tokenizer = load_tokenizer(cfg)
    return build_model(cfg, stage="sft", device="npu", tokenizer=tokenizer).eval()


def _plain_model(tiny_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_dir / "model", dtype=torch.float32).eval()


def test_fake_torch_npu_wired_model_matches_the_plain_model(
    npu_transformers, tiny_dir: Path, tmp_path: Path
) -> None:
    """Kernels and fused attention in, logits within 1e-5 of the plain model, and every kernel really ran."""
    ids = torch.tensor([[5, 9, 14, 3, 22, 7, 8], [30, 31, 32, 33, 0, 0, 0]])
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    with torch.no_grad():  # first: the rotary kernel is patched into transformers' module, for every model
        want = _plain_model(tiny_dir)(input_ids=ids, attention_mask=mask).logits
    wired = _wired_model(tiny_dir, tmp_path)
    assert wired.config._attn_implementation == "flash_attention_2"
    with torch.no_grad():
        got = wired(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()  # pad positions carry no meaning in either model
    assert (got[real] - want[real]).abs().max().item() < FP32_TOL
    layers = wired.config.num_hidden_layers
    assert npu_transformers.LAST_ATTENTION["actual_seq_qlen"] == [7, 11]  # padding removed: varlen
    assert npu_transformers.CALLS["npu_fusion_attention"] == layers
    assert npu_transformers.CALLS["npu_rms_norm"] == 2 * layers + 1  # two per layer and the final norm
    assert npu_transformers.CALLS["npu_swiglu"] == layers
    assert npu_transformers.CALLS["npu_rotary_mul"] == 2 * layers  # q and k


def test_fake_torch_npu_packed_row_equals_per_example_logits(
    npu_transformers, tiny_dir: Path, tmp_path: Path
) -> None:
    """A padding-free row (PackingCollator, restarting position_ids) through the varlen fused attention
    gives each example exactly the logits it gets alone: examples never see each other."""
    from runtime.data.collators import PackingCollator

    examples = [[5, 9, 14, 3, 22, 7], [8, 4, 11], [30, 31, 32, 33, 34, 35, 36, 37], [12, 13]]
    plain = _plain_model(tiny_dir)
    with torch.no_grad():  # before the rotary kernel is patched in
        alone = torch.cat([plain(input_ids=torch.tensor([e])).logits[0] for e in examples])
    batch = PackingCollator()([{"input_ids": e, "labels": e} for e in examples])
    assert "attention_mask" not in batch and batch["input_ids"].shape == (1, 19)
    wired = _wired_model(tiny_dir, tmp_path)
    with torch.no_grad():
        packed = wired(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
    assert (packed - alone).abs().max().item() < FP32_TOL
    assert npu_transformers.LAST_ATTENTION == {
        "layout": "TND",
        "actual_seq_qlen": [6, 9, 17, 19],  # each example's cumulative end
        "actual_seq_kvlen": [6, 9, 17, 19],
    }


def _train_2_steps(tiny_dir: Path, out: Path, monkeypatch: pytest.MonkeyPatch, device: str, **keys):
    import runtime.train
    from runtime.config import parse_train_config
    from runtime.train import run_training

    monkeypatch.setattr(runtime.train, "detect_device", lambda cfg: device)
    raw = base_config(tiny_dir, out, per_device_train_batch_size=4, max_steps=2, save_strategy="no", **keys)
    result = run_training(parse_train_config(raw))
    assert result.code == 0
    return result, [e["loss"] for e in result.trainer.state.log_history if "loss" in e]


def test_fake_torch_npu_training_uses_every_lever_and_matches_the_plain_cpu_run(
    npu_transformers, tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """Two steps as on an NPU (the device says npu; tensors stay on the CPU): packed rows through the fused
    attention, fused kernels, NpuFusedAdamW; losses equal a plain padded CPU run's."""
    # the plain run first: build_model patches the rotary kernel into transformers' module for every model
    plain, plain_losses = _train_2_steps(tiny_dir, tmp_path / "cpu", monkeypatch, "cpu", perf="off")
    assert plain.trainer.data_collator.__class__.__name__ == "PaddingCollator"
    assert not npu_transformers.CALLS  # the plain run touched no torch_npu function
    capsys.readouterr()
    npu, npu_losses = _train_2_steps(tiny_dir, tmp_path / "npu", monkeypatch, "npu")
    out = capsys.readouterr().out
    assert "perf: auto (npu) padding_free=on rows=one micro_batch_tokens=off attention=fa2 liger=off" in out
    assert "optim=adamw_torch_npu_fused" in out  # varlen fused attention: one row per micro-batch
    assert "npu_kernels=rms_norm,swiglu,rotary" in out and "torch_npu has no" not in out
    assert npu.trainer.data_collator.__class__.__name__ == "PackingCollator"
    assert type(npu.trainer.optimizer.optimizer).__name__ == "NpuFusedAdamW"
    calls = npu_transformers.CALLS
    assert calls["NpuFusedAdamW.step"] == 2
    assert all(calls[f] > 0 for f in ("npu_fusion_attention", "npu_rms_norm", "npu_swiglu", "npu_rotary_mul"))
    assert npu_transformers.LAST_ATTENTION["layout"] == "TND"
    assert len(npu_losses) == 2 and npu_losses != plain_losses[:1] * 2  # two steps that moved the loss
    print(f"losses plain cpu {plain_losses} / fake-npu levers {npu_losses}")
    for a, b in zip(plain_losses, npu_losses, strict=True):
        assert abs(a - b) <= FP32_TOL * abs(a), (plain_losses, npu_losses)


@pytest.mark.parametrize("missing", ["npu_swiglu", "npu_fusion_attention"])
def test_fake_torch_npu_missing_function_one_note_lever_off_training_runs(
    missing: str, npu_transformers, tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.delattr(npu_transformers, missing)
    result, losses = _train_2_steps(tiny_dir, tmp_path / "run", monkeypatch, "npu")
    notes = [line for line in capsys.readouterr().out.splitlines() if "note:" in line and "torch_npu" in line]
    assert len(notes) == 1 and f"torch_npu has no {missing}" in notes[0], notes
    assert len(losses) == 2 and result.trainer.state.global_step == 2
    calls = npu_transformers.CALLS
    assert missing not in calls  # the lever is off: nothing tried to call it
    assert calls["npu_rms_norm"] > 0 and calls["NpuFusedAdamW.step"] == 2
    collator = result.trainer.data_collator.__class__.__name__
    if missing == "npu_fusion_attention":  # no varlen attention: padded batches with sdpa
        assert collator == "PaddingCollator" and result.model.config._attn_implementation == "sdpa"
    else:
        assert collator == "PackingCollator" and calls["npu_swiglu"] == 0 and calls["npu_rotary_mul"] > 0
