"""`fused_lora` (runtime/levers/fused_lora.py): a LoRA layer as one autograd node (frozen base + adapter) or,
where
that cannot hold, the adapter's update inside one addmm, gives peft's logits and adapter gradients; DoRA,
disabled and merged adapters keep peft's own forward."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from runtime.levers.fused_lora import apply_lora_addmm  # noqa: E402


def lora_model(small_llama, r=8, lora_alpha=16, model_config=None, **lora):
    from peft import LoraConfig, get_peft_model

    base = small_llama(**(model_config or {}))
    model = get_peft_model(base, LoraConfig(r=r, lora_alpha=lora_alpha, target_modules="all-linear", **lora))
    with torch.no_grad():  # lora_B starts at zero: give it values so the update is really added
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return model


IDS = torch.randint(0, 97, (2, 13), generator=torch.Generator().manual_seed(1))


def loss_and_grads(model):
    torch.manual_seed(7)  # the same dropout masks for both models where dropout is on
    out = model(input_ids=IDS, labels=IDS)
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return out.logits.detach(), grads


def backward_nodes(model) -> set[str]:
    """The autograd node types that the q_proj of layer 0 returns its output through."""
    seen: set[str] = set()
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    handle = layer.register_forward_hook(lambda m, i, out: seen.add(type(out.grad_fn).__name__))
    model(input_ids=IDS, labels=IDS)
    handle.remove()
    return seen


def assert_same(plain, fused, tolerance=1e-5) -> None:
    (a, ga), (b, gb) = loss_and_grads(plain), loss_and_grads(fused)
    assert (a - b).abs().max().item() < tolerance
    assert ga.keys() == gb.keys() and len(ga) == 2 * 7 * 2  # A and B of 7 layers in each of 2 blocks
    for name in ga:
        assert (ga[name] - gb[name]).abs().max().item() < tolerance, name
    assert max(g.abs().max().item() for g in gb.values() if g is not None) > 1e-3  # gradients are not zero


@pytest.mark.parametrize(
    ("r", "lora_alpha", "model_config"),
    [(8, 16, None), (6, 7, None), (8, 16, {"attention_bias": True})],
    ids=["scale-2", "scale-7/6", "frozen-bias"],
)
def test_one_node_gives_peft_s_logits_and_gradients(small_llama, r, lora_alpha, model_config) -> None:
    plain = lora_model(small_llama, r, lora_alpha, model_config)
    fused = lora_model(small_llama, r, lora_alpha, model_config)
    assert apply_lora_addmm(fused) == 2 * 7  # q k v o gate up down in each of the two layers
    assert backward_nodes(fused) == {"FrozenBaseLoraBackward"}
    assert_same(plain, fused)
    with fused.disable_adapter(), torch.no_grad():  # disabled: the base model's logits, as peft gives them
        base = fused(input_ids=IDS).logits
    with plain.disable_adapter(), torch.no_grad():
        assert (base - plain(input_ids=IDS).logits).abs().max().item() < 1e-6
    assert (base - fused(input_ids=IDS).logits).abs().max().item() > 1e-3  # the adapters change the logits


def test_lora_dropout_takes_the_addmm_path_with_the_same_masks(small_llama) -> None:
    plain = lora_model(small_llama, lora_dropout=0.1)
    fused = lora_model(small_llama, lora_dropout=0.1)
    apply_lora_addmm(fused)
    assert backward_nodes(fused) == {"ViewBackward0"}  # addmm's output, viewed back to [batch, seq, out]
    assert_same(plain, fused)


def test_trained_base_weight_takes_the_addmm_path(small_llama) -> None:
    """A base layer whose weight trains (a config that unfreezes it) gets its gradient from autograd."""
    plain, fused = lora_model(small_llama), lora_model(small_llama)
    for model in (plain, fused):
        model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight.requires_grad_(True)
    apply_lora_addmm(fused)
    assert backward_nodes(fused) == {"ViewBackward0"}
    (_, ga), (_, gb) = loss_and_grads(plain), loss_and_grads(fused)
    name = next(n for n in ga if n.endswith("layers.0.self_attn.q_proj.base_layer.weight"))
    assert gb[name] is not None and (ga[name] - gb[name]).abs().max().item() < 1e-5


def test_dora_keeps_peft_s_forward(small_llama) -> None:
    plain, fused = lora_model(small_llama, use_dora=True), lora_model(small_llama, use_dora=True)
    apply_lora_addmm(fused)  # patched, but every call takes peft's own DoRA branch
    (a, ga), (b, gb) = loss_and_grads(plain), loss_and_grads(fused)
    assert (a - b).abs().max().item() == 0.0
    assert all(torch.equal(ga[name], gb[name]) for name in ga)
