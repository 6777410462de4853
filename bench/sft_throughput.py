"""SFT throughput: the runtime trainer against a plain HF Trainer and LLaMA-Factory, in one run.

    python bench/sft_throughput.py                     # the GPU benchmark: Llama-3.2-1B shape, full + LoRA
    python bench/sft_throughput.py --shape cpu         # the CPU shape (hidden 256, 4 layers): minutes here
    python bench/sft_throughput.py --levers            # + the runtime once per lever switched off (ablation)
    python bench/sft_throughput.py --smoke             # a CPU check that every variant runs (no real numbers)
    XGEN_LF_PYTHON=/work/lfvenv/bin/python python bench/sft_throughput.py --shape cpu --repeats 3

Variants, all on the same generated data, the same model weights, the same template (chatml), the same
precision and 8 examples per optimizer step (LLaMA-Factory's packed variant: 8 rows of cutoff_len, see below):
  padded          plain transformers.Trainer, dynamic padding, sdpa        (the engine under LLaMA-Factory)
  flat_flex       plain transformers.Trainer, DataCollatorWithFlattening + flex_attention (sdpa on CPU)
  runtime         xgen's runtime trainer through its normal config path (a `train:` section), with its
                  default throughput levers (runtime/perf/plan.py); `runtime-<lever>` rows (--levers) switch
                  one off
  runtime_tokens  the runtime at LLaMA-Factory's packed tokens per step (~4 k): the keys in --tokens-keys
  lf_default      LLaMA-Factory 0.9.5 (`llamafactory-cli train cfg.yaml` from its own venv) with its defaults,
                  as a user gets them: padded batches, gradient checkpointing ON
  lf_best         LLaMA-Factory with `neat_packing: true` and `disable_gradient_checkpointing: true`: rows of
                  cutoff_len packed offline, 8 rows a step (~22 examples, ~4 k tokens), examples kept apart

Every variant runs in its own process (this script with --child, or LLaMA-Factory's CLI), so each pays its
own start and the reported first-step time is "process start -> end of optimizer step 1", the same for all.
Throughput is real (non-padding) tokens over the steps after `--warmup`, divided by the wall time between
the end of step `warmup` and the end of the last step:
  * in-process variants: a TrainerCallback stamps each step end (device synchronised) and reads the
    Trainer's count of non-padding tokens (`include_num_input_tokens_seen="non_padding"`);
  * LLaMA-Factory (no callback can be injected into its CLI): the wall-clock time at which each per-step log
    line (`logging_steps: 1`) arrives on its stdout, and real tokens counted here from its own tokenised
    dataset (`tokenized_path`) and the Trainer's batch order for that dataset, replayed here. Its own
    counter includes padding; the replay's padded count is checked against that counter step by step
    (`order_verified`).
Loss is one shared padded evaluation, in this process, of the first 64 training examples with each variant's
saved model or adapter, so packing cannot flatter a variant. --repeats runs the plan that many times,
interleaved, and reports medians.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]

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
    dtype: str  # dtype the weights are saved in (and the default precision of the run: fp32 on CPU)


SHAPES = {
    "llama1b": Shape(
        2048, 16, 32, 8, 8192, 128256, median_len=350, max_len=2048, examples=2048, dtype="bf16"
    ),
    # The CPU shape of the comparison with LLaMA-Factory (../shared/notes/llamafactory-peer.md): minutes on
    # 2 cores, fp32.
    "cpu": Shape(256, 4, 4, 2, 1024, 8192, median_len=160, max_len=512, examples=512, dtype="fp32"),
    "smoke": Shape(64, 2, 4, 2, 128, 1024, median_len=40, max_len=128, examples=128, dtype="fp32"),
}
PROMPT_FRACTION = 0.3  # share of each example's tokens that is prompt (masked out of the loss)
EXAMPLES_PER_STEP = 8
EVAL_EXAMPLES = 64

# --levers: the runtime once per lever, each row changing one key against the runtime's defaults.
LEVERS = {
    "no_packing": {"packing": False},  # padded batches (attention back to sdpa)
    "no_label_logits": {"label_logits_only": False},  # lm_head over every position (CPU: the prompt too)
    "sdpa_rows": {"flash_attn": "sdpa"},  # CPU: masked sdpa over rows of <= cutoff_len, not sdpa per example
    "plus_fused_rms_norm": {
        "fused_rms_norm": True
    },  # opt-in: torch's F.rms_norm (runtime/levers/fused_rms_norm.py)
    "no_fused_lora": {"fused_lora": False},  # LoRA on CPU: peft's own forward (lora_addmm.py off)
    "no_allocator_cache": {"cpu_allocator_cache": False},  # CPU: glibc's default malloc (unmaps big blocks)
    "no_liger": {"enable_liger_kernel": False},  # logits materialised, HF RMSNorm/SwiGLU/RoPE
    "no_fused_adamw": {"optim": "adamw_torch"},  # foreach AdamW instead of the fused kernel
    "plus_compile": {"torch_compile": True},  # torch.compile on top (off by default)
    "plus_act_ckpt": {"gradient_checkpointing": True},  # activation checkpointing (off by default)
}
# LLaMA-Factory variants: keys on top of the shared YAML (lf_yaml). lf_default adds nothing: its defaults
# (gradient checkpointing on, padded batches, `flash_attn: auto`) are what a user gets.
LF_VARIANTS = {
    "lf_default": {},
    "lf_best": {"neat_packing": True, "disable_gradient_checkpointing": True},
}
# PREDICTED effective tokens/s on an H100 for the wall-time estimate printed before the run: padded and
# flat_flex are the reference measurements (torch 2.11, transformers 5.17); runtime is the target (3.5x
# padded).
# lf_default: padded with checkpointing (~0.75x padded); lf_best: flat_flex-like. Guesses, for the plan only.
PREDICTED_TPS = {
    "padded": 12_000,
    "flat_flex": 30_000,
    "runtime": 42_000,
    "lf_default": 9_000,
    "lf_best": 28_000,
}
# PREDICTED fixed seconds per variant (process start, model load, compilation, tokenising, saving, eval).
PREDICTED_SETUP_S = {"padded": 30, "flat_flex": 55, "runtime": 55, "lf_default": 45, "lf_best": 45}
CPU_VARIANTS = "padded,runtime,runtime_tokens,lf_default,lf_best"  # flat_flex is sdpa there: same as padded
GPU_VARIANTS = "padded,flat_flex,runtime,runtime_tokens,lf_default,lf_best"
SMOKE_VARIANTS = "padded,flat_flex,runtime"  # + the LF variants by --variants when XGEN_LF_PYTHON is set


# --------------------------------------------------------------------------------------------------
# Model and tokenizer built in code (no downloads)


def build_tokenizer(vocab: int):
    """runtime.commands.make_tiny's word-level tokenizer: generated `w<i>` text round-trips to exact
    token ids."""
    from runtime.commands.make_tiny import word_tokenizer

    return word_tokenizer(vocab)


def torch_dtype(name: str) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp32": torch.float32}[name]


def llama_sizes(shape: Shape) -> dict:
    """LlamaConfig keys of `shape` (the vocabulary comes from the tokenizer or the caller)."""
    return {
        "hidden_size": shape.hidden,
        "intermediate_size": shape.mlp,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "max_position_embeddings": max(4096, shape.max_len * 2),
        "tie_word_embeddings": True,
    }


def build_model_dir(shape: Shape, dest: Path) -> Path:
    """Random-weight Llama of `shape` (runtime.commands.make_tiny's builder) plus the tokenizer, saved as a
    model dir.
    The saved dtype is the run's (fp32 on CPU): LLaMA-Factory loads a checkpoint in its saved dtype."""
    from runtime.commands.make_tiny import build_model

    tokenizer = build_tokenizer(shape.vocab)
    model = build_model(tokenizer, 0, **llama_sizes(shape)).to(torch_dtype(shape.dtype))
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


class StepClock:
    """TrainerCallback: the wall-clock time (time.time(), comparable across processes) at the end of every
    optimizer step, device synchronised, and the Trainer's cumulative count of non-padding tokens."""

    def __init__(self):
        from transformers import TrainerCallback

        clock = self

        class _Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                _sync()
                clock.times.append(time.time())
                clock.tokens.append(int(state.num_input_tokens_seen))

        self.callback = _Callback()
        self.times: list[float] = []
        self.tokens: list[int] = []


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
    """Token-mean loss over fixed training examples, padded and in bf16 autocast on CUDA: one function for
    every variant."""
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


def eval_saved(model_dir: Path, saved: Path, mode: str, eval_rows) -> float:
    """Load a variant's saved weights (full) or adapter (LoRA, on the shared base) and score eval_rows."""
    from transformers import AutoModelForCausalLM

    reset_device()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if mode == "lora":
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch.float32, attn_implementation="sdpa"
        )
        model = PeftModel.from_pretrained(base, saved)
    else:
        model = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32, attn_implementation="sdpa")
    loss = eval_loss(model.to(device), eval_rows, 0)
    del model
    reset_device()
    return loss


