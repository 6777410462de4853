"""`fused_cross_entropy` (runtime/cross_entropy.py): the same sum and gradient as torch's cross-entropy."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from runtime.cross_entropy import cross_entropy_sum  # noqa: E402


def _loss_and_grad(fn, logits: torch.Tensor, targets: torch.Tensor, scale: float):
    leaf = logits.clone().requires_grad_()
    loss = fn(leaf, targets)
    (loss * scale).backward()  # a non-unit upstream gradient, as Trainer's / num_items_in_batch gives
    return loss.detach(), leaf.grad


def _torch_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, targets, reduction="sum")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sum_and_gradient_equal_torch(dtype) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(37, 101, generator=generator, dtype=dtype) * 4
    targets = torch.randint(0, 101, (37,), generator=generator)
    want, want_grad = _loss_and_grad(_torch_sum, logits, targets, scale=1 / 29)
    got, got_grad = _loss_and_grad(cross_entropy_sum, logits, targets, scale=1 / 29)
    assert torch.allclose(got, want, rtol=1e-6) and torch.allclose(got_grad, want_grad, atol=1e-7)
    assert got_grad.shape == logits.shape and got_grad.dtype == dtype


def test_stays_finite_where_the_target_probability_underflows() -> None:
    """exp(-200) is 0 in fp32, so -log p_t would be inf; torch gives ~200, and so must this."""
    logits = torch.zeros(2, 50)
    logits[:, 0] = 200.0  # every row's mass on class 0
    targets = torch.tensor([3, 0])
    want, want_grad = _loss_and_grad(_torch_sum, logits, targets, scale=1.0)
    got, got_grad = _loss_and_grad(cross_entropy_sum, logits, targets, scale=1.0)
    assert torch.isfinite(got) and abs(got.item() - want.item()) < 1e-4 and 199 < got.item() < 201
    assert torch.allclose(got_grad, want_grad, atol=1e-6)


def test_no_trained_rows_give_zero_and_an_empty_gradient() -> None:
    loss, grad = _loss_and_grad(cross_entropy_sum, torch.zeros(0, 8), torch.zeros(0, dtype=torch.long), 1.0)
    assert loss.item() == 0.0 and grad.shape == (0, 8)


def test_a_second_backward_through_the_graph_says_what_to_do() -> None:
    """The probabilities become the gradient in place: a retain_graph second pass must not reuse them."""
    leaf = torch.randn(4, 6, requires_grad=True)
    loss = cross_entropy_sum(leaf, torch.tensor([0, 1, 2, 3]))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="fused_cross_entropy: backward ran twice"):
        loss.backward()
