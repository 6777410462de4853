"""`fused_rms_norm` (runtime/levers/fused_rms_norm.py): torch's F.rms_norm where it reproduces the model's own
RMSNorm, checked by logits and gradients; norms that compute something else are left alone."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from runtime.levers.fused_rms_norm import apply_fused_rms_norm, probe  # noqa: E402


def with_norm_weights(model):
    """Norms with weights other than ones, so a wrong formula shows."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def test_patched_llama_gives_the_same_logits_and_gradients(small_llama) -> None:
    plain, fused = with_norm_weights(small_llama()), with_norm_weights(small_llama())
    assert apply_fused_rms_norm(fused) == 2 * 2 + 1  # two per decoder layer and the final norm
    ids = torch.randint(0, 97, (2, 17), generator=torch.Generator().manual_seed(1))
    a, b = plain(input_ids=ids, labels=ids), fused(input_ids=ids, labels=ids)
    assert (a.logits - b.logits).abs().max().item() < 1e-5
    a.loss.backward()
    b.loss.backward()
    for (name, p), (_, q) in zip(plain.named_parameters(), fused.named_parameters(), strict=True):
        assert (p.grad - q.grad).abs().max().item() < 1e-5, name
    # the patch is really in use: the fused forward is what runs
    assert all(
        m.forward.__func__.__name__ == "_fused_forward"
        for m in fused.modules()
        if type(m).__name__.endswith("RMSNorm")
    )


def test_norms_that_compute_something_else_are_kept(small_llama) -> None:
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm

    gemma = GemmaRMSNorm(16)  # scales by (1 + weight): F.rms_norm with `weight` is another function
    assert probe(gemma) is False
    holder = torch.nn.Sequential(gemma)
    assert apply_fused_rms_norm(holder) == 0 and gemma.forward.__func__ is GemmaRMSNorm.forward
    half = with_norm_weights(small_llama()).to(
        torch.bfloat16
    )  # half-precision norms round differently: not patched
    assert apply_fused_rms_norm(half) == 0


def test_npu_kernels_patch_only_norms_npu_rms_norm_reproduces(small_llama) -> None:
    """use_v1_kernels on Ascend (runtime/levers/use_v1_kernels.py) probes each RMSNorm class the same way:
    Gemma's
    `1 + weight` norm keeps its forward (npu_rms_norm computes x / rms * weight)."""
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm

    from runtime.levers.use_v1_kernels import apply_npu_kernels

    gemma = GemmaRMSNorm(16)
    assert apply_npu_kernels(torch.nn.Sequential(gemma), ["rms_norm"]) == []
    assert gemma.forward.__func__ is GemmaRMSNorm.forward
    model = with_norm_weights(small_llama())
    assert apply_npu_kernels(model, ["rms_norm"]) == ["rms_norm x5"]
