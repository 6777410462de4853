"""Peak device memory of real training steps against `xgen plan`'s prediction (docs/plan.md), one GPU.

    python bench/plan_peak.py            # on a CUDA GPU; one JSON line per case (scripts/gpu_checks.sh)
    python bench/plan_peak.py --tiny     # CPU smoke run of the same code, a small shape (no memory figure)

Each case builds Llama-3.2-1B's shape (random weights) as the runtime loads it (full: fp32 weights under
bf16 autocast; LoRA: bf16 base, fp32 adapter), takes two AdamW steps and reads
torch.cuda.max_memory_allocated, which the plan's peak (world 1: no sharding, no buckets) should match
within 10%.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from runtime.contract.plan.shape import lora_params, shape_from_config, total_params  # noqa: E402
from runtime.contract.plan.terms import Run, breakdown, peak  # noqa: E402

LLAMA32_1B = dict(
    model_type="llama",
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=64,
    vocab_size=128256,
    tie_word_embeddings=True,
)
TINY = dict(
    LLAMA32_1B,
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    vocab_size=1024,
)
# (method, gradient checkpointing, micro-batch, cutoff_len)
CASES = [("full", False, 1, 2048), ("full", True, 4, 2048), ("lora", False, 4, 2048), ("lora", True, 8, 4096)]


def build(config: dict, method: str, device: str, checkpointing: bool) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = torch.float32 if method == "full" or device == "cpu" else torch.bfloat16
    hf = AutoConfig.for_model(**config, attn_implementation="sdpa")
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(hf, dtype=dtype)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        from runtime.model import linear_module_names, upcast_trainable

        model = get_peft_model(model, LoraConfig(r=8, target_modules=linear_module_names(model)))
        upcast_trainable(model)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
        model.enable_input_require_grads()
    return model.train()


def measure(config: dict, case: tuple, device: str) -> dict:
    method, checkpointing, micro_batch, seq = case
    model = build(config, method, device, checkpointing)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    ids = torch.randint(0, config["vocab_size"], (micro_batch, seq), device=device)
    start = time.perf_counter()
    for _ in range(2):
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    measured = torch.cuda.max_memory_allocated() if device == "cuda" else None
    shape = shape_from_config(config)
    trainable = total_params(shape) if method == "full" else lora_params(shape, "all", 8)
    run = Run(
        shape=shape,
        method=method,
        trainable=trainable,
        device=device,
        micro_batch=micro_batch,
        seq=seq,
        checkpointing=checkpointing,
        padded=False,
        lora_rank=8,
    )
    predicted = peak(run)
    del model, optimizer, loss
    if device == "cuda":
        torch.cuda.empty_cache()
    return {
        "case": dict(method=method, checkpointing=checkpointing, micro_batch=micro_batch, cutoff_len=seq),
        "predicted_gib": round(predicted / 2**30, 3),
        "measured_gib": None if measured is None else round(measured / 2**30, 3),
        "error": None if measured is None else round(predicted / measured - 1, 4),
        "terms_gib": {t.name: round(t.bytes / 2**30, 3) for t in breakdown(run) if t.bytes},
        "seconds": round(time.perf_counter() - start, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true", help="a small shape on CPU: checks the code runs")
    args = parser.parse_args()
    device = "cpu" if args.tiny else "cuda"
    config = TINY if args.tiny else LLAMA32_1B
    cases = [(m, c, 1, 64) for m, c, _, _ in CASES] if args.tiny else CASES
    for case in cases:
        print(json.dumps(measure(config, case, device)), flush=True)


if __name__ == "__main__":
    main()
