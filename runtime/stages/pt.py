"""Pre-training: raw text concatenated into cutoff_len blocks, loss on every token."""

from __future__ import annotations

from runtime.data import build_collator
from runtime.model import build_model, load_tokenizer
from runtime.stages.common import RunContext, fit, load_datasets, make_trainer, save_outputs
from runtime.trainer import XgenTrainer

STAGE = "pt"


def run(ctx: RunContext) -> None:
    # --- setup ---
    tokenizer = load_tokenizer(ctx.cfg)
    data = load_datasets(ctx, tokenizer, stage=STAGE)
    model = build_model(ctx.cfg, stage=STAGE, device=ctx.device, tokenizer=tokenizer)
    collator = build_collator(ctx.cfg, tokenizer, stage=STAGE)
    trainer = make_trainer(XgenTrainer, ctx, model=model, tokenizer=tokenizer, data=data, collator=collator)
    # --- train ---
    metrics = fit(trainer, ctx)
    if ctx.preempted:
        return
    # --- save ---
    save_outputs(trainer, ctx, tokenizer, metrics)
