"""Supervised fine-tuning: chat examples, loss on the response tokens only (prompt labels = -100).

Besides cross-entropy, LLaMA-Factory's SFT loss variants (formulas as its train/trainer_utils.py has
them; p_t = p_θ(y_t | y_<t, x) for each response token t, N response tokens, sg = no gradient):

    use_dft_loss    DFT (Wu et al. 2025): (1/N) Σ_t −sg(p_t) · log p_t
    use_eaft_loss   EAFT: (1/N) Σ_t −w_t · log p_t, w_t = sg(H_t / 3) ** eaft_alpha, H_t the entropy
                    of the softmax over the 20 largest logits (ln 20 ≈ 3, so w_t ≤ ~1)
    use_asft_loss   ASFT (Zhu et al. 2025): DFT + asft_alpha · (1/N) Σ_t KL(π_ref(·|t) ‖ π_θ(·|t)),
                    against the frozen reference (LoRA: the adapter switched off)

DFT and EAFT go through Trainer's `compute_loss_func`, so their token sums are divided by the tokens
of the whole accumulated batch on every rank, as cross-entropy is.

`label_logits_only` (runtime/perf/plan.py turns it on under perf auto): plain cross-entropy with the
lm_head run
only at the positions whose next token is trained. Prompt tokens are masked (-100), and at a small hidden
size the [tokens, hidden] x [hidden, vocab] projection and the softmax over the vocabulary are most of the
work, so skipping them for prompt tokens saves that share. Same loss (Trainer's per-token mean over the
optimizer step through compute_loss_func; test_perf.py checks loss and grads against the plain path).
transformers' `logits_to_keep` takes one index list for all rows; padding-free rows each need their own,
hence a forward pre-hook on the output embedding that selects the hidden states of those positions.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from runtime.data import attention_of, build_collator
from runtime.fit.predict import predict
from runtime.fit.trainer import XgenTrainer
from runtime.model import build_model, load_tokenizer
from runtime.stages.recipe import RunContext, fit, load_datasets, make_trainer, save_outputs
from runtime.stages.reference import ReferenceMixin, load_reference

STAGE = "sft"
IGNORE_INDEX = -100
EAFT_TOP_K = 20


def _token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token −log p_t of the response tokens, flat logits of those positions), next-token shifted."""
    logits = logits[:, :-1].float().reshape(-1, logits.size(-1))
    labels = labels[:, 1:].reshape(-1).to(logits.device)
    valid = labels != IGNORE_INDEX
    nll = F.cross_entropy(logits[valid], labels[valid], reduction="none")
    return nll, logits[valid]


def _reduce(weighted: torch.Tensor, num_items_in_batch: Any) -> torch.Tensor:
    if num_items_in_batch is None:
        return weighted.mean() if weighted.numel() else weighted.sum()
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(weighted.device)
    return weighted.sum() / num_items_in_batch


