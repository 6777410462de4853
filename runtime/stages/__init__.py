"""One module per training stage (pt, sft, rm, dpo, kto), each readable top to bottom: setup → train → save.

RUNNERS is the one table from a `stage` value to the function that runs it. Each entry imports its stage
module when called, so a run loads only its own stage's code (and its trainer's imports).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runtime.stages.recipe import RunContext


def ran_vision(ctx: RunContext) -> bool:
    """A Qwen vision-language model trains in runtime/mm (sft and dpo, with those stages' trainers), and
    True is returned; runtime.mm.data.vision_family refuses its other stages, and a wrong template, before
    the model loads. False: a text model, for the stage's own module."""
    from runtime.mm.data import vision_family

    if not vision_family(ctx.cfg):
        return False
    from runtime.mm.stage import run as run_vision

    run_vision(ctx)
    return True


def run_pt(ctx: RunContext) -> None:
    if ran_vision(ctx):
        return
    from runtime.stages import pt

    pt.run(ctx)


def run_sft(ctx: RunContext) -> None:
    if ran_vision(ctx):
        return
    from runtime.stages import sft

    sft.run(ctx)


def run_rm(ctx: RunContext) -> None:
    if ran_vision(ctx):
        return
    from runtime.stages import rm

    rm.run(ctx)


def run_dpo(ctx: RunContext) -> None:
    if ran_vision(ctx):
        return
    from runtime.stages import dpo

    dpo.run(ctx)


def run_kto(ctx: RunContext) -> None:
    if ran_vision(ctx):
        return
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
