"""CPU padding-free levers, each measured alone: the runtime only, through its normal config path.

    .venv/bin/python bench/perf_cpu.py                       # LoRA and full, 3 interleaved repeats
    .venv/bin/python bench/perf_cpu.py --modes full --repeats 1 --steps 6 --variants padded,auto

Shape of the CPU comparison with LLaMA-Factory (bench/README.md; sft_throughput.py --shape cpu):
Llama hidden 256 / 4 layers / 4 heads (2 kv) / mlp 1024 / vocab 8192, random weights, fp32, log-normal
example lengths (median ~160 tokens), 30% prompt (masked), cutoff 512, 8 examples per optimizer step
(or a token budget). Effective (non-padding) tokens/s from the Trainer's own count, after --warmup steps;
medians over interleaved repeats. Each variant changes keys a user can write (VARIANTS below).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# name -> the train: keys it writes on top of the common ones (perf: auto decides everything unset)
VARIANTS = {
    "padded": {"packing": False, "label_logits_only": False},  # the CPU path before padding-free rows
    "pf": {"label_logits_only": False},  # padding-free rows <= cutoff_len, full logits
    "auto": {},  # perf auto: padding-free rows + label_logits_only
    "auto_fused": {"optim": "adamw_torch_fused"},  # + torch's fused AdamW (CPU kernel)
    "budget_pf": {"micro_batch_tokens": 4096, "label_logits_only": False},  # LF neat_packing's tokens/step
    "budget": {"micro_batch_tokens": 4096},
}
HIDDEN, LAYERS, HEADS, KV_HEADS, MLP, VOCAB = 256, 4, 4, 2, 1024, 8192
MEDIAN, CUTOFF, PROMPT_FRACTION = 160, 512, 0.3


def build(workdir: Path, examples: int) -> tuple[Path, Path]:
    import torch

    from runtime.commands.make_tiny import build_model, word_tokenizer

    tokenizer = word_tokenizer(VOCAB)
    model = build_model(
        tokenizer,
        0,
        hidden_size=HIDDEN,
        intermediate_size=MLP,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    ).to(torch.float32)
    model_dir, data_dir = workdir / "model", workdir / "data"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(math.log(MEDIAN), 0.6, examples), 16, CUTOFF - 16).astype(int)
    rows = []
    for n in lengths:
        ids = rng.integers(9, VOCAB, size=n)
        k = max(1, int(n * PROMPT_FRACTION))
        rows.append(
            {
                "instruction": " ".join(f"w{i}" for i in ids[:k]),
                "input": "",
                "output": " ".join(f"w{i}" for i in ids[k:]),
            }
        )
    data_dir.mkdir()
    (data_dir / "bench.json").write_text(json.dumps(rows))
    (data_dir / "dataset_info.json").write_text(json.dumps({"bench": {"file_name": "bench.json"}}))
    return model_dir, data_dir


class Meter:
    """Non-padding tokens/s between the end of step `warmup` and the end of training, per wall second and
    per second of this process's CPU time (all its threads): on a machine shared with other jobs the wall
    rate says more about the neighbours than about the variant, the CPU-time rate much less."""

    def __init__(self, warmup: int) -> None:
        from transformers import TrainerCallback

        meter = self

        class _Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
                now = (time.perf_counter(), time.process_time(), state.num_input_tokens_seen)
                if state.global_step == warmup:
                    meter.start = now
                meter.end = now

        self.callback = _Callback()
        self.start = self.end = (0.0, 0.0, 0)

    @property
    def tokens_per_s(self) -> float:
        return (self.end[2] - self.start[2]) / (self.end[0] - self.start[0])

    @property
    def tokens_per_cpu_s(self) -> float:
        return (self.end[2] - self.start[2]) / (self.end[1] - self.start[1])


def run(variant: str, mode: str, model_dir: Path, data_dir: Path, args: argparse.Namespace) -> dict:
    from runtime.config import parse_train_config
    from runtime.train import run_training

    with tempfile.TemporaryDirectory() as out:
        section = {
            "model_name_or_path": str(model_dir),
            "stage": "sft",
            "template": "chatml",
            "finetuning_type": mode,
            "dataset": "bench",
            "dataset_dir": str(data_dir),
            "cutoff_len": CUTOFF,
            "per_device_train_batch_size": 8,
            "max_steps": args.steps,
            "learning_rate": 2e-4 if mode == "lora" else 2e-5,
            "lr_scheduler_type": "constant",
            "logging_steps": 1,
            "save_strategy": "no",
            "output_dir": out,
            "cache_dir": str(args.cache),
            "seed": 0,
            "report_to": "none",
            "plot_loss": False,
            **VARIANTS[variant],
        }
        if mode == "lora":
            section.update(lora_rank=16, lora_alpha=32, lora_dropout=0.0, lora_target="all")
        meter = Meter(args.warmup)
        result = run_training(parse_train_config(section), extra_callbacks=[meter.callback])
        assert result.code == 0, variant
        losses = [e["loss"] for e in result.trainer.state.log_history if "loss" in e]
        steps = result.trainer.state.global_step
        tokens = result.trainer.state.num_input_tokens_seen
        return {
            "tokens_per_s": meter.tokens_per_s,
            "tokens_per_cpu_s": meter.tokens_per_cpu_s,
            "tokens_per_step": tokens / steps,
            "loss_last": losses[-1],
            "line": result.perf.line(),
        }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--modes", default="lora,full")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        args.cache = Path(tmp) / "cache"
        model_dir, data_dir = build(Path(tmp), examples=600)
        for repeat in range(args.repeats):  # interleaved: every variant once per round
            for mode in args.modes.split(","):
                for variant in args.variants.split(","):
                    row = run(variant, mode, model_dir, data_dir, args)
                    results.setdefault(f"{mode}/{variant}", []).append(row)
                    print(
                        f"# round {repeat} {mode}/{variant}: {row['tokens_per_s']:.0f} tok/s "
                        f"{row['tokens_per_cpu_s']:.0f} tok/cpu-s "
                        f"{row['tokens_per_step']:.0f} tok/step loss {row['loss_last']:.4f}",
                        flush=True,
                    )
    print("| mode/variant | tok/s median (runs) | tok/cpu-s median (runs) | tokens/step | last loss |")
    print("|---|---|---|---|---|")
    summary = {}
    for key, rows in results.items():
        tps = [r["tokens_per_s"] for r in rows]
        cps = [r["tokens_per_cpu_s"] for r in rows]
        summary[key] = {"tok_s": tps, "tok_cpu_s": cps, "line": rows[0]["line"], "rows": rows}
        print(
            f"| {key} | {statistics.median(tps):.0f} ({', '.join(f'{t:.0f}' for t in tps)}) | "
            f"{statistics.median(cps):.0f} ({', '.join(f'{t:.0f}' for t in cps)}) | "
            f"{rows[0]['tokens_per_step']:.0f} | {rows[0]['loss_last']:.4f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
