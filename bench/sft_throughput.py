"""SFT throughput: the runtime trainer against two plain HF Trainer baselines, in one run.

    python bench/sft_throughput.py                 # the H100 benchmark (issue 7): full + LoRA
    python bench/sft_throughput.py --levers        # + the runtime once per lever switched off (ablation)
    python bench/sft_throughput.py --smoke         # a CPU check that every variant runs (numbers meaningless)

Variants, all on the same generated data, the same model weights and 8 examples per optimizer step:
  padded     plain transformers.Trainer, dynamic padding, sdpa            (the engine under LLaMA-Factory)
  flat_flex  plain transformers.Trainer, DataCollatorWithFlattening + flex_attention
  runtime    xgen's runtime trainer through its normal config path (a YAML `train:` section), with its
             default throughput levers (runtime/perf.py); `runtime-<lever>` rows (--levers) switch one off

Throughput is measured after `--warmup` steps by a TrainerCallback reading the Trainer's own count of
non-padding tokens (`include_num_input_tokens_seen="non_padding"`), with the device synchronized at both
ends. MFU divides achieved model FLOP/s (6 * params * tokens + attention) by a peak measured in the same run
(a large bf16 matmul), not a datasheet number. Loss is compared on the same fixed examples after training
(one shared padded evaluation), so packing cannot flatter a variant.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

# --------------------------------------------------------------------------------------------------
# Shapes


@dataclass(frozen=True)
class Shape:
    """Model and data shape. `llama1b` is Llama-3.2-1B's architecture with random weights."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    mlp: int
    vocab: int
    median_len: int
    max_len: int
    examples: int


LLAMA_1B = Shape(2048, 16, 32, 8, 8192, 128256, median_len=350, max_len=2048, examples=2048)
SMOKE = Shape(64, 2, 4, 2, 128, 1024, median_len=40, max_len=128, examples=64)
PROMPT_FRACTION = 0.3  # share of each example's tokens that is prompt (masked out of the loss)
EXAMPLES_PER_STEP = 8

# --levers: the runtime once per lever, each row changing one key against the runtime's defaults.
LEVERS = {
    "no_packing": {"packing": False},  # padded batches (attention back to sdpa)
    "no_liger": {"enable_liger_kernel": False},  # logits materialised, HF RMSNorm/SwiGLU/RoPE
    "no_fused_adamw": {"optim": "adamw_torch"},  # foreach AdamW instead of the fused kernel
    "plus_compile": {"torch_compile": True},  # torch.compile on top (off by default)
    "plus_act_ckpt": {"gradient_checkpointing": True},  # activation checkpointing (off by default)
}
# PREDICTED effective tokens/s on an H100 for the wall-time estimate printed before the run: padded and
# flat_flex are issue 7's measurements (torch 2.11, transformers 5.17); runtime is the target (3.5x padded).
PREDICTED_TPS = {"padded": 12_000, "flat_flex": 30_000, "runtime": 42_000}
# PREDICTED fixed seconds per variant (model load, flex/Liger compilation, tokenising, saving, eval).
PREDICTED_SETUP_S = {"padded": 20, "flat_flex": 45, "runtime": 45}


# --------------------------------------------------------------------------------------------------
# Model and tokenizer built in code (no downloads)


def build_tokenizer(vocab: int):
    """runtime.tiny's word-level tokenizer: generated `w<i>` text round-trips to exact token ids."""
    from runtime.tiny import word_tokenizer

    return word_tokenizer(vocab)


def build_model_dir(shape: Shape, dest: Path) -> Path:
    """Random-weight Llama of `shape` (runtime.tiny's builder) plus the tokenizer, saved as a model dir."""
    from runtime.tiny import build_model

    tokenizer = build_tokenizer(shape.vocab)
    model = build_model(
        tokenizer,
        0,
        hidden_size=shape.hidden,
        intermediate_size=shape.mlp,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=max(4096, shape.max_len * 2),
        tie_word_embeddings=True,
    ).to(torch.bfloat16)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


# --------------------------------------------------------------------------------------------------
# Data: instruction-like, log-normal lengths