def dft_loss(logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
    nll, _ = _token_losses(logits, labels)
    return _reduce(nll * torch.exp(-nll).detach(), num_items_in_batch)


def eaft_loss(
    logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: Any = None, *, alpha: float = 1.0
) -> torch.Tensor:
    nll, valid_logits = _token_losses(logits, labels)
    with torch.no_grad():
        top = valid_logits.topk(min(EAFT_TOP_K, valid_logits.size(-1)), dim=-1).values
        log_probs = top.log_softmax(-1)
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        weight = (entropy / 3.0) ** alpha
    return _reduce(nll * weight, num_items_in_batch)


def asft_loss(
    logits: torch.Tensor, labels: torch.Tensor, ref_logits: torch.Tensor, *, alpha: float = 0.1
) -> torch.Tensor:
    nll, valid_logits = _token_losses(logits, labels)
    _, valid_ref = _token_losses(ref_logits, labels)
    dft = _reduce(nll * torch.exp(-nll).detach(), None)
    kl = F.kl_div(valid_logits.log_softmax(-1), valid_ref.float().softmax(-1), reduction="none").sum(-1)
    return dft + alpha * _reduce(kl, None)


class LabelLogits:
    """The lm_head at trained positions only: while `keep` (a bool [batch, seq] mask) is set, a forward
    pre-hook on the model's output embedding hands it hidden[keep] as one [1, N, hidden] row, so logits
    are [1, N, vocab] in row-major order of the mask. The hook runs inside the (DDP/FSDP/DeepSpeed-wrapped)
    model's own forward, so gradient sync and parameter gathering are untouched."""

    def __init__(self, model: Any) -> None:
        self.keep: torch.Tensor | None = None
        self.handle = model.get_output_embeddings().register_forward_pre_hook(self._select)

    def _select(self, module: Any, args: tuple) -> tuple | None:
        if self.keep is None:
            return None
        return (args[0][self.keep.to(args[0].device)].unsqueeze(0), *args[1:])

    @contextmanager
    def only_trained(self, labels: torch.Tensor) -> Iterator[None]:
        """Position t predicts labels[t + 1]: keep t where that label is trained (never the last one)."""
        keep = torch.zeros_like(labels, dtype=torch.bool)
        keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
        self.keep = keep
        try:
            yield
        finally:
            self.keep = None

    def loss(self, outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        """Trainer's compute_loss_func: transformers' ForCausalLMLoss (fp32 logits, sum / the step's
        trained tokens, or a mean without a count) on selected logits, or on full ones (evaluation)."""
        logits = outputs["logits"]
        targets = labels[:, 1:].to(logits.device)
        trained = targets != IGNORE_INDEX
        if logits.shape[:2] == labels.shape:  # not selected: the eval loop, or a caller outside fit
            logits = logits[:, :-1][trained]
        else:
            logits = logits[0]
        logits, targets = logits.float(), targets[trained]
        if num_items_in_batch is None:
            return F.cross_entropy(logits, targets)
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(logits.device)
        return F.cross_entropy(logits, targets, reduction="sum") / num_items_in_batch


def _from_outputs(loss_fn: Any) -> Any:
    """Trainer's compute_loss_func(outputs, labels, num_items_in_batch) around a loss on logits."""

    def compute(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        return loss_fn(outputs["logits"], labels, num_items_in_batch)

    return compute


class SFTTrainer(ReferenceMixin, XgenTrainer):
    """Cross-entropy (or DFT/EAFT through compute_loss_func); ASFT adds the reference's logits."""

    def __init__(
        self,
        *args: Any,
        ref_model: Any = None,
        asft_alpha: float | None = None,
        label_logits_only: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.asft_alpha = asft_alpha
        # A model without an output embedding to hook (none of the causal LMs we load) keeps full logits.
        head = self.model.get_output_embeddings() if label_logits_only else None
        self.label_logits = LabelLogits(self.model) if head is not None else None
        if self.label_logits is not None:
            self.compute_loss_func = self.label_logits.loss
        self.setup_reference(ref_model, needed=asft_alpha is not None)
        if asft_alpha is not None:
            self.loss_is_scaled_for_ga = False  # a mean over this micro-batch's tokens

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
        if self.asft_alpha is None and self.label_logits is not None and model.training:
            with self.label_logits.only_trained(inputs["labels"]):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.asft_alpha is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        with self.reference(model) as ref:
            ref_logits = ref(**model_inputs).logits
        outputs = model(**model_inputs)
        loss = asft_loss(outputs.logits, inputs["labels"], ref_logits, alpha=self.asft_alpha)
        return (loss, outputs) if return_outputs else loss


def loss_options(cfg: Any) -> dict[str, Any]:
    """The SFTTrainer keyword arguments for the configured SFT loss."""
    if cfg.use_dft_loss:
        return {"compute_loss_func": _from_outputs(dft_loss)}
    if cfg.use_eaft_loss:
        return {"compute_loss_func": _from_outputs(partial(eaft_loss, alpha=cfg.eaft_alpha))}
    if cfg.use_asft_loss:
        return {"asft_alpha": cfg.asft_alpha}
    if cfg.label_logits_only and not cfg.enable_liger_kernel:  # runtime.perf.plan decides; Liger fuses the CE
        return {"label_logits_only": True}
    return {}


def run(ctx: RunContext) -> None:
    # --- setup ---
    cfg = ctx.cfg
    tokenizer = load_tokenizer(cfg)
    data = load_datasets(ctx, tokenizer, stage=STAGE)
    model = build_model(cfg, stage=STAGE, device=ctx.device, tokenizer=tokenizer)
    if not cfg.do_train and cfg.do_predict:  # predict only: no Trainer; each rank's whole model
        predict(cfg, place_for_generation(model, ctx.args.device), tokenizer, data.eval)
        return
    ref_model = load_reference(
        cfg, ctx.device, tokenizer
    )  # ASFT only; None with LoRA (the adapter-disabled base)
    collator = build_collator(cfg, tokenizer, stage=STAGE, attention=attention_of(model))
    trainer = make_trainer(
        SFTTrainer,
        ctx,
        model=model,
        tokenizer=tokenizer,
        data=data,
        collator=collator,
        ref_model=ref_model,
        **loss_options(cfg),
    )
    # --- train ---
    metrics = fit(trainer, ctx)
    if ctx.preempted:
        return
    # --- save ---
    save_outputs(trainer, ctx, tokenizer, metrics)
    # --- predict ---
    if cfg.do_predict:  # with the trained model (the config rules refused FSDP and ZeRO-3)
        predict(cfg, trainer.model, tokenizer, data.eval)


def place_for_generation(model: Any, device: Any) -> Any:
    """The model on this rank's device (Trainer would have moved it); a quantised one is there already."""
    return model if getattr(model, "is_quantized", False) else model.to(device)
