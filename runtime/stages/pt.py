"""Pre-training: raw text concatenated into cutoff_len blocks, loss on every token."""

from __future__ import annotations

from runtime.fit.trainer import XgenTrainer
from runtime.stages.recipe import RunContext, run_recipe

STAGE = "pt"


def run(ctx: RunContext) -> None:
    run_recipe(ctx, stage=STAGE, trainer_cls=XgenTrainer)
