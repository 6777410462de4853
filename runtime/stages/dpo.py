"""Direct preference optimisation with LLaMA-Factory's `pref_loss` choices.

With policy log-ratios r_c = log π(y_c) − log π_ref(y_c), r_r likewise, and z = r_c − r_r:

    sigmoid   −log σ(β z)                                  DPO (Rafailov et al. 2023), eq. 7;
              label smoothing ε: −(1−ε) log σ(β z) − ε log σ(−β z) (conservative DPO)
    hinge     max(0, 1 − β z)                              SLiC (Zhao et al. 2023)
    ipo       (z − 1/(2β))²   on per-token average logps   IPO (Azar et al. 2023), eq. 17
    kto_pair  1 − σ(β (r_c − KL_r)) and 1 − σ(β (KL_c − r_r)), KL_x = mean(r_x) clamped at 0
              (the chosen half's KL estimated from the rejected half and back; HALOs eq. 7, trl 0.8)
    orpo      −log p(y_c) − β log σ(log odds(y_c) − log odds(y_r)), odds(y) = p/(1−p), on average
              logps, no reference (ORPO, Hong et al. 2024, eq. 6)
    simpo     −log σ(β (avg log π(y_c) − avg log π(y_r)) − γ), no reference (SimPO, Meng et al. 2024)

Sequence log-probabilities are summed over response tokens (labels ≠ -100), or averaged per token
for ipo, orpo and simpo, as LLaMA-Factory does. Rewards (logged, and used for the accuracy) are
β · r for losses with a reference and β · log π for orpo/simpo. `pref_ftx` adds ftx · (−average
log π(y_c)). The loss is a mean over pairs, so the Trainer divides it by the accumulation steps.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from runtime.config import TrainConfig
from runtime.config.schema import REFERENCE_FREE_LOSSES
from runtime.data import build_collator
from runtime.fit.trainer import PairwisePredictionMixin, XgenTrainer
from runtime.model import build_model, load_tokenizer
from runtime.stages.recipe import RunContext, fit, load_datasets, make_trainer, save_outputs
from runtime.stages.reference import ReferenceMixin, load_reference, sequence_logps

STAGE = "dpo"
AVERAGED_LOSSES = ("ipo", "orpo", "simpo")  # on per-token average log-probabilities


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − exp(x)) for x < 0, stable near 0 and for very negative x (Mächler 2012)."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def preference_loss(
    loss_type: str,
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor | None,
    ref_rejected: torch.Tensor | None,
    *,
    beta: float,
    simpo_gamma: float = 0.5,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-example losses, chosen rewards, rejected rewards) from sequence log-probs (see module doc)."""
    if loss_type == "orpo":
        log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))
        losses = -chosen - beta * F.logsigmoid(log_odds)
        return losses, beta * chosen.detach(), beta * rejected.detach()
    if loss_type == "simpo":
        losses = -F.logsigmoid(beta * (chosen - rejected) - simpo_gamma)
        return losses, beta * chosen.detach(), beta * rejected.detach()
    assert ref_chosen is not None and ref_rejected is not None, f"{loss_type} needs reference log-probs"
    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
    z = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * z) * (1 - label_smoothing) - F.logsigmoid(-beta * z) * label_smoothing
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * z)
    elif loss_type == "ipo":
        losses = (z - 1 / (2 * beta)) ** 2
    elif loss_type == "kto_pair":
        chosen_kl = chosen_ratio.mean().clamp(min=0)
        rejected_kl = rejected_ratio.mean().clamp(min=0)
        losses = torch.cat(
            (
                1 - torch.sigmoid(beta * (chosen_ratio - rejected_kl)),
                1 - torch.sigmoid(beta * (chosen_kl - rejected_ratio)),
            )
        )
    else:
        raise ValueError(f"unknown pref_loss {loss_type!r}")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


class DPOTrainer(ReferenceMixin, PairwisePredictionMixin, XgenTrainer):
    # The loss is a mean over pairs, not a sum over num_items_in_batch tokens: Trainer must divide it
    # by the accumulation steps (it would not, since Llama's forward accepts loss kwargs).
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        *args: Any,
        ref_model: Any = None,
        beta: float,
        ftx: float,
        loss_type: str = "sigmoid",
        simpo_gamma: float = 0.5,
        label_smoothing: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.beta, self.ftx, self.loss_type = beta, ftx, loss_type
        self.simpo_gamma, self.label_smoothing = simpo_gamma, label_smoothing
        self.setup_reference(ref_model, needed=loss_type not in REFERENCE_FREE_LOSSES)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
        logps, lengths = sequence_logps(model, inputs)
        average = logps / lengths.clamp(min=1)
        if self.loss_type in AVERAGED_LOSSES:
            logps = average
        chosen, rejected = logps.chunk(2)
        ref_chosen = ref_rejected = None
        if self.needs_reference:
            with self.reference(model) as ref:
                ref_logps, ref_lengths = sequence_logps(ref, inputs)
            if self.loss_type in AVERAGED_LOSSES:
                ref_logps = ref_logps / ref_lengths.clamp(min=1)
            ref_chosen, ref_rejected = ref_logps.chunk(2)
        losses, chosen_rewards, rejected_rewards = preference_loss(
            self.loss_type,
            chosen,
            rejected,
            ref_chosen,
            ref_rejected,
            beta=self.beta,
            simpo_gamma=self.simpo_gamma,
            label_smoothing=self.label_smoothing,
        )
        loss = losses.mean()
        if self.ftx:
            loss = loss + self.ftx * (-average.chunk(2)[0]).mean()
        self.store_metrics(
            {
                "rewards/chosen": chosen_rewards,
                "rewards/rejected": rejected_rewards,
                "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
                "rewards/margins": chosen_rewards - rejected_rewards,
                "logps/chosen": chosen.detach(),
                "logps/rejected": rejected.detach(),
            }
        )
        return (loss, {}) if return_outputs else loss


def trainer_options(cfg: TrainConfig, device: str, tokenizer: Any) -> dict[str, Any]:
    """DPOTrainer's keyword arguments from the config, the reference model loaded (None for orpo/simpo
    and LoRA's own base); shared with the vision-language runner (runtime/mm/stage.py)."""
    return {
        "ref_model": load_reference(cfg, device, tokenizer),
        "beta": cfg.pref_beta,
        "ftx": cfg.pref_ftx,
        "loss_type": cfg.pref_loss,
        "simpo_gamma": cfg.simpo_gamma,
        "label_smoothing": cfg.dpo_label_smoothing,
    }


def run(ctx: RunContext) -> None:
    # --- setup ---
    cfg = ctx.cfg
    tokenizer = load_tokenizer(cfg)
    data = load_datasets(ctx, tokenizer, stage=STAGE)
    model = build_model(cfg, stage=STAGE, device=ctx.device, tokenizer=tokenizer)
    collator = build_collator(cfg, tokenizer, stage=STAGE)
    trainer = make_trainer(
        DPOTrainer,
        ctx,
        model=model,
        tokenizer=tokenizer,
        data=data,
        collator=collator,
        **trainer_options(cfg, ctx.device, tokenizer),
    )
    # --- train ---
    metrics = fit(trainer, ctx)
    if ctx.preempted:
        return
    # --- save ---
    save_outputs(trainer, ctx, tokenizer, metrics)
