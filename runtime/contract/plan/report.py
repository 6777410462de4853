"""The text `xgen plan` prints, and the line `xgen check` and the preflight say when a run does not fit."""

from __future__ import annotations

from runtime.contract.plan.choose import (
    HEADROOM,
    Candidate,
    candidates,
    change_line,
    communication,
    recommend,
    strategy_name,
)
from runtime.contract.plan.devices import GIB
from runtime.contract.plan.shape import Shape, total_params
from runtime.contract.plan.terms import Run, breakdown, peak


def gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def describe(run: Run) -> str:
    ckpt = "checkpointing" if run.checkpointing else "no checkpointing"
    return f"{strategy_name(run.strategy, run.offload)}, {ckpt}, micro-batch {run.micro_batch}"


def usable(memory: int) -> int:
    return int(memory * (1 - HEADROOM))


def _model_line(shape: Shape, run: Run) -> str:
    moe = f", {shape.experts} experts top-{shape.experts_per_token}" if shape.experts else ""
    quant = f", {run.quant_bits}-bit base" if run.quant_bits else ""
    return (
        f"model:    {shape.model_type} {total_params(shape) / 1e9:.2f} B parameters (H {shape.hidden}, "
        f"{shape.layers} layers, {shape.heads}/{shape.kv_heads} heads, I {shape.intermediate}, "
        f"V {shape.vocab}{', tied' if shape.tied else ''}{moe}); {run.method}{quant}, "
        f"{run.trainable / 1e6:.2f} M trainable"
    )


def _alternatives(cands: list[Candidate], memory: int | None, chosen: Candidate | None) -> list[str]:
    """One row per strategy x checkpointing: the largest micro-batch that fits (or the smallest's peak)."""
    rows = [f"  {'strategy':<18} {'ckpt':<5} {'micro-batch':>11} {'peak':>11} {'comm/step':>11}  fits"]
    groups: dict[tuple[str, bool, bool], list[Candidate]] = {}
    for c in cands:
        groups.setdefault((c.run.strategy, c.run.offload, c.run.checkpointing), []).append(c)
    for (strategy, offload, ckpt), group in groups.items():
        fitting = [c for c in group if c.fits]
        best = max(fitting, key=lambda c: c.run.micro_batch) if fitting else min(group, key=lambda c: c.peak)
        mark = "yes" if best.fits else ("?" if memory is None else "no")
        star = "  <- recommended" if chosen is not None and best is chosen else ""
        rows.append(
            f"  {strategy_name(strategy, offload):<18} {'on' if ckpt else 'off':<5} "
            f"{best.run.micro_batch:>11} {gib(best.peak):>11} {gib(best.communication):>11}  {mark}{star}"
        )
    return rows


def plan_text(shape: Shape, run: Run, memory: int | None, memory_label: str, accumulation: int) -> str:
    """Everything `xgen plan` prints: the terms of the configured run, the alternatives, the choice."""
    lines = [_model_line(shape, run)]
    lines.append(
        f"run:      {run.world} rank{'s' if run.world != 1 else ''}, {run.precision}"
        f"{' pure' if run.pure_bf16 else ''}, cutoff_len {run.seq}, "
        f"{'packed' if not run.padded else 'padded'}, {run.attention} attention, "
        f"gradient accumulation {accumulation}"
    )
    if memory is None:
        lines.append(
            f"device:   {memory_label}: fit not judged (set cluster.device_memory_gb or --device-memory)"
        )
    else:
        lines.append(
            f"device:   {memory_label}: {gib(memory)}, {gib(usable(memory))} usable ({HEADROOM:.0%} headroom)"
        )
    lines.append(f"\nconfigured: {describe(run)} (per device)")
    for term in breakdown(run):
        if term.bytes:
            lines.append(f"  {term.name:<24} {gib(term.bytes):>11}")
    p = peak(run)
    verdict = (
        ""
        if memory is None
        else ("  fits" if p <= usable(memory) else f"  does NOT fit (over by {gib(p - usable(memory))})")
    )
    lines.append(f"  {'peak':<24} {gib(p):>11}{verdict}")
    cands = candidates(run, memory, accumulation)
    chosen = recommend(cands)
    lines.append(
        "\nalternatives (largest micro-batch that fits; comm = bytes one rank sends per optimizer step):"
    )
    lines += _alternatives(cands, memory, chosen)
    if memory is None:
        lines.append("\nrecommended: needs the device memory (cluster.device_memory_gb or --device-memory)")
    elif chosen is None:
        lines.append("\nrecommended: nothing fits; use more devices, LoRA/QLoRA, or a shorter cutoff_len")
    else:
        lines.append(
            f"\nrecommended: {describe(chosen.run)} (peak {gib(chosen.peak)}, "
            f"comm {gib(chosen.communication)}/step)"
        )
        lines.append(f"change:      {change_line(run, chosen, accumulation)}")
    return "\n".join(lines) + "\n"


def misfit(run: Run, memory: int, accumulation: int) -> str | None:
    """None when the run fits `memory` with the headroom; else one line: what, by how much, what to change."""
    p = peak(run)
    if p <= usable(memory):
        return None
    chosen = recommend(candidates(run, memory, accumulation))
    fix = (
        change_line(run, chosen, accumulation)
        if chosen
        else "nothing on this cluster fits: more devices, LoRA/QLoRA or a shorter cutoff_len"
    )
    return (
        f"{describe(run)} needs {gib(p)} per device, over the {gib(usable(memory))} usable of {gib(memory)} "
        f"({HEADROOM:.0%} headroom) by {gib(p - usable(memory))}; change: {fix} (xgen plan shows the terms)"
    )


__all__ = ["communication", "describe", "gib", "misfit", "plan_text", "usable"]
