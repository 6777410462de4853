"""One module per training stage (pt, sft, rm, dpo, kto), each readable top to bottom: setup → train → save.

RUNNERS is the one table from a `stage` value to the function that runs it. Each entry imports its stage
module when called, so a run loads only its own stage's code (and its trainer's imports).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runtime.stages.recipe import RunContext


def text_model_only(ctx: RunContext) -> None:
    """A stage runtime/mm does not train stops here, before the model loads, on a vision-language model."""
    from runtime.mm.families import vision_model_type

    kind = vision_model_type(ctx.cfg.model_name_or_path)
    if kind:
        from runtime.mm.data import refuse_stage

        refuse_stage(kind, ctx.cfg.stage)


def run_pt(ctx: RunContext) -> None:
    text_model_only(ctx)
    from runtime.stages import pt

    pt.run(ctx)


def run_sft(ctx: RunContext) -> None:
    from runtime.mm.data import vision_family

    if vision_family(ctx.cfg):  # a Qwen vision-language model: image rows (runtime/mm uses sft's trainer)
        from runtime.mm.stage import run as run_vision

        run_vision(ctx)
        return
    from runtime.stages import sft

    sft.run(ctx)


def run_rm(ctx: RunContext) -> None:
    text_model_only(ctx)
    from runtime.stages import rm

    rm.run(ctx)


def run_dpo(ctx: RunContext) -> None:
    from runtime.mm.data import vision_family

    if vision_family(ctx.cfg):  # image preference rows (runtime/mm uses dpo's trainer)
        from runtime.mm.stage import run as run_vision

        run_vision(ctx)
        return
    from runtime.stages import dpo

    dpo.run(ctx)


def run_kto(ctx: RunContext) -> None:
    text_model_only(ctx)
    from runtime.stages import kto

    kto.run(ctx)


# stage -> its runner; the keys are runtime.config's STAGES (tests/runtime/stages/test_stages.py checks).
RUNNERS: dict[str, Callable[[RunContext], None]] = {
    "pt": run_pt,
    "sft": run_sft,
    "rm": run_rm,
    "dpo": run_dpo,
    "kto": run_kto,
}
