"""Pre-training: raw text concatenated into cutoff_len blocks, loss on every token."""

from __future__ import annotations

from runtime.stages.recipe import RunContext, run_recipe
from runtime.trainer import XgenTrainer

STAGE = "pt"


def run(ctx: RunContext) -> None:
    run_recipe(ctx, stage=STAGE, trainer_cls=XgenTrainer)