def throughput(times: list[float], tokens: list[int], warmup: int) -> tuple[float, int]:
    """(real tokens/s, real tokens) over steps warmup+1..N: `times[i]` is the end of step i+1 and
    `tokens[i]` the cumulative real tokens after it."""
    if len(times) <= warmup or warmup < 1:
        raise RuntimeError(f"{len(times)} steps timed, need more than --warmup {warmup} (>= 1)")
    counted = tokens[-1] - tokens[warmup - 1]
    return counted / max(times[-1] - times[warmup - 1], 1e-9), counted


# --------------------------------------------------------------------------------------------------
# In-process variants (run in a child process: `--child SPEC.json`)


def lora_config():
    from peft import LoraConfig

    return LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
    )


def use_bf16(spec: dict) -> bool:
    return SHAPES[spec["shape"]].dtype == "bf16" and torch.cuda.is_available()


def training_args(out: Path, spec: dict, **overrides):
    from transformers import TrainingArguments

    kwargs = dict(
        output_dir=str(out),
        per_device_train_batch_size=EXAMPLES_PER_STEP,
        gradient_accumulation_steps=1,
        max_steps=spec["steps"],
        learning_rate=2e-4 if spec["mode"] == "lora" else 2e-5,
        lr_scheduler_type="constant",
        bf16=use_bf16(spec),
        use_cpu=not torch.cuda.is_available(),
        optim="adamw_torch_fused" if torch.cuda.is_available() else "adamw_torch",
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


def child_baseline(spec: dict, clock: StepClock) -> dict:
    """One plain-Trainer baseline, `padded` or `flat_flex`: tokenises, trains, saves to spec['save']."""
    from transformers import AutoModelForCausalLM, DataCollatorWithFlattening, Trainer

    shape = SHAPES[spec["shape"]]
    attn = "sdpa" if spec["variant"] == "padded" or not torch.cuda.is_available() else "flex_attention"
    model = AutoModelForCausalLM.from_pretrained(
        spec["model_dir"], dtype=torch.float32, attn_implementation=attn
    )
    tokenizer = build_tokenizer(shape.vocab)
    raw = json.loads((Path(spec["data_dir"]) / "bench_sft.json").read_text())
    rows = tokenize_for_baseline(raw, tokenizer, shape.max_len)
    if spec["mode"] == "lora":
        from peft import get_peft_model

        model = get_peft_model(model, lora_config())
    collator = (
        padded_collator(0)
        if spec["variant"] == "padded"
        else DataCollatorWithFlattening(return_position_ids=True)
    )
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(
            model=model,
            args=training_args(Path(out), spec),
            train_dataset=ListDataset(rows),
            data_collator=collator,
            processing_class=tokenizer,  # lets the Trainer count non-pad tokens of flattened batches
            callbacks=[clock.callback],
        )
        trainer.train()
    trainer.model.save_pretrained(spec["save"])
    return {"attention": attn}


def runtime_section(spec: dict, overrides: dict) -> dict:
    """The `train:` mapping a user would write: no throughput keys, so the runtime's defaults decide."""
    shape = SHAPES[spec["shape"]]
    section = {
        "model_name_or_path": spec["model_dir"],
        "stage": "sft",
        "finetuning_type": spec["mode"],
        "dataset": "bench_sft",
        "dataset_dir": spec["data_dir"],
        "cutoff_len": shape.max_len,
        "per_device_train_batch_size": EXAMPLES_PER_STEP,
        "gradient_accumulation_steps": 1,
        "max_steps": spec["steps"],
        "learning_rate": 2e-4 if spec["mode"] == "lora" else 2e-5,
        "lr_scheduler_type": "constant",
        "logging_steps": 1,
        "save_strategy": "no",
        "output_dir": spec["save"],  # the runtime saves its final weights/adapter here, as for a user
        "cache_dir": str(Path(spec["save"]).parent / "hf-cache"),
        "seed": 0,
        "report_to": "none",
        "plot_loss": False,
        "bf16": use_bf16(spec),
    }
    if spec["mode"] == "lora":
        section.update(lora_rank=16, lora_alpha=32, lora_dropout=0.0, lora_target="all")
    section.update(overrides)
    return section


def schema_keys() -> set[str]:
    from dataclasses import fields

    from runtime.config.schema import TrainConfig

    return {f.name for f in fields(TrainConfig)}


def tokens_keys(shape: Shape, mean_len: float) -> dict:
    """runtime_tokens' train keys: the runtime at lf_best's token slots per step, 8 rows of cutoff_len
    (~4 k tokens): one micro-batch per step with a token budget of 8 * cutoff_len (`micro_batch_tokens`),
    which the padding-free path cuts into rows of at most cutoff_len under sdpa (runtime/data/packing.py).
    `mean_len` is kept for --tokens-keys callers that want examples instead. --tokens-keys '{...}' (JSON)
    replaces these without touching this file."""
    del mean_len
    return {"micro_batch_tokens": EXAMPLES_PER_STEP * shape.max_len}


def runtime_overrides(variant: str, tokens_keys: dict) -> tuple[dict, list[str], bool]:
    """(train keys, keys dropped because this branch's schema lacks them, force the padding-free path).
    `runtime_tokens-<lever>`: runtime_tokens with one LEVERS key changed."""
    if variant == "runtime_tokens" or variant.startswith("runtime_tokens-"):
        known = schema_keys()
        lever = dict(LEVERS[variant.removeprefix("runtime_tokens-")]) if "-" in variant else {}
        keys = {k: v for k, v in {**tokens_keys, **lever}.items() if k in known}
        return keys, sorted(set(tokens_keys) - set(keys)), True
    if variant.startswith("runtime-"):
        return dict(LEVERS[variant.removeprefix("runtime-")]), [], False
    return {}, [], False


def child_runtime(spec: dict, clock: StepClock) -> dict:
    """The runtime trainer through its normal config path: a `train:` mapping validated like a user's YAML."""
    from runtime.config import parse_train_config
    from runtime.perf.lean_imports import hide_unused_bitsandbytes
    from runtime.train import run_training

    variant = spec["variant"]
    overrides, dropped, padding_free = runtime_overrides(variant, spec["tokens_keys"])
    if spec["mode"] != "lora" and overrides.pop("fused_lora", None) is not None:
        dropped = [*dropped, "fused_lora"]  # LoRA only: the config rules refuse it for full
    cfg = parse_train_config(runtime_section(spec, overrides))
    hide_unused_bitsandbytes(cfg)  # as `xgen-runtime train` does (runtime/cli.py) before peft loads
    # The padding-free path is not a key (perf: auto decides it per device); the smoke and runtime_tokens
    # switch it on in code, as bench/tests do, where perf: auto leaves it off (as it once did on CPU).
    if (spec["smoke"] and "packing" not in overrides) or padding_free:
        cfg.padding_free = True
    result = run_training(cfg, extra_callbacks=[clock.callback])
    if result.code != 0:
        raise RuntimeError(f"runtime variant {variant} exited with {result.code}")
    out = {"levers": result.perf.line() if result.perf is not None else None, "train_keys": overrides}
    if dropped:
        out["keys_dropped"] = dropped
    return out


def child_main(spec_path: str) -> int:
    """Run one in-process variant and write its timings: the parent reads them and evaluates the save."""
    spec = json.loads(Path(spec_path).read_text())
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    reset_device()
    clock = StepClock()
    if spec["variant"].startswith("runtime"):
        extra = child_runtime(spec, clock)
    else:
        extra = child_baseline(spec, clock)
    result = {"times": clock.times, "tokens": clock.tokens, "peak_mem_gib": round(peak_mem_gib(), 2), **extra}
    Path(spec["result"]).write_text(json.dumps(result))
    return 0


# --------------------------------------------------------------------------------------------------
# LLaMA-Factory variants (its CLI, from its own virtualenv)


def lf_yaml(args, mode: str, variant: str, data_dir: Path, run_dir: Path) -> dict:
    """LLaMA-Factory's config from the same settings as runtime_section: same model, data, template,
    cutoff, examples (rows) per step, learning rate, schedule, seed and precision."""
    cfg = {
        "model_name_or_path": str(args.model_dir),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": mode,
        "dataset": "bench_sft",
        "dataset_dir": str(data_dir),
        "template": "chatml",  # the tokenizer's chat template (runtime.data.templates' chatml): same ids
        "cutoff_len": args.shape.max_len,
        "overwrite_cache": True,
        "tokenized_path": str(run_dir / "tokenized"),  # read back here to count real tokens per row
        "output_dir": str(run_dir / "out"),
        "overwrite_output_dir": True,
        "per_device_train_batch_size": EXAMPLES_PER_STEP,
        "gradient_accumulation_steps": 1,
        "max_steps": args.steps,
        "learning_rate": 2e-4 if mode == "lora" else 2e-5,
        "lr_scheduler_type": "constant",
        "logging_steps": 1,
        "save_strategy": "no",
        "seed": 0,
        "data_seed": 0,
        "dataloader_num_workers": 0,
        "report_to": "none",
        "plot_loss": False,
        "disable_tqdm": True,
        "include_num_input_tokens_seen": True,  # counts padding too: used only to verify the batch order
        "bf16": args.shape.dtype == "bf16" and torch.cuda.is_available(),
    }
    if mode == "lora":
        cfg.update(lora_rank=16, lora_alpha=32, lora_dropout=0.0, lora_target="all")
    cfg.update(LF_VARIANTS[variant])
    return cfg


# One transformers log line per step (`logging_steps: 1`, printed by PrinterCallback under disable_tqdm).
LF_STEP_LINE = re.compile(r"^\{.*'loss'.*'epoch'.*\}\s*$")


def trainer_batches(n_rows: int, steps: int, batch: int) -> list[list[int]]:
    """The row indices of each of the first `steps` batches a transformers Trainer (seed 0, one process,
    no length grouping) draws from a dataset of `n_rows`: the same Trainer and accelerate sampler,
    replayed on an index dataset here. Checked against LLaMA-Factory's own (padded) count in run_lf."""
    from transformers import Trainer, TrainingArguments

    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=batch,
            seed=0,
            data_seed=0,
            report_to=[],
            use_cpu=not torch.cuda.is_available(),
            dataloader_num_workers=0,
            remove_unused_columns=False,
        )
        trainer = Trainer(
            model=torch.nn.Linear(1, 1),
            args=targs,
            train_dataset=ListDataset(list(range(n_rows))),
            data_collator=lambda feats: torch.tensor(feats),
        )
        loader = trainer.get_train_dataloader()
        batches: list[list[int]] = []
        epoch = 0
        while len(batches) < steps:
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(epoch)
            for b in loader:
                batches.append(b.tolist())
                if len(batches) == steps:
                    break
            epoch += 1
    return batches


