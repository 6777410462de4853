"""Every loss equals its paper's formula (or trl's implementation, used here only as an oracle) on a
fixed batch within 1e-5, and each stage wires it in: the step-1 loss where policy = reference, DPO's
gradient accumulation, the KTO rows and batches."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from trainer_harness import (
    base_config,
    log_history,
    max_diff,
    run_inprocess,
    step_losses,
    weights,
    write_config,
)

from runtime.stages.dpo import preference_loss
from runtime.stages.kto import kto_loss
from runtime.stages.reference import sequence_logps
from runtime.stages.sft import asft_loss, dft_loss, eaft_loss

TOL = 1e-5
BETA = 0.1


def _batch(seed: int = 0, n: int = 4) -> dict[str, torch.Tensor]:
    """Sequence log-probs of a fixed batch (summed over a few tokens: negative, varied)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 9, (2 * n,), generator=g)
    token = -torch.rand(2 * n, 8, generator=g) * 3
    mask = torch.arange(8) < lengths[:, None]
    sums = (token * mask).sum(-1).double()
    ref = sums + torch.randn(2 * n, generator=g).double() * 2
    return {"sum": sums, "ref": ref, "len": lengths.double()}


def _trl(cls_path: str):
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    module, name = cls_path.rsplit(".", 1)
    import importlib

    return getattr(importlib.import_module(module), name)


def _stub(**kw):
    """The attributes trl's loss methods read from `self`."""
    return SimpleNamespace(
        **{"accelerator": SimpleNamespace(device="cpu"), "alpha": 0.0, "label_smoothing": 0.0, **kw}
    )


@pytest.mark.parametrize(
    ("loss_type", "smoothing"), [("sigmoid", 0.0), ("sigmoid", 0.2), ("hinge", 0.0), ("ipo", 0.0)]
)
def test_reference_losses_equal_trl(loss_type: str, smoothing: float) -> None:
    """trl's CPO loss on z = (log π − log π_ref)(y_c) − (…)(y_r) is exactly DPO's sigmoid/hinge/IPO."""
    b = _batch()
    logps, ref = b["sum"], b["ref"]
    if loss_type == "ipo":  # IPO on per-token averages (LLaMA-Factory; trl's DPOTrainer normalises so too)
        logps, ref = logps / b["len"], ref / b["len"]
    c, r = logps.chunk(2)
    rc, rr = ref.chunk(2)
    ours, chosen_rewards, _ = preference_loss(loss_type, c, r, rc, rr, beta=BETA, label_smoothing=smoothing)
    cpo = _trl("trl.experimental.cpo.CPOTrainer")
    oracle, _, _ = cpo.cpo_loss(
        _stub(beta=BETA, loss_type=loss_type, simpo_gamma=0.0, label_smoothing=smoothing), c - rc, r - rr
    )
    assert torch.allclose(ours, oracle, atol=TOL), (ours, oracle)
    assert torch.allclose(chosen_rewards, BETA * (c - rc), atol=TOL)
    if loss_type == "sigmoid" and not smoothing:  # and the paper's eq. 7 written out
        paper = [
            -math.log(1 / (1 + math.exp(-BETA * ((c[i] - rc[i]) - (r[i] - rr[i]))))) for i in range(len(c))
        ]
        assert ours.tolist() == pytest.approx(paper, abs=TOL)


def test_simpo_equals_trl() -> None:
    b = _batch(1)
    avg = b["sum"] / b["len"]
    c, r = avg.chunk(2)
    ours, chosen_rewards, _ = preference_loss("simpo", c, r, None, None, beta=2.0, simpo_gamma=0.5)
    oracle, oracle_rewards, _ = _trl("trl.experimental.cpo.CPOTrainer").cpo_loss(
        _stub(beta=2.0, loss_type="simpo", simpo_gamma=0.5), c, r
    )
    assert torch.allclose(ours, oracle, atol=TOL)
    assert torch.allclose(chosen_rewards, oracle_rewards, atol=TOL)
    paper = [-math.log(_sig(2.0 * (x - y) - 0.5)) for x, y in zip(c.tolist(), r.tolist(), strict=True)]
    assert ours.tolist() == pytest.approx(paper, abs=TOL)


