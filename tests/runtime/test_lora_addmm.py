"""`fused_lora` (runtime/lora_addmm.py): peft's LoRA update added inside one addmm gives the same logits
and adapter gradients; DoRA, disabled and merged adapters keep peft's own forward."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from runtime.lora_addmm import apply_lora_addmm  # noqa: E402


def lora_model(small_llama, **lora):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(small_llama(), LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", **lora))
    with torch.no_grad():  # lora_B starts at zero: give it values so the update is really added
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return model


IDS = torch.randint(0, 97, (2, 13), generator=torch.Generator().manual_seed(1))


def loss_and_grads(model):
    out = model(input_ids=IDS, labels=IDS)
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return out.logits.detach(), grads


def test_addmm_forward_gives_peft_s_logits_and_gradients(small_llama) -> None:
    plain, fused = lora_model(small_llama), lora_model(small_llama)
    assert apply_lora_addmm(fused) == 2 * 7  # q k v o gate up down in each of the two layers
    (a, ga), (b, gb) = loss_and_grads(plain), loss_and_grads(fused)
    assert (a - b).abs().max().item() < 1e-5
    assert ga.keys() == gb.keys() and len(ga) == 2 * 7 * 2
    for name in ga:
        assert (ga[name] - gb[name]).abs().max().item() < 1e-5, name
    with fused.disable_adapter(), torch.no_grad():  # disabled: the base model's logits, as peft gives them
        base = fused(input_ids=IDS).logits
    with plain.disable_adapter(), torch.no_grad():
        assert (base - plain(input_ids=IDS).logits).abs().max().item() < 1e-6
    assert (base - b).abs().max().item() > 1e-3  # and the adapters did change the logits


def test_dora_keeps_peft_s_forward(small_llama) -> None:
    plain, fused = lora_model(small_llama, use_dora=True), lora_model(small_llama, use_dora=True)
    apply_lora_addmm(fused)  # patched, but every call takes peft's own DoRA branch
    (a, ga), (b, gb) = loss_and_grads(plain), loss_and_grads(fused)
    assert (a - b).abs().max().item() == 0.0
    assert all(torch.equal(ga[name], gb[name]) for name in ga)
