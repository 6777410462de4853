"""Supervised fine-tuning: chat examples, loss on the response tokens only (prompt labels = -100)."""

from __future__ import annotations

from runtime.stages.common import RunContext, run_recipe
from runtime.trainer import XgenTrainer

STAGE = "sft"


def run(ctx: RunContext) -> None:
    run_recipe(ctx, stage=STAGE, trainer_cls=XgenTrainer)