def test_orpo_equals_trl() -> None:
    """ORPO = NLL of the chosen reply + β · (−log σ(log odds ratio)); trl returns β · log σ(…)."""
    b = _batch(2)
    avg = b["sum"] / b["len"]
    c, r = avg.chunk(2)
    ours, _, _ = preference_loss("orpo", c, r, None, None, beta=BETA)
    ratio, *_ = _trl("trl.experimental.orpo.ORPOTrainer").odds_ratio_loss(_stub(beta=BETA), c, r)
    assert torch.allclose(ours, -c - ratio, atol=TOL)

    def log_odds(logp: float) -> float:
        return logp - math.log(1 - math.exp(logp))

    paper = [
        -x - BETA * math.log(_sig(log_odds(x) - log_odds(y)))
        for x, y in zip(c.tolist(), r.tolist(), strict=True)
    ]
    assert ours.tolist() == pytest.approx(paper, abs=TOL)


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_kto_pair_equals_halos_formula() -> None:
    """HALOs eq. 7 as trl 0.8 computed it: each half's reference point from the other half."""
    b = _batch(3)
    c, r = b["sum"].chunk(2)
    rc, rr = b["ref"].chunk(2)
    ours, _, _ = preference_loss("kto_pair", c, r, rc, rr, beta=BETA)
    ratio_c, ratio_r = (c - rc).tolist(), (r - rr).tolist()
    kl_c, kl_r = max(0.0, sum(ratio_c) / len(ratio_c)), max(0.0, sum(ratio_r) / len(ratio_r))
    paper = [1 - _sig(BETA * (x - kl_r)) for x in ratio_c] + [1 - _sig(BETA * (kl_c - x)) for x in ratio_r]
    assert ours.tolist() == pytest.approx(paper, abs=TOL)


def test_kto_equals_paper_formula() -> None:
    """KTO eq. 7: λ_D (1 − σ(β(r − z0))) for desirable rows, λ_U (1 − σ(β(z0 − r))) for undesirable."""
    b = _batch(4, n=3)
    c, r = b["sum"][:2], b["sum"][2:]
    rc, rr = b["ref"][:2], b["ref"][2:]
    z0 = torch.tensor(0.7, dtype=torch.float64)
    ours, chosen_rewards, rejected_rewards = kto_loss(
        c, r, rc, rr, z0, beta=BETA, chosen_weight=1.5, rejected_weight=0.5
    )
    paper = [1.5 * (1 - _sig(BETA * (x - 0.7))) for x in (c - rc).tolist()]
    paper += [0.5 * (1 - _sig(BETA * (0.7 - x))) for x in (r - rr).tolist()]
    assert ours.tolist() == pytest.approx(paper, abs=TOL)
    assert torch.allclose(rejected_rewards, BETA * (r - rr))


def _logits_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 6, 30, generator=g) * 2
    ref_logits = logits + torch.randn(2, 6, 30, generator=g)
    labels = torch.randint(0, 30, (2, 6), generator=g)
    labels[0, :2] = -100
    labels[1, :3] = -100
    labels[1, 5] = -100
    return logits, ref_logits, labels


def _response_tokens(labels: torch.Tensor):
    """(row, position predicting it, token) for every response token: position t predicts labels[t+1]."""
    return [
        (i, t, int(labels[i, t + 1]))
        for i in range(labels.size(0))
        for t in range(labels.size(1) - 1)
        if labels[i, t + 1] != -100
    ]