def generate_examples(shape: Shape, seed: int = 0) -> list[dict[str, str]]:
    """Alpaca rows whose token lengths are log-normal (median `median_len`, capped at `max_len`)."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(math.log(shape.median_len), 0.6, shape.examples), 16, shape.max_len - 16)
    rows = []
    for n in lengths.astype(int):
        prompt_n = max(1, int(n * PROMPT_FRACTION))
        ids = rng.integers(9, shape.vocab, size=n)
        rows.append(
            {
                "instruction": " ".join(f"w{i}" for i in ids[:prompt_n]),
                "input": "",
                "output": " ".join(f"w{i}" for i in ids[prompt_n:]),
            }
        )
    return rows


def tokenize_for_baseline(rows, tokenizer, max_len: int):
    """Chat-templated input_ids with the prompt masked: what the runtime's sft stage produces too."""
    out = []
    for row in rows:
        prompt = [{"role": "user", "content": row["instruction"]}]
        full = prompt + [{"role": "assistant", "content": row["output"]}]
        p_ids = tokenizer.apply_chat_template(
            prompt, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        f_ids = tokenizer.apply_chat_template(full, tokenize=True, return_dict=False)[:max_len]
        labels = [-100] * len(p_ids) + f_ids[len(p_ids) :]
        out.append({"input_ids": f_ids, "labels": labels[: len(f_ids)]})
    return out


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def padded_collator(pad_id: int):
    def collate(features):
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), pad_id)
        labels = torch.full((len(features), width), -100)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n] = torch.tensor(f["input_ids"])
            labels[i, :n] = torch.tensor(f["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    return collate


# --------------------------------------------------------------------------------------------------
# Measurement


class ThroughputMeter:
    """TrainerCallback: non-pad tokens and seconds between the end of warm-up and the last step."""

    def __init__(self, warmup: int):
        from transformers import TrainerCallback

        meter = self

        class _Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                meter.losses_seen = state.log_history
                if state.global_step == warmup:
                    _sync()
                    meter.t0, meter.tok0 = time.perf_counter(), state.num_input_tokens_seen
                meter.t1, meter.tok1 = time.perf_counter(), state.num_input_tokens_seen

            def on_train_end(self, args, state, control, **kwargs):
                _sync()
                meter.t1 = time.perf_counter()

        self.callback = _Callback()
        self.t0 = self.t1 = 0.0
        self.tok0 = self.tok1 = 0
        self.losses_seen = []

    @property
    def tokens_per_s(self) -> float:
        return (self.tok1 - self.tok0) / max(self.t1 - self.t0, 1e-9)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"


def measure_peak_tflops() -> float:
    """bf16 matmul ceiling on this device, measured now (the MFU denominator)."""
    if not torch.cuda.is_available():
        return float("nan")
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    _sync()
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    _sync()
    return 2 * 8192**3 * 10 / (time.perf_counter() - t) / 1e12


def flops_per_token(shape: Shape, mean_seq: float, lora: bool) -> float:
    """Training FLOPs per token: 6N for dense weights (4N with frozen weights under LoRA: no weight grads),
    plus causal attention scores 6 * layers * hidden * mean_seq (QK^T and AV, fwd + bwd, halved: causal)."""
    params = (
        shape.layers
        * (
            2 * shape.hidden * shape.hidden  # q, o
            + 2 * shape.hidden * (shape.hidden // shape.heads * shape.kv_heads)  # k, v
            + 3 * shape.hidden * shape.mlp
        )
        + shape.hidden * shape.vocab
    )  # lm head (tied with the embedding; the lookup costs no matmul)
    dense = (4 if lora else 6) * params
    attention = 6 * shape.layers * shape.hidden * mean_seq
    return dense + attention


def peak_mem_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0


def reset_device() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


@torch.no_grad()
def eval_loss(model, rows, pad_id: int) -> float:
    """Token-mean loss over fixed training examples, padded and in bf16 autocast: shared by all variants."""
    model.eval()
    collate = padded_collator(pad_id)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(rows), 8):
        batch = {k: v.to(device) for k, v in collate(rows[i : i + 8]).items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            logits = out.logits.float()
        shift_logits, shift_labels = logits[:, :-1], batch["labels"][:, 1:]
        loss = torch.nn.functional.cross_entropy(
            shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1), reduction="sum"
        )
        total += loss.item()
        count += int((shift_labels != -100).sum())
    return total / count


# --------------------------------------------------------------------------------------------------
# Variants


def lora_config():
    from peft import LoraConfig

    return LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
    )


def training_args(out: Path, steps: int, smoke: bool, lora: bool, **overrides):
    from transformers import TrainingArguments

    kwargs = dict(
        output_dir=str(out),
        per_device_train_batch_size=EXAMPLES_PER_STEP,
        gradient_accumulation_steps=1,
        max_steps=steps,
        learning_rate=2e-4 if lora else 2e-5,
        lr_scheduler_type="constant",
        bf16=not smoke,
        use_cpu=smoke,
        optim="adamw_torch_fused" if not smoke else "adamw_torch",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=0,
        data_seed=0,
        dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def run_baseline(variant, model_dir, rows, eval_rows, args) -> dict:
    """One plain-Trainer baseline: `padded` or `flat_flex`."""
    from transformers import AutoModelForCausalLM, DataCollatorWithFlattening, Trainer

    reset_device()
    attn = "sdpa" if variant == "padded" or args.smoke else "flex_attention"  # flex has no CPU backward
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=attn)
    tokenizer = build_tokenizer(args.shape.vocab)
    if args.mode == "lora":
        from peft import get_peft_model

        model = get_peft_model(model, lora_config())
    collator = (
        padded_collator(0) if variant == "padded" else DataCollatorWithFlattening(return_position_ids=True)
    )
    meter = ThroughputMeter(args.warmup)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(
            model=model,
            args=training_args(Path(out), args.steps, args.smoke, args.mode == "lora"),
            train_dataset=ListDataset(rows),
            data_collator=collator,
            processing_class=tokenizer,  # lets the Trainer count non-pad tokens of flattened batches
            callbacks=[meter.callback],
        )
        trainer.train()
    row = finish_row(variant, meter, trainer.model, eval_rows, args)
    del trainer, model
    return row


@contextmanager
def plain_llama_module():
    """Liger patches transformers' Llama module globally (its RMSNorm, MLP and RoPE names), not only the
    model it is given: put them back after a runtime variant so later baselines stay plain."""
    from transformers.models.llama import modeling_llama

    saved, forward = dict(vars(modeling_llama)), modeling_llama.LlamaForCausalLM.forward
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(modeling_llama, name, value)
        modeling_llama.LlamaForCausalLM.forward = forward


def runtime_section(model_dir, data_dir, out: str, args, overrides: dict) -> dict:
    """The `train:` mapping a user would write: no throughput keys, so the runtime's defaults decide."""
    section = {
        "model_name_or_path": str(model_dir),
        "stage": "sft",
        "finetuning_type": args.mode,
        "dataset": "bench_sft",
        "dataset_dir": str(data_dir),
        "cutoff_len": args.shape.max_len,
        "per_device_train_batch_size": EXAMPLES_PER_STEP,
        "gradient_accumulation_steps": 1,
        "max_steps": args.steps,
        "learning_rate": 2e-4 if args.mode == "lora" else 2e-5,
        "lr_scheduler_type": "constant",
        "logging_steps": 1,
        "save_strategy": "no",
        "output_dir": out,
        "cache_dir": str(Path(out) / "hf-cache"),
        "seed": 0,
        "report_to": "none",
        "plot_loss": False,
        "bf16": not args.smoke,
    }
    if args.mode == "lora":
        section.update(lora_rank=16, lora_alpha=32, lora_dropout=0.0, lora_target="all")
    section.update(overrides)
    return section


def run_runtime(model_dir, data_dir, eval_rows, args, variant: str = "runtime") -> dict:
    """The runtime trainer through its normal config path: a `train:` mapping validated like a user's YAML."""
    from runtime.config import parse_train_config
    from runtime.train import run_training

    reset_device()
    overrides = LEVERS[variant.removeprefix("runtime-")] if variant != "runtime" else {}
    with tempfile.TemporaryDirectory() as out, plain_llama_module():
        cfg = parse_train_config(runtime_section(model_dir, data_dir, out, args, overrides))
        if args.smoke and "packing" not in overrides:
            # CPU: perf auto leaves its padding-free lever off there (`packing` would mean LLaMA-Factory's
            # offline rows); switch the lever on so the smoke runs the packed path too.
            cfg.padding_free = True
        meter = ThroughputMeter(args.warmup)
        result = run_training(cfg, extra_callbacks=[meter.callback])
        if result.code != 0:
            raise RuntimeError(f"runtime variant {variant} exited with {result.code}")
        row = finish_row(variant, meter, result.model, eval_rows, args)
        row["levers"] = result.perf.line()
        del result
    return row


def finish_row(variant, meter, model, eval_rows, args) -> dict:
    tokens_per_s = meter.tokens_per_s
    mean_seq = float(np.mean([len(r["input_ids"]) for r in eval_rows]))
    achieved = tokens_per_s * flops_per_token(args.shape, mean_seq, args.mode == "lora") / 1e12
    return {
        "mode": args.mode,
        "variant": variant,
        "tokens_per_s": round(tokens_per_s, 1),
        "mfu": round(achieved / args.peak_tflops, 4) if args.peak_tflops == args.peak_tflops else None,
        "peak_mem_gib": round(peak_mem_gib(), 2),
        "final_loss": round(eval_loss(model, eval_rows, 0), 4),
    }


# --------------------------------------------------------------------------------------------------


def print_table(rows: list[dict], peak_tflops: float) -> None:
    def ratio(value):
        return f"{value:.2f}" if value is not None else "n/a"

    for mode in dict.fromkeys(r["mode"] for r in rows):
        print(f"\n== {mode} SFT (MFU against the measured bf16 matmul peak {peak_tflops:.0f} TFLOP/s) ==")
        print(
            f"{'variant':<24} {'tokens/s':>10} {'MFU':>6} {'peak GiB':>9} {'loss':>8} {'x padded':>9} "
            f"{'x flat':>7} {'wall s':>7}"
        )
        for r in (r for r in rows if r["mode"] == mode):
            mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
            print(
                f"{r['variant']:<24} {r['tokens_per_s']:>10.0f} {mfu:>6} {r['peak_mem_gib']:>9.1f} "
                f"{r['final_loss']:>8.4f} {ratio(r['ratio_vs_padded']):>9} "
                f"{ratio(r['ratio_vs_flat_flex']):>7} {r['wall_s']:>7.0f}"
            )


def versions() -> dict:
    """Library versions as imported (the GPU run imports the carried wheels from PYTHONPATH first)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"torch": torch.__version__, "python": platform.python_version()}
    for name in ("transformers", "peft", "accelerate", "datasets", "liger-kernel", "triton", "flash-attn"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def estimate_wall_s(variant: str, tokens_per_step: float, args) -> float:
    """PREDICTED wall seconds of one variant on an H100 (setup + timed steps), printed before the run."""
    base = "runtime" if variant.startswith("runtime") else variant
    return PREDICTED_SETUP_S[base] + args.steps * tokens_per_step / PREDICTED_TPS[base]


def add_ratios(results: list[dict]) -> None:
    for r in results:
        base = {v["variant"]: v["tokens_per_s"] for v in results if v["mode"] == r["mode"]}
        r["ratio_vs_padded"] = round(r["tokens_per_s"] / base["padded"], 3) if base.get("padded") else None
        r["ratio_vs_flat_flex"] = (
            round(r["tokens_per_s"] / base["flat_flex"], 3) if base.get("flat_flex") else None
        )
        if r["variant"].startswith("runtime-"):  # a lever's effect: against the runtime with every lever
            r["ratio_vs_runtime"] = (
                round(r["tokens_per_s"] / base["runtime"], 3) if base.get("runtime") else None
            )


def write_results(path: str, results: list[dict], context: dict) -> None:
    """A flat list of rows, each carrying its context, so a script can check any row on its own.
    Rewritten after every variant: a run cut short still leaves the rows it finished."""
    add_ratios(results)
    Path(path).write_text(json.dumps([{**r, **context} for r in results], indent=2) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU: checks everything runs")
    parser.add_argument("--modes", default="full,lora")
    parser.add_argument("--variants", default="padded,flat_flex,runtime")
    parser.add_argument("--levers", action="store_true", help="also run the runtime once per lever in LEVERS")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per variant")
    parser.add_argument("--warmup", type=int, default=None, help="steps excluded from the timing")
    parser.add_argument("--deadline-s", type=float, default=None, help="skip variants predicted to end later")
    parser.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    args = parser.parse_args()
    args.shape = SMOKE if args.smoke else LLAMA_1B
    args.steps = args.steps or (4 if args.smoke else 60)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 15)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()

    print(f"device: {device_name()}  shape: {asdict(args.shape)}")
    print(f"steps: {args.steps} (warm-up {args.warmup}), {EXAMPLES_PER_STEP} examples per optimizer step")
    args.peak_tflops = measure_peak_tflops()
    variants = [v for v in args.variants.split(",") if v]
    variants += [f"runtime-{lever}" for lever in LEVERS] if args.levers else []
    context = {
        "gpu": device_name(),
        "peak_bf16_tflops_measured": None if math.isnan(args.peak_tflops) else round(args.peak_tflops, 1),
        "smoke": args.smoke,
        "steps": args.steps,
        "warmup": args.warmup,
        "examples_per_step": EXAMPLES_PER_STEP,
        "versions": versions(),
    }
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        model_dir = build_model_dir(args.shape, work / "model")
        tokenizer = build_tokenizer(args.shape.vocab)
        raw = generate_examples(args.shape)
        data_dir = work / "data"
        data_dir.mkdir()
        (data_dir / "bench_sft.json").write_text(json.dumps(raw))
        info = {"bench_sft": {"file_name": "bench_sft.json"}}
        (data_dir / "dataset_info.json").write_text(json.dumps(info))
        rows = tokenize_for_baseline(raw, tokenizer, args.shape.max_len)
        eval_rows = rows[:64]
        tokens_per_step = EXAMPLES_PER_STEP * float(np.mean([len(r["input_ids"]) for r in rows]))
        plan = [(mode, variant) for mode in args.modes.split(",") for variant in variants]
        estimates = {v: estimate_wall_s(v, tokens_per_step, args) for v in variants}
        print(f"{tokens_per_step:.0f} non-pad tokens per step on average; PREDICTED wall time on an H100:")
        for variant in variants:
            print(f"  {variant:<24} ~{estimates[variant]:.0f} s per mode")
        print(f"  total ~{sum(estimates[v] for _, v in plan):.0f} s for {len(plan)} runs", flush=True)
        results, failed = [], []
        for mode, variant in plan:
            args.mode = mode
            elapsed = time.perf_counter() - started
            if args.deadline_s and not args.smoke and elapsed + estimates[variant] > args.deadline_s:
                print(f"[{mode}/{variant}] skipped: past --deadline-s at {elapsed:.0f} s", flush=True)
                continue
            t = time.perf_counter()
            try:
                if variant.startswith("runtime"):
                    row = run_runtime(model_dir, data_dir, eval_rows, args, variant)
                else:
                    row = run_baseline(variant, model_dir, rows, eval_rows, args)
            except Exception:  # one broken variant must not cost the others' rows; the exit status says it
                traceback.print_exc()
                print(f"[{mode}/{variant}] FAILED after {time.perf_counter() - t:.0f} s", flush=True)
                failed.append(f"{mode}/{variant}")
                reset_device()
                continue
            row["wall_s"] = round(time.perf_counter() - t, 1)
            print(f"[{mode}/{variant}] {row}", flush=True)
            results.append(row)
            write_results(args.out, results, context)
    print_table(results, args.peak_tflops)
    print(f"\nwrote {args.out} ({time.perf_counter() - started:.0f} s in all)")
    if failed:
        print(f"FAILED variants: {', '.join(failed)}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
