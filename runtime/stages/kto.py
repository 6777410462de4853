"""Kahneman-Tversky optimisation: unpaired desirable/undesirable replies against a frozen reference.

KTO paper (Ethayarajh et al. 2024), eq. 7, as trl's KTOTrainer and LLaMA-Factory compute it: with
r = log π(y|x) − log π_ref(y|x) (sums over reply tokens) and a reference point

    z0 = max(0, mean over the batch of log π(y'|x) − log π_ref(y'|x))

estimated from mismatched pairs (each prompt with another row's reply, built at tokenisation, no
gradient, averaged over all ranks), the per-example losses are

    desirable (label true):    kto_chosen_weight   · (1 − σ(β (r − z0)))
    undesirable (label false): kto_rejected_weight · (1 − σ(β (z0 − r)))

and the loss is their mean. `pref_ftx` adds LLaMA-Factory's ftx · mean(−average log π(y)) over the
desirable rows, times rows/desirable rows.
"""

from __future__ import annotations

from typing import Any

import torch

from runtime.data import build_collator
from runtime.fit.trainer import PairwisePredictionMixin, XgenTrainer
from runtime.model import build_model, load_tokenizer
from runtime.stages.recipe import RunContext, fit, load_datasets, make_trainer, save_outputs
from runtime.stages.reference import ReferenceMixin, load_reference, sequence_logps

STAGE = "kto"


def kto_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    kl: torch.Tensor,
    *,
    beta: float,
    chosen_weight: float = 1.0,
    rejected_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-example losses: desirable then undesirable, chosen rewards, rejected rewards); kl is z0."""
    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
    losses = torch.cat(
        (
            chosen_weight * (1 - torch.sigmoid(beta * (chosen_ratio - kl))),
            rejected_weight * (1 - torch.sigmoid(beta * (kl - rejected_ratio))),
        )
    )
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


class KTOTrainer(ReferenceMixin, PairwisePredictionMixin, XgenTrainer):
    loss_is_scaled_for_ga = False  # a mean over rows: Trainer divides by the accumulation steps

    def __init__(
        self,
        *args: Any,
        ref_model: Any = None,
        beta: float,
        ftx: float,
        chosen_weight: float,
        rejected_weight: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.beta, self.ftx = beta, ftx
        self.chosen_weight, self.rejected_weight = chosen_weight, rejected_weight
        self.setup_reference(ref_model, needed=True)

    def _reference_point(
        self, model: Any, inputs: dict[str, torch.Tensor], ref_kl: torch.Tensor
    ) -> torch.Tensor:
        """z0: the policy/reference log-ratio of the mismatched pairs, averaged over every rank."""
        with torch.no_grad():
            kl_logps = sequence_logps(model, inputs, prefix="kl_")[0]
            kl = (kl_logps - ref_kl).mean().reshape(1)
            return self.accelerator.gather(kl).mean().clamp(min=0)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
        tags = inputs["kto_tags"].bool()
        logps, lengths = sequence_logps(model, inputs)
        with self.reference(model) as ref:
            ref_logps = sequence_logps(ref, inputs)[0]
            ref_kl = sequence_logps(ref, inputs, prefix="kl_")[0]
        kl = self._reference_point(model, inputs, ref_kl)
        losses, chosen_rewards, rejected_rewards = kto_loss(
            logps[tags],
            logps[~tags],
            ref_logps[tags],
            ref_logps[~tags],
            kl,
            beta=self.beta,
            chosen_weight=self.chosen_weight,
            rejected_weight=self.rejected_weight,
        )
        loss = losses.mean()
        num_chosen = int(tags.sum())
        if self.ftx and num_chosen:  # LLaMA-Factory's rescaling: per desirable row, times batch rows
            average = logps[tags] / lengths[tags].clamp(min=1)
            loss = loss + self.ftx * (-average).mean() / num_chosen * len(tags)
        self._store_kto_metrics(chosen_rewards, rejected_rewards, logps.detach(), tags, kl)
        return (loss, {}) if return_outputs else loss

    def _store_kto_metrics(
        self,
        chosen_rewards: torch.Tensor,
        rejected_rewards: torch.Tensor,
        logps: torch.Tensor,
        tags: torch.Tensor,
        kl: torch.Tensor,
    ) -> None:
        """Means over every rank's desirable / undesirable rows (ranks hold different counts of each)."""
        sums = torch.stack(
            [
                chosen_rewards.sum(),
                rejected_rewards.sum(),
                logps[tags].sum(),
                logps[~tags].sum(),
                tags.sum().float(),
                (~tags).sum().float(),
            ]
        ).float()
        total = self.accelerator.gather(sums.reshape(1, -1)).sum(0).tolist()
        split = "train" if self.model.training else "eval"
        metrics = self._metrics[split]
        metrics["kl"].append(float(kl))
        if total[4]:
            metrics["rewards/chosen"].append(total[0] / total[4])
            metrics["logps/chosen"].append(total[2] / total[4])
        if total[5]:
            metrics["rewards/rejected"].append(total[1] / total[5])
            metrics["logps/rejected"].append(total[3] / total[5])
        if total[4] and total[5]:
            metrics["rewards/margins"].append(total[0] / total[4] - total[1] / total[5])


def run(ctx: RunContext) -> None:
    # --- setup ---
    cfg = ctx.cfg
    tokenizer = load_tokenizer(cfg)
    data = load_datasets(ctx, tokenizer, stage=STAGE)
    model = build_model(cfg, stage=STAGE, device=ctx.device, tokenizer=tokenizer)
    ref_model = load_reference(cfg, ctx.device, tokenizer)  # None with LoRA: the adapter-disabled base
    collator = build_collator(cfg, tokenizer, stage=STAGE)
    trainer = make_trainer(
        KTOTrainer,
        ctx,
        model=model,
        tokenizer=tokenizer,
        data=data,
        collator=collator,
        ref_model=ref_model,
        beta=cfg.pref_beta,
        ftx=cfg.pref_ftx,
        chosen_weight=cfg.kto_chosen_weight,
        rejected_weight=cfg.kto_rejected_weight,
    )
    # --- train ---
    metrics = fit(trainer, ctx)
    if ctx.preempted:
        return
    # --- save ---
    save_outputs(trainer, ctx, tokenizer, metrics)