def test_dft_eaft_asft_equal_their_formulas() -> None:
    logits, ref_logits, labels = _logits_batch()
    tokens = _response_tokens(labels)
    n = len(tokens)
    dft = eaft = kl = 0.0
    for i, t, y in tokens:
        p = logits[i, t].softmax(-1)
        q = ref_logits[i, t].softmax(-1)
        nll = -math.log(p[y])
        dft += p[y].item() * nll  # DFT: the token's own probability (no gradient) times its NLL
        top = logits[i, t].topk(20).values.softmax(-1)
        entropy = -(top * top.log()).sum().item()
        eaft += (entropy / 3.0) ** 1.5 * nll
        kl += (q * (q.log() - p.log())).sum().item()  # KL(reference || policy)
    assert dft_loss(logits, labels).item() == pytest.approx(dft / n, abs=TOL)
    assert dft_loss(logits, labels, torch.tensor(7)).item() == pytest.approx(
        dft / 7, abs=TOL
    )  # token sum / N
    assert eaft_loss(logits, labels, alpha=1.5).item() == pytest.approx(eaft / n, abs=TOL)
    assert asft_loss(logits, labels, ref_logits, alpha=0.3).item() == pytest.approx(
        dft / n + 0.3 * kl / n, abs=TOL
    )


def test_dft_weight_carries_no_gradient() -> None:
    """d/dz of sg(p) · (−log p) is sg(p) · (softmax − onehot): the weight is a constant."""
    logits, _, labels = _logits_batch(1)
    logits.requires_grad_(True)
    dft_loss(logits, labels).backward()
    i, t, y = _response_tokens(labels)[0]
    p = logits[i, t].detach().softmax(-1)
    expected = p[y] * (p - F.one_hot(torch.tensor(y), 30).float()) / len(_response_tokens(labels))
    assert torch.allclose(logits.grad[i, t], expected, atol=TOL)


