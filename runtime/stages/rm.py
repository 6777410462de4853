"""Reward modelling: a one-output sequence classifier trained so chosen scores above rejected.

Loss is the pairwise -log σ(r_chosen − r_rejected) (InstructGPT); accuracy is the share of
pairs ranked correctly. Batches hold the chosen rows first, then the rejected ones.
"""

from __future__ import annotations

import torch.nn.functional as F

from runtime.fit.trainer import PairwisePredictionMixin, XgenTrainer
from runtime.stages.recipe import RunContext, run_recipe

STAGE = "rm"


class RewardTrainer(PairwisePredictionMixin, XgenTrainer):
    # A mean over pairs, not a token sum over num_items_in_batch: Trainer must divide it by the
    # accumulation steps (it would not, since the model's forward accepts loss kwargs).
    loss_is_scaled_for_ga = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
        rewards = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        chosen, rejected = rewards.squeeze(-1).float().chunk(2)
        loss = -F.logsigmoid(chosen - rejected).mean()
        self.store_metrics(
            {
                "accuracy": (chosen > rejected).float(),
                "rewards/chosen": chosen,
                "rewards/rejected": rejected,
                "rewards/margins": chosen - rejected,
            }
        )
        return (loss, {"rewards": rewards}) if return_outputs else loss


def run(ctx: RunContext) -> None:
    run_recipe(ctx, stage=STAGE, trainer_cls=RewardTrainer)
