"""One lever on and off in the SAME process, step by step: its effect alone, measured above the noise.

    python bench/lever_ab.py                          # CPU shape: every lever of LEVERS in each mode
    python bench/lever_ab.py --modes full --levers cpu_allocator_cache,fused_adamw --pairs 40

Why not sft_throughput.py's lever rows: there each row is its own process, minutes apart, and on a shared
2-core machine two runs of the same variant differ by up to ±12 % (bench/README.md), more than the levers
measured here are worth. Here one model trains; before each step the lever is put on or taken off (the same
runtime functions that `fused_lora`/`fused_rms_norm` call; fused or foreach AdamW, each arm its own
optimizer state over the same weights), the two arms alternate A B, B A, ... over the SAME packed
micro-batches, so both see the same machine. Printed: tokens/s of each arm over all timed pairs, the ratio
on/off, and the ratio over each quarter of the pairs (its spread). A lever whose state is process-wide
(`cpu_allocator_cache`: one arm would leave its heap to the other) runs each arm in its own process instead,
A B / B A for `--process-pairs` pairs, and prints the ratio of each pair.

The step is the runtime's CPU sft step under perf auto: ONE padding-free row of `--tokens` real tokens
(examples of the bench's log-normal lengths, position ids restarting per example) through the
`sdpa_varlen` attention, the lm_head only at trained positions (`label_logits_only`), backward,
AdamW (foreach), with glibc malloc keeping freed blocks (`cpu_allocator_cache`) except in that lever's own
off arm. Both arms compute the same sums (tests/runtime/levers/test_fused_lora.py, test_fused_rms_norm.py).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from sft_throughput import PROMPT_FRACTION, SHAPES, Shape, llama_sizes, lora_config  # noqa: E402

sys.modules["bitsandbytes"] = None  # type: ignore[assignment]  # as `xgen-runtime train` does (unused_imports)

# lever -> the modes it applies to. fused_lora/fused_rms_norm: the runtime functions that put them on a
# model (apply_lever); fused_adamw: the step's optimizer (toggle); cpu_allocator_cache: see PROCESS_LEVERS.
LEVERS = {
    "fused_lora": ("lora",),
    "fused_rms_norm": ("full", "lora"),
    "fused_adamw": ("full",),
    "cpu_allocator_cache": ("full", "lora"),
}
# Process-wide state that one arm would leave to the other (the allocator's heap): each arm runs in its own
# process, arms alternating A B / B A (`--process-pairs`), every process the same steps over the same rows.
PROCESS_LEVERS = ("cpu_allocator_cache",)


def apply_lever(name: str, model: torch.nn.Module) -> int:
    if name == "fused_lora":
        from runtime.levers.fused_lora import apply_lora_addmm

        return apply_lora_addmm(model)
    from runtime.levers.fused_rms_norm import apply_fused_rms_norm

    return apply_fused_rms_norm(model)


def adamw(model: torch.nn.Module, fused: bool) -> torch.optim.Optimizer:
    """What Trainer builds for `adamw_torch` (foreach) / `adamw_torch_fused`."""
    trained = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(trained, lr=1e-5, **({"fused": True} if fused else {"foreach": True}))


def build(shape: Shape, mode: str) -> torch.nn.Module:
    """The bench's random-weight Llama of `shape` (fp32) on sdpa_varlen; LoRA as sft_throughput's (r16, every
    linear layer)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from runtime.levers import sdpa_varlen

    sdpa_varlen.register()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=shape.vocab, use_cache=False, **llama_sizes(shape))
    model = LlamaForCausalLM(config).float()
    model.config._attn_implementation = sdpa_varlen.NAME
    if mode == "lora":
        from peft import get_peft_model

        model = get_peft_model(model, lora_config())
        with torch.no_grad():  # lora_B starts at zero; trained adapters are not
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.02)
    return model.train()