def test_sequence_logps_sum_response_tokens(tiny_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dir / "model").eval()
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 0, 0]])
    labels = torch.tensor([[-100, -100, 7, 8, 9], [-100, 11, 12, -100, -100]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        sums, lengths = sequence_logps(model, {"input_ids": ids, "attention_mask": mask, "labels": labels})
        logp = model(input_ids=ids, attention_mask=mask).logits.log_softmax(-1)
    expected = [
        sum(logp[i, t, int(labels[i, t + 1])].item() for t in range(4) if labels[i, t + 1] != -100)
        for i in range(2)
    ]
    assert sums.tolist() == pytest.approx(expected, abs=TOL)
    assert lengths.tolist() == [3, 2]


# --- the stages -----------------------------------------------------------------------------------

# Step 1 of a run: policy = reference, so every log-ratio is 0 and the loss is a constant.
FIRST_STEP = {"sigmoid": math.log(2), "hinge": 1.0, "ipo": (1 / (2 * BETA)) ** 2, "kto_pair": 0.5}


@pytest.mark.parametrize("pref_loss", sorted(FIRST_STEP))
def test_dpo_first_step_loss(tiny_dir: Path, tmp_path: Path, pref_loss: str) -> None:
    out = tmp_path / "out"
    cfg = base_config(tiny_dir, out, stage="dpo", pref_loss=pref_loss, max_steps=1)
    assert run_inprocess(write_config(tmp_path / "cfg.yaml", cfg)) == 0
    assert step_losses(out)[1] == pytest.approx(FIRST_STEP[pref_loss], abs=1e-6)


def test_orpo_and_simpo_load_no_reference(tiny_dir: Path, tmp_path: Path, monkeypatch) -> None:
    import runtime.stages.reference as reference

    loaded = []
    monkeypatch.setattr(reference, "load_model", lambda *a, **k: loaded.append(k) or pytest.fail("loaded"))
    for pref_loss in ("orpo", "simpo"):
        out = tmp_path / pref_loss
        cfg = base_config(tiny_dir, out, stage="dpo", pref_loss=pref_loss, max_steps=2, ref_model="ignored")
        assert run_inprocess(write_config(tmp_path / f"{pref_loss}.yaml", cfg)) == 0
        assert all(math.isfinite(v) for v in step_losses(out).values())
    assert loaded == []


@pytest.mark.parametrize("stage", ["dpo", "rm"])
def test_pair_loss_is_divided_by_accumulation(tiny_dir: Path, tmp_path: Path, stage: str) -> None:
    """Batch 4 in one step == 2 micro-batches of 2 accumulated: the pair mean is not a token sum.
    Plain SGD without clipping, so a loss twice too large shows as a step twice too long."""
    runs = {}
    for name, bs, ga in (("one", 4, 1), ("acc", 2, 2)):
        out = tmp_path / name
        cfg = base_config(
            tiny_dir,
            out,
            stage=stage,
            per_device_train_batch_size=bs,
            gradient_accumulation_steps=ga,
            max_steps=3,
            max_grad_norm=0,
            optim="sgd",
            learning_rate=0.05,
        )
        assert run_inprocess(write_config(tmp_path / f"{name}.yaml", cfg)) == 0
        runs[name] = weights(out)
    assert max_diff(runs["one"], runs["acc"]) < TOL


def test_kto_rows_and_batches(data_cfg, tiny_tokenizer) -> None:
    from runtime.data import build_collator, build_datasets

    cfg = data_cfg(dataset="reverse_kto", max_samples=8, cutoff_len=64)
    rows = build_datasets(cfg, tiny_tokenizer, stage="kto").train
    raw = json.loads((Path(cfg.dataset_dir) / "reverse_kto.json").read_text())[:8]
    assert rows["kto_tags"] == [r["label"] for r in raw]

    def part(ids: list[int], labels: list[int], *, reply: bool) -> list[int]:
        return [t for t, lab in zip(ids, labels, strict=True) if (lab != -100) == reply]

    def decode(ids: list[int], labels: list[int]) -> str:
        return tiny_tokenizer.decode(part(ids, labels, reply=True))

    for i, row in enumerate(rows):
        # the labelled reply is this row's; the KL reply is the previous row's, after this row's prompt
        assert decode(row["input_ids"], row["labels"]).startswith(raw[i]["messages"][1]["content"])
        assert decode(row["kl_input_ids"], row["kl_labels"]).startswith(raw[i - 1]["messages"][1]["content"])
        prompt = part(row["input_ids"], row["labels"], reply=False)
        assert part(row["kl_input_ids"], row["kl_labels"], reply=False) == prompt
    batch = build_collator(cfg, tiny_tokenizer, stage="kto")([rows[i] for i in range(3)])
    assert batch["kto_tags"].dtype == torch.bool and batch["kto_tags"].tolist() == rows["kto_tags"][:3]
    assert batch["input_ids"].shape == batch["labels"].shape
    assert batch["kl_input_ids"].shape == batch["kl_labels"].shape == batch["kl_attention_mask"].shape


@pytest.mark.parametrize("finetuning_type", ["full", "lora"])
def test_kto_first_step_and_metrics(tiny_dir: Path, tmp_path: Path, finetuning_type: str) -> None:
    out = tmp_path / "out"
    cfg = base_config(tiny_dir, out, stage="kto", finetuning_type=finetuning_type, max_steps=2)
    assert run_inprocess(write_config(tmp_path / "cfg.yaml", cfg)) == 0
    first = log_history(out)[0]
    assert first["loss"] == pytest.approx(0.5, abs=1e-6)  # policy = reference: 1 − σ(0)
    assert first["kl"] == 0.0
    assert {"rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"} <= set(first)


@pytest.mark.parametrize(
    "overrides",
    [
        {"use_dft_loss": True},
        {"use_eaft_loss": True},
        {"use_asft_loss": True},
        {"use_asft_loss": True, "finetuning_type": "lora"},
    ],
    ids=["dft", "eaft", "asft", "asft_lora"],
)
def test_sft_loss_variant_trains(tiny_dir: Path, tmp_path: Path, overrides: dict) -> None:
    out = tmp_path / "out"
    cfg = base_config(tiny_dir, out, max_steps=2, **overrides)
    assert run_inprocess(write_config(tmp_path / "cfg.yaml", cfg)) == 0
    losses = step_losses(out)
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses.values())
    if "use_eaft_loss" not in overrides:  # DFT-weighted: −p log p of a near-uniform model is tiny
        assert 0 < losses[1] < 0.1, losses


# --- the keys -------------------------------------------------------------------------------------


def _parse(**keys):
    from runtime.config import parse_train_config

    return parse_train_config({"model_name_or_path": "m", "dataset": "d", **keys}, key_prefix="train.")


def test_loss_keys_have_llama_factory_defaults() -> None:
    cfg = _parse(stage="kto")
    assert (cfg.pref_beta, cfg.pref_ftx, cfg.kto_chosen_weight, cfg.kto_rejected_weight) == (
        0.1,
        0.0,
        1.0,
        1.0,
    )
    assert (cfg.simpo_gamma, cfg.dpo_label_smoothing, cfg.asft_alpha, cfg.eaft_alpha) == (0.5, 0.0, 0.1, 1.0)
    assert not (cfg.use_dft_loss or cfg.use_asft_loss or cfg.use_eaft_loss)
    for pref_loss in ("sigmoid", "hinge", "ipo", "kto_pair", "orpo", "simpo"):
        assert _parse(stage="dpo", pref_loss=pref_loss).pref_loss == pref_loss


@pytest.mark.parametrize(
    ("keys", "error"),
    [
        (
            {"stage": "dpo", "pref_loss": "bco"},
            "train.pref_loss: must be one of sigmoid, hinge, ipo, kto_pair",
        ),
        (
            {"stage": "dpo", "pref_loss": "hinge", "dpo_label_smoothing": 0.1},
            "train.dpo_label_smoothing: only applies to pref_loss sigmoid",
        ),
        ({"dpo_label_smoothing": 0.5}, "train.dpo_label_smoothing: must be in [0, 0.5)"),
        (
            {"use_dft_loss": True, "use_eaft_loss": True},
            "train.use_eaft_loss: use_dft_loss and use_eaft_loss",
        ),
        ({"stage": "kto", "kto_rejected_weight": -1}, "train.kto_rejected_weight: must be >= 0"),
        ({"stage": "kto", "packing": True}, "train.packing: only pt and sft pack examples"),
    ],
)
def test_loss_keys_refused_in_one_line(keys: dict, error: str) -> None:
    from runtime.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        _parse(**keys)
    assert str(caught.value).startswith(error) and "\n" not in str(caught.value)


def test_loss_keys_of_another_stage_are_noted() -> None:
    notes = "\n".join(_parse(stage="sft", use_dft_loss=False, kto_chosen_weight=2.0, simpo_gamma=1.0).notes)
    assert "train.kto_chosen_weight ignored: stage is sft" in notes
    assert "train.simpo_gamma ignored: stage is sft" in notes
    assert "train.use_dft_loss" not in notes
    notes = "\n".join(_parse(stage="dpo", pref_loss="simpo", ref_model="r").notes)
    assert "train.ref_model ignored: pref_loss simpo uses no reference model" in notes
    assert not _parse(stage="kto", ref_model="r", pref_ftx=0.1).notes
    assert not _parse(stage="sft", use_asft_loss=True, ref_model="r", asft_alpha=0.2).notes


def test_kto_needs_its_label_column(data_cfg, tiny_tokenizer) -> None:
    from runtime.config import ConfigError
    from runtime.data import build_datasets

    with pytest.raises(ConfigError, match="stage kto needs a boolean label column: set columns.kto_tag"):
        build_datasets(data_cfg(dataset="tiny_sharegpt"), tiny_tokenizer, stage="kto")
    with pytest.raises(ConfigError, match=r"KTO data \(columns.kto_tag\) is for stage kto, not sft"):
        build_datasets(data_cfg(dataset="reverse_kto"), tiny_tokenizer, stage="sft")


# LLaMA-Factory's own KTO and extras/ loss examples (examples/train_lora/llama3_lora_kto.yaml,
# examples/extras/dft/qwen2_full_sft.yaml, examples/extras/eaft/qwen25_05b_eaft_full.yaml), paths swapped.
@pytest.mark.parametrize(
    "name", ["llama3_lora_kto.yaml", "qwen2_full_sft_dft.yaml", "qwen25_05b_eaft_full.yaml"]
)
def test_lf_loss_examples_train_and_reload(name: str, tiny_dir: Path, tmp_path: Path, capsys) -> None:
    from test_lf_examples import _materialise, _saved

    path, out = _materialise(name, tiny_dir, tmp_path)
    assert run_inprocess(path) == 0
    _saved(out, capsys.readouterr().out)
    if name.startswith("llama3_lora"):
        from trainer_harness import reload_adapter

        model = reload_adapter(tiny_dir / "model", out)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=torch.tensor([[5, 6, 7]])).logits).all()