def lf_rows(tokenized: Path) -> tuple[list[int], list[int]]:
    """(real tokens, padded length) of each row of LLaMA-Factory's tokenised training set. Packed rows are
    padded to cutoff_len with attention_mask 0 under neat_packing; unpacked rows carry no padding."""
    from datasets import load_from_disk

    data = load_from_disk(str(tokenized))
    train = data["train"] if hasattr(data, "keys") and "train" in data else data
    real, length = [], []
    for ids, mask in zip(train["input_ids"], train["attention_mask"], strict=True):
        real.append(sum(1 for m in mask if m != 0))
        length.append(len(ids))
    return real, length


def run_lf(args, mode: str, variant: str, data_dir: Path, run_dir: Path) -> dict:
    """One LLaMA-Factory run as a user runs it: `python -m llamafactory.cli train cfg.yaml` in its venv."""
    import yaml

    run_dir.mkdir(parents=True)
    cfg_path = run_dir / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(lf_yaml(args, mode, variant, data_dir, run_dir), sort_keys=False))
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",  # each step's log line arrives when it is printed
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(run_dir / "hf-cache"),
        "DISABLE_VERSION_CHECK": "1",
        "RECORD_VRAM": "1",  # its per-step log then carries the peak GPU memory
        "PYTHONPATH": "",  # the bench's own path must not leak into its venv
    }
    log_path = run_dir / "lf.log"
    step_times: list[float] = []
    started = time.time()
    with (
        log_path.open("w") as log,
        reaped(
            subprocess.Popen(
                [args.lf_python, "-m", "llamafactory.cli", "train", str(cfg_path)],
                cwd=run_dir,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
                start_new_session=True,
            )
        ) as proc,
    ):
        assert proc.stdout is not None
        for line in proc.stdout:
            if LF_STEP_LINE.match(line):
                step_times.append(time.time())
            log.write(line)
        rc = proc.wait()
    if rc != 0:
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(f"llamafactory-cli exited with {rc}; log {log_path}:\n{tail}")
    if len(step_times) != args.steps:
        raise RuntimeError(f"{len(step_times)} step log lines in {log_path}, expected {args.steps}")
    real, length = lf_rows(run_dir / "tokenized")
    batches = trainer_batches(len(real), args.steps, EXAMPLES_PER_STEP)
    tokens = np.cumsum([sum(real[i] for i in b) for b in batches]).tolist()
    # Its own counter (padding included) against the replay: rows x the longest row, rounded up to a multiple
    # of 8 (its collator's pad_to_multiple_of). Equal at every step means the replayed order is its order.
    padded = np.cumsum([len(b) * -(-max(length[i] for i in b) // 8) * 8 for b in batches]).tolist()
    state = json.loads((run_dir / "out" / "trainer_state.json").read_text())
    seen = [
        e["num_input_tokens_seen"]
        for e in state["log_history"]
        if "loss" in e and "num_input_tokens_seen" in e
    ]
    vram = [
        json.loads(line).get("vram_allocated", 0.0)
        for line in (run_dir / "out" / "trainer_log.jsonl").read_text().splitlines()
        if line.strip()
    ]
    return {
        "times": step_times,
        "tokens": tokens,
        "started": started,
        "peak_mem_gib": max(vram, default=0.0),
        "order_verified": seen == padded,
        "rows_per_step": EXAMPLES_PER_STEP,
        "examples_per_row": round(
            len(args.example_lengths) / len(real), 2
        ),  # LF drops none here (all < cutoff)
        "lf_keys": LF_VARIANTS[variant],
        "saved": str(run_dir / "out"),
        "lf_lengths": length if variant == "lf_default" else None,
    }


# --------------------------------------------------------------------------------------------------
# The parent: one run per (repeat, mode, variant), each in its own process


@contextmanager
def reaped(proc: subprocess.Popen):
    """A variant's process (its own session), killed with everything it started when the parent stops
    early: `timeout` in bench/run_gpu.sh signals only this script, and an orphan would keep the GPU."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run_child(args, mode: str, variant: str, data_dir: Path, run_dir: Path) -> dict:
    run_dir.mkdir(parents=True)
    spec = {
        "variant": variant,
        "mode": mode,
        "shape": args.shape_name,
        "model_dir": str(args.model_dir),
        "data_dir": str(data_dir),
        "steps": args.steps,
        "smoke": args.smoke,
        "save": str(run_dir / "out"),
        "result": str(run_dir / "result.json"),
        "tokens_keys": args.tokens_keys,
    }
    (run_dir / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    log_path = run_dir / "child.log"
    started = time.time()
    with (
        log_path.open("w") as log,
        reaped(
            subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--child", str(run_dir / "spec.json")],
                cwd=run_dir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        ) as proc,
    ):
        rc = proc.wait()
    if rc != 0:
        raise RuntimeError(f"child exited with {rc}; log {log_path}:\n{log_path.read_text()[-3000:]}")
    result = json.loads((run_dir / "result.json").read_text())
    return {**result, "started": started, "saved": spec["save"]}


def run_one(args, mode: str, variant: str, rep: int, data_dir: Path, eval_rows) -> dict:
    run_dir = args.work / "runs" / f"{mode}-{variant}-{rep}"
    t = time.perf_counter()
    if variant.startswith("lf_"):
        res = run_lf(args, mode, variant, data_dir, run_dir)
    else:
        res = run_child(args, mode, variant, data_dir, run_dir)
    tokens_per_s, counted = throughput(res["times"], res["tokens"], args.warmup)
    timed_steps = len(res["times"]) - args.warmup
    mean_seq = float(np.mean(args.example_lengths))
    achieved = tokens_per_s * flops_per_token(args.shape, mean_seq, mode == "lora") / 1e12
    row = {
        "mode": mode,
        "variant": variant,
        "repeat": rep,
        "tokens_per_s": round(tokens_per_s, 1),
        "tokens_per_step": round(counted / timed_steps, 1),
        "first_step_s": round(res["times"][0] - res["started"], 2),
        "mfu": round(achieved / args.peak_tflops, 4) if args.peak_tflops == args.peak_tflops else None,
        "peak_mem_gib": res["peak_mem_gib"],
        "final_loss": round(eval_saved(args.model_dir, Path(res["saved"]), mode, eval_rows), 5),
        "wall_s": round(time.perf_counter() - t, 1),
    }
    for key in ("levers", "train_keys", "keys_dropped", "order_verified", "examples_per_row", "lf_keys"):
        if key in res:
            row[key] = res[key]
    if res.get("lf_lengths") is not None:  # same data and template: LF's example lengths equal ours
        row["same_tokens_as_bench"] = res["lf_lengths"] == args.example_lengths
    shutil.rmtree(run_dir, ignore_errors=True)  # saved weights of the 1B shape are GBs
    return row


def summarise(runs: list[dict]) -> list[dict]:
    """One row per (mode, variant): medians over the repeats, every repeat's figures kept in `runs`, and
    each ratio of medians against padded, flat_flex, lf_default and lf_best (and the runtime for levers)."""
    rows = []
    for key in dict.fromkeys((r["mode"], r["variant"]) for r in runs):
        group = [r for r in runs if (r["mode"], r["variant"]) == key]
        row = {k: v for k, v in group[-1].items() if k not in ("repeat", "wall_s")}
        for field in ("tokens_per_s", "tokens_per_step", "first_step_s", "final_loss", "mfu", "peak_mem_gib"):
            values = [r[field] for r in group if r[field] is not None]
            row[field] = (
                round(statistics.median(values), 5 if field == "final_loss" else 2) if values else None
            )
        row["wall_s"] = round(sum(r["wall_s"] for r in group), 1)
        row["repeats"] = len(group)
        row["runs"] = [
            {k: r[k] for k in ("tokens_per_s", "first_step_s", "final_loss", "wall_s")} for r in group
        ]
        if "order_verified" in row:
            row["order_verified"] = all(r["order_verified"] for r in group)
        rows.append(row)
    for r in rows:
        base = {v["variant"]: v["tokens_per_s"] for v in rows if v["mode"] == r["mode"]}
        for ref in ("padded", "flat_flex", "lf_default", "lf_best"):
            r[f"ratio_vs_{ref}"] = round(r["tokens_per_s"] / base[ref], 3) if base.get(ref) else None
        for ref in ("lf_default", "lf_best"):  # each repeat against the peer of the same repeat
            paired = paired_ratios(runs, r["mode"], r["variant"], ref)
            r[f"ratio_vs_{ref}_by_repeat"] = paired or None
            r[f"paired_median_vs_{ref}"] = round(statistics.median(paired), 3) if paired else None
        for parent in ("runtime", "runtime_tokens"):  # a lever's effect: against its parent with every lever
            if r["variant"].startswith(parent + "-"):
                r[f"ratio_vs_{parent}"] = (
                    round(r["tokens_per_s"] / base[parent], 3) if base.get(parent) else None
                )
    return rows


def paired_ratios(runs: list[dict], mode: str, variant: str, ref: str) -> list[float]:
    """tokens/s of `variant` over `ref`'s in the same repeat, for every repeat that ran both."""
    speed = {(r["variant"], r["repeat"]): r["tokens_per_s"] for r in runs if r["mode"] == mode}
    repeats = sorted({rep for v, rep in speed if v == variant})
    return [round(speed[variant, rep] / speed[ref, rep], 3) for rep in repeats if speed.get((ref, rep))]


def write_results(path: str, runs: list[dict], context: dict) -> list[dict]:
    """A flat list of rows, each carrying its context, so a script can check any row on its own.
    Rewritten after every run: a run cut short still leaves the rows it finished."""
    rows = summarise(runs)
    Path(path).write_text(json.dumps([{**r, **context} for r in rows], indent=2) + "\n")
    return rows


def print_table(rows: list[dict], peak_tflops: float) -> None:
    def ratio(value):
        return f"{value:.2f}" if value is not None else "n/a"

    for mode in dict.fromkeys(r["mode"] for r in rows):
        print(f"\n== {mode} SFT (MFU against the measured bf16 matmul peak {peak_tflops:.0f} TFLOP/s) ==")
        print(
            f"{'variant':<22} {'tokens/s':>9} {'tok/step':>8} {'1st s':>6} {'MFU':>6} {'GiB':>5} {'loss':>8} "
            f"{'x padded':>8} {'x lf_def':>8} {'x lf_best':>9} {'n':>2}"
        )
        for r in (r for r in rows if r["mode"] == mode):
            mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
            print(
                f"{r['variant']:<22} {r['tokens_per_s']:>9.0f} {r['tokens_per_step']:>8.0f} "
                f"{r['first_step_s']:>6.1f} {mfu:>6} {r['peak_mem_gib'] or 0:>5.1f} {r['final_loss']:>8.4f} "
                f"{ratio(r['ratio_vs_padded']):>8} {ratio(r['ratio_vs_lf_default']):>8} "
                f"{ratio(r['ratio_vs_lf_best']):>9} {r['repeats']:>2}"
            )


def versions(lf_python: str | None) -> dict:
    """Library versions as imported (the GPU run imports the carried wheels from PYTHONPATH first), and
    LLaMA-Factory's venv's when it runs."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"torch": torch.__version__, "python": platform.python_version()}
    for name in ("transformers", "peft", "accelerate", "datasets", "liger-kernel", "triton", "flash-attn"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    if lf_python:
        code = (
            "import json, importlib.metadata as m; print(json.dumps({n: m.version(n) for n in "
            "('llamafactory', 'torch', 'transformers', 'peft', 'accelerate', 'datasets', 'trl')}))"
        )
        proc = subprocess.run(
            [lf_python, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""}
        )
        out["llamafactory_venv"] = json.loads(proc.stdout) if proc.returncode == 0 else proc.stderr[-300:]
    return out


def estimate_wall_s(variant: str, tokens_per_step: float, args) -> float:
    """PREDICTED wall seconds of one variant on an H100 (setup + timed steps), printed before the run."""
    base = "runtime" if variant.startswith("runtime") else variant
    by_tokens = variant == "lf_best" or variant.startswith("runtime_tokens")  # ~2.7x the examples per step
    step_tokens = tokens_per_step * (2.7 if by_tokens else 1)
    return PREDICTED_SETUP_S[base] + args.steps * step_tokens / PREDICTED_TPS[base]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU: checks everything runs")
    parser.add_argument(
        "--shape", choices=sorted(SHAPES), default=None, help="default llama1b (smoke: smoke)"
    )
    parser.add_argument("--modes", default="full,lora")
    parser.add_argument("--variants", default=None, help=f"default: GPU {GPU_VARIANTS}; CPU {CPU_VARIANTS}")
    parser.add_argument("--levers", action="store_true", help="also run the runtime once per lever in LEVERS")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per variant")
    parser.add_argument("--warmup", type=int, default=None, help="steps excluded from the timing (>= 1)")
    parser.add_argument("--repeats", type=int, default=1, help="run the whole plan this often, interleaved")
    parser.add_argument("--deadline-s", type=float, default=None, help="skip runs predicted to end later")
    parser.add_argument(
        "--lf-python",
        default=os.environ.get("XGEN_LF_PYTHON"),
        help="python of LLaMA-Factory's own venv (bench/lf_venv.sh makes one); default $XGEN_LF_PYTHON",
    )
    parser.add_argument("--tokens-keys", default=None, help="runtime_tokens' keys (JSON); see tokens_keys()")
    parser.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_main(args.child)
    # SIGTERM (timeout, the device tool) unwinds like an exception, so `reaped` ends the running variant.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    args.shape_name = args.shape or ("smoke" if args.smoke else "llama1b")
    args.shape = SHAPES[args.shape_name]
    on_cpu = not torch.cuda.is_available()
    args.variants = args.variants or (
        SMOKE_VARIANTS if args.smoke else CPU_VARIANTS if on_cpu else GPU_VARIANTS
    )
    args.steps = args.steps or (4 if args.smoke else 12 if args.shape_name == "cpu" else 60)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 2 if on_cpu else 15)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()

    variants = [v for v in args.variants.split(",") if v]
    variants += [f"runtime-{lever}" for lever in LEVERS] if args.levers else []
    unknown = [
        v
        for v in variants
        if v not in (*PREDICTED_TPS, "runtime_tokens")
        and v.removeprefix("runtime-").removeprefix("runtime_tokens-") not in LEVERS
    ]
    if unknown:
        print(f"--variants: unknown {unknown}; known: {GPU_VARIANTS}", file=sys.stderr)
        return 2
    if any(v.startswith("lf_") for v in variants) and not args.lf_python:
        print(
            "--lf-python: the LLaMA-Factory variants need its venv's python (bash bench/lf_venv.sh DIR; "
            "then --lf-python DIR/bin/python or XGEN_LF_PYTHON)",
            file=sys.stderr,
        )
        return 2
    print(f"device: {device_name()}  shape {args.shape_name}: {asdict(args.shape)}")
    print(
        f"steps: {args.steps} (warm-up {args.warmup}), {EXAMPLES_PER_STEP} examples per optimizer step, "
        f"{args.repeats} repeat(s)"
    )
    args.peak_tflops = measure_peak_tflops()
    context = {
        "gpu": device_name(),
        "shape": args.shape_name,
        "peak_bf16_tflops_measured": None if math.isnan(args.peak_tflops) else round(args.peak_tflops, 1),
        "smoke": args.smoke,
        "steps": args.steps,
        "warmup": args.warmup,
        "examples_per_step": EXAMPLES_PER_STEP,
        "precision": "bf16 autocast" if args.shape.dtype == "bf16" and not on_cpu else "fp32",
        "versions": versions(args.lf_python if any(v.startswith("lf_") for v in variants) else None),
    }
    with tempfile.TemporaryDirectory() as work:
        args.work = Path(work)
        args.model_dir = build_model_dir(args.shape, args.work / "model")
        tokenizer = build_tokenizer(args.shape.vocab)
        raw = generate_examples(args.shape)
        data_dir = args.work / "data"
        data_dir.mkdir()
        (data_dir / "bench_sft.json").write_text(json.dumps(raw))
        info = {"bench_sft": {"file_name": "bench_sft.json"}}
        (data_dir / "dataset_info.json").write_text(json.dumps(info))
        rows = tokenize_for_baseline(raw, tokenizer, args.shape.max_len)
        args.example_lengths = [len(r["input_ids"]) for r in rows]
        mean_len = float(np.mean(args.example_lengths))
        args.tokens_keys = (
            json.loads(args.tokens_keys) if args.tokens_keys else tokens_keys(args.shape, mean_len)
        )
        eval_rows = rows[:EVAL_EXAMPLES]
        tokens_per_step = EXAMPLES_PER_STEP * float(np.mean(args.example_lengths))
        # Odd repeats run the variants in reverse (A B, B A, ...): a machine that speeds up or slows down
        # over a repeat then favours no variant in the median, and neighbours in time are compared.
        plan = [
            (rep, mode, v)
            for rep in range(args.repeats)
            for mode in args.modes.split(",")
            for v in (variants if rep % 2 == 0 else variants[::-1])
        ]
        estimates = {v: estimate_wall_s(v, tokens_per_step, args) for v in variants}
        print(
            f"{tokens_per_step:.0f} non-pad tokens per 8-example step on average; "
            "PREDICTED wall time on an H100:"
        )
        for variant in variants:
            print(f"  {variant:<24} ~{estimates[variant]:.0f} s per mode")
        print(f"  total ~{sum(estimates[v] for _, _, v in plan):.0f} s for {len(plan)} runs", flush=True)
        runs, failed, rows_out = [], [], []
        for rep, mode, variant in plan:
            elapsed = time.perf_counter() - started
            if args.deadline_s and not args.smoke and elapsed + estimates[variant] > args.deadline_s:
                print(f"[{rep}/{mode}/{variant}] skipped: past --deadline-s at {elapsed:.0f} s", flush=True)
                continue
            t = time.perf_counter()
            try:
                row = run_one(args, mode, variant, rep, data_dir, eval_rows)
            except Exception:  # one broken variant must not cost the others' rows; the exit status says it
                traceback.print_exc()
                print(f"[{rep}/{mode}/{variant}] FAILED after {time.perf_counter() - t:.0f} s", flush=True)
                failed.append(f"{mode}/{variant}")
                reset_device()
                continue
            print(f"[{rep}/{mode}/{variant}] {row}", flush=True)
            runs.append(row)
            rows_out = write_results(args.out, runs, context)
    print_table(rows_out, args.peak_tflops)
    print(f"\nwrote {args.out} ({time.perf_counter() - started:.0f} s in all)")
    if failed:
        print(f"FAILED runs: {', '.join(failed)}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