def packed_rows(shape: Shape, tokens: int, count: int, seed: int = 0) -> list[tuple]:
    """`count` rows of whole examples (log-normal lengths as sft_throughput.generate_examples draws them)
    filled up to `tokens`: (input_ids [1, n], position_ids [1, n], labels [1, n]), prompt labels -100."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(count):
        lengths: list[int] = []
        while True:
            n = int(np.clip(rng.lognormal(math.log(shape.median_len), 0.6), 16, shape.max_len - 16))
            if sum(lengths) + n > tokens:
                break
            lengths.append(n)
        ids = torch.from_numpy(rng.integers(9, shape.vocab, size=sum(lengths)))[None]
        positions = torch.cat([torch.arange(n) for n in lengths])[None]
        labels, start = ids.clone(), 0
        for n in lengths:
            labels[0, start : start + max(1, int(n * PROMPT_FRACTION))] = -100
            start += n
        rows.append((ids, positions, labels))
    return rows


def train_step(model, step: dict, ids, positions, labels) -> None:
    """Forward, the lm_head at the trained positions only (runtime label_logits_only), backward, AdamW;
    step["optimizer"] is the arm's."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = causal_lm.model(input_ids=ids, position_ids=positions).last_hidden_state
    target = labels[:, 1:]
    keep = target != -100
    logits = causal_lm.lm_head(hidden[:, :-1][keep])
    F.cross_entropy(logits, target[keep]).backward()
    step["optimizer"].step()
    step["optimizer"].zero_grad(set_to_none=True)


def patched_modules(model) -> set[int]:
    return {id(m) for m in model.modules() if "forward" in vars(m)}


def toggle(model, lever: str, step: dict):
    """-> (on(), off(), modules patched): put the lever on / take it off: the step's optimizer, or the
    model's modules (each module's class forward again)."""
    if lever == "fused_adamw":  # each arm its own optimizer state over the same weights
        fused, foreach = adamw(model, fused=True), adamw(model, fused=False)
        return (lambda: step.update(optimizer=fused)), (lambda: step.update(optimizer=foreach)), 0
    before = patched_modules(model)
    count = apply_lever(lever, model)
    ours = [m for m in model.modules() if "forward" in vars(m) and id(m) not in before]
    if not count or len(ours) != count:
        raise SystemExit(f"{lever}: patched {count} modules, {len(ours)} found; nothing to compare")
    forwards = {id(m): vars(m)["forward"] for m in ours}

    def on() -> None:
        for m in ours:
            m.forward = forwards[id(m)]

    def off() -> None:
        for m in ours:
            vars(m).pop("forward", None)

    return on, off, count


def one_arm(shape: Shape, mode: str, lever: str, on: bool, args) -> dict:
    """A process lever's arm (`--one-arm`): the lever as the runtime sets it at start, or not at all,
    then warm-up and timed steps. -> {"tokens": real tokens timed, "seconds": their wall time,
    "faults_per_step": minor page faults per timed step, "max_rss_mb": the process's peak resident memory}."""
    if on:
        from runtime.levers.cpu_allocator_cache import keep_freed_blocks

        assert keep_freed_blocks(), "glibc's mallopt refused"
    model = build(shape, mode)
    if mode == "lora":
        from runtime.levers.fused_lora import apply_lora_addmm

        apply_lora_addmm(model)  # perf auto's CPU LoRA step
    step = {"optimizer": adamw(model, fused=False)}  # perf auto's CPU optimizer: adamw_torch (foreach)
    rows = packed_rows(shape, args.tokens, 8)
    tokens, seconds, faults = 0, 0.0, 0
    for i in range(args.warmup + args.pairs):
        row = rows[i % len(rows)]
        faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        train_step(model, step, *row)
        if i >= args.warmup:
            seconds += time.perf_counter() - start
            tokens += row[0].shape[1]
            faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before
    max_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024  # Linux: KiB
    return {
        "tokens": tokens,
        "seconds": seconds,
        "faults_per_step": faults // args.pairs,
        "max_rss_mb": max_rss_mb,
    }


def measure_processes(shape_name: str, mode: str, lever: str, args) -> dict:
    """A process lever on and off, each arm its own process, A B / B A for `--process-pairs` pairs. The
    headline is the ratio of the arms' totals; the median of the pairs' ratios sits beside it, since one
    disturbed process moves a total."""
    runs: dict[str, list[dict]] = {"on": [], "off": []}
    for i in range(args.process_pairs):
        for arm in ("on", "off") if i % 2 == 0 else ("off", "on"):
            command = [sys.executable, __file__, "--one-arm", arm, "--shape", shape_name, "--modes", mode,
                       "--levers", lever, "--tokens", str(args.tokens), "--pairs", str(args.pairs),
                       "--warmup", str(args.warmup)]  # fmt: skip
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            runs[arm].append(json.loads(out.strip().splitlines()[-1]))
    rate = {arm: sum(r["tokens"] for r in rs) / sum(r["seconds"] for r in rs) for arm, rs in runs.items()}
    by_pair = [
        round((on["tokens"] / on["seconds"]) / (off["tokens"] / off["seconds"]), 3)
        for on, off in zip(runs["on"], runs["off"], strict=True)
    ]
    return {
        "mode": mode,
        "lever": lever,
        "modules_patched": 0,
        "timed_steps_per_process": args.pairs,
        "processes_per_arm": args.process_pairs,
        "tokens_per_step": round(runs["on"][0]["tokens"] / args.pairs),
        "tokens_per_s_on": round(rate["on"]),
        "tokens_per_s_off": round(rate["off"]),
        "ratio_on_vs_off": round(rate["on"] / rate["off"], 3),
        "ratio_by_pair": by_pair,
        "median_of_pairs": round(statistics.median(by_pair), 3),
        "faults_per_step_on": max(r["faults_per_step"] for r in runs["on"]),
        "faults_per_step_off": min(r["faults_per_step"] for r in runs["off"]),
        "max_rss_mb_on": max(r["max_rss_mb"] for r in runs["on"]),
        "max_rss_mb_off": max(r["max_rss_mb"] for r in runs["off"]),
    }


def measure(shape: Shape, mode: str, lever: str, args) -> dict:
    model = build(shape, mode)
    step = {"optimizer": adamw(model, fused=False)}  # perf auto's CPU step: adamw_torch (foreach)
    on, off, patched = toggle(model, lever, step)
    rows = packed_rows(shape, args.tokens, 8)
    seconds = {"on": [], "off": []}
    tokens = []
    for i in range(args.warmup + args.pairs):
        row = rows[i % len(rows)]
        for arm in ("on", "off") if i % 2 == 0 else ("off", "on"):
            (on if arm == "on" else off)()
            start = time.perf_counter()
            train_step(model, step, *row)
            if i >= args.warmup:
                seconds[arm].append(time.perf_counter() - start)
        if i >= args.warmup:
            tokens.append(row[0].shape[1])
    rate = {arm: sum(tokens) / sum(seconds[arm]) for arm in seconds}
    quarter = max(1, args.pairs // 4)
    spread = [
        round(sum(seconds["off"][q : q + quarter]) / sum(seconds["on"][q : q + quarter]), 3)
        for q in range(0, args.pairs - quarter + 1, quarter)
    ]
    return {
        "mode": mode,
        "lever": lever,
        "modules_patched": patched,
        "pairs": args.pairs,
        "tokens_per_step": round(statistics.mean(tokens)),
        "tokens_per_s_on": round(rate["on"]),
        "tokens_per_s_off": round(rate["off"]),
        "ratio_on_vs_off": round(rate["on"] / rate["off"], 3),
        "ratio_by_quarter": spread,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="cpu")
    parser.add_argument("--modes", default="lora,full")
    parser.add_argument("--levers", default=",".join(LEVERS))
    parser.add_argument("--tokens", type=int, default=4096, help="real tokens per micro-batch (one row)")
    parser.add_argument("--pairs", type=int, default=24, help="timed steps per arm")
    parser.add_argument("--warmup", type=int, default=2, help="untimed pairs first")
    parser.add_argument("--process-pairs", type=int, default=4, help="process levers: process pairs")
    parser.add_argument("--one-arm", choices=("on", "off"), help=argparse.SUPPRESS)  # a process lever's arm
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    shape = SHAPES[args.shape]
    if args.one_arm:
        print(json.dumps(one_arm(shape, args.modes, args.levers, args.one_arm == "on", args)))
        return 0
    from runtime.levers.cpu_allocator_cache import keep_freed_blocks

    keep_freed_blocks()  # in-process levers: the runtime's CPU process under perf auto
    results = []
    print(f"shape {args.shape}, {args.tokens} tokens per step, {args.pairs} timed steps per arm, threads "
          f"{torch.get_num_threads()}, torch {torch.__version__}")  # fmt: skip
    print(f"{'mode':5} {'lever':15} {'tok/s on':>9} {'tok/s off':>9} {'on/off':>7}  by quarter (or pair)")
    for mode in args.modes.split(","):
        for lever in args.levers.split(","):
            if mode not in LEVERS[lever]:
                continue
            if lever in PROCESS_LEVERS:
                row = measure_processes(args.shape, mode, lever, args)
            else:
                row = measure(shape, mode, lever, args)
            results.append(row)
            spread = row.get("ratio_by_quarter") or f"{row['ratio_by_pair']} median {row['median_of_pairs']}"
            print(f"{mode:5} {lever:15} {row['tokens_per_s_on']:9} {row['tokens_per_s_off']:9} "
                  f"{row['ratio_on_vs_off']:7.3f}  {spread}", flush=True)  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps({"shape": args.shape, "rows": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
