"""From a parsed `train:` config and a cluster to Runs: the configured one, the alternatives, which fit,
and which one to recommend (the least communication per optimizer step that fits)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runtime.config.rules import uses_reference
from runtime.contract.plan.shape import Shape, freeze_params, lora_params, total_params
from runtime.contract.plan.terms import Run, peak, weight_bytes

PAIRWISE_STAGES = ("dpo", "rm")  # a chosen and a rejected row per example in one forward

HEADROOM = (
    0.10  # of the device memory kept free: allocator fragmentation, CUDA/CANN context, NCCL/HCCL buffers
)

# (strategy, offload): the alternatives planned (ZeRO-1 has no offload stage here; FSDP2's offload is
# the `offload` word of train.fsdp, as in transformers' TrainingArguments).
STRATEGIES: tuple[tuple[str, bool], ...] = (
    ("ddp", False),
    ("zero1", False),
    ("zero2", False),
    ("zero2", True),
    ("zero3", False),
    ("zero3", True),
    ("fsdp2", False),
    ("fsdp2", True),
)


def strategy_change(configured: Run, chosen: Run) -> list[str]:
    """What to write in train: to go from the configured strategy to the chosen one, removals included."""
    parts = []
    if chosen.deepspeed:
        parts.append(f"train.deepspeed: z{chosen.stage}{'_offload' if chosen.offload else ''}")
    elif chosen.strategy == "fsdp2":
        parts.append(f"train.fsdp: full_shard auto_wrap{' offload' if chosen.offload else ''}")
    if configured.deepspeed and not chosen.deepspeed:
        parts.append("remove train.deepspeed")
    if configured.strategy == "fsdp2" and chosen.strategy != "fsdp2":
        parts.append("remove train.fsdp and train.fsdp_config")
    return parts


def strategy_name(strategy: str, offload: bool) -> str:
    name = {"ddp": "DDP", "fsdp2": "FSDP2"}.get(strategy, f"ZeRO-{strategy[-1]}")
    return name + (" +offload" if offload else "")


def configured_strategy(train: Any) -> tuple[str, bool]:
    """(strategy, offload) of a parsed TrainConfig: its DeepSpeed JSON's ZeRO stage, FSDP, else DDP."""
    ds = train.deepspeed_config
    if ds is None and isinstance(train.deepspeed, str):
        from runtime.config.files import lf_named_stage
        from runtime.contract.zero import NAMED_STAGES, zero_config

        # a named stage, or a JSON not visible from here that LLaMA-Factory's file name says (ds_z3_config…)
        named = train.deepspeed if train.deepspeed in NAMED_STAGES else lf_named_stage(train.deepspeed)
        ds = zero_config(named) if named else None
    if ds is not None:
        zero = ds.get("zero_optimization", {})
        stage = int(zero.get("stage", 0))
        offload = (zero.get("offload_optimizer") or {}).get("device", "none") not in ("none", None)
        return ("ddp" if stage == 0 else f"zero{stage}"), offload
    if train.fsdp:
        fc = train.fsdp_config if isinstance(train.fsdp_config, dict) else {}
        return "fsdp2", bool(fc.get("cpu_offload") or fc.get("offload_params"))
    return "ddp", False


def trainable_params(shape: Shape, train: Any) -> int:
    """Parameters the optimizer updates: all (full), the trained layers (freeze), the adapter (lora/oft:
    OFT is planned as LoRA of the same rank)."""
    if train.finetuning_type == "full":
        return total_params(shape)
    if train.finetuning_type == "freeze":
        return freeze_params(shape, train.freeze_trainable_layers)
    target = train.lora_target if train.finetuning_type == "lora" else train.oft_target
    return lora_params(shape, target, max(train.lora_rank, 1), dora=bool(train.use_dora))


def run_from_config(shape: Shape, train: Any, world: int, device: str = "cuda") -> Run:
    """The configured run on one device of `world` data-parallel ranks."""
    strategy, offload = configured_strategy(train)
    precision = "bf16" if (train.bf16 or train.pure_bf16) else "fp16" if train.fp16 else "fp32"
    attention = {"eager": "eager", "disabled": "eager", "fa2": "fa2"}.get(train.flash_attn, "sdpa")
    method = "full" if train.finetuning_type == "full" else train.finetuning_type
    method = "lora" if method == "oft" else method
    return Run(
        shape=shape,
        method=method,
        trainable=trainable_params(shape, train),
        precision=precision,
        pure_bf16=bool(train.pure_bf16),
        quant_bits=train.quantization_bit,
        double_quant=bool(train.double_quantization),
        device=device,
        strategy=strategy,
        offload=offload,
        world=world,
        micro_batch=train.per_device_train_batch_size,
        seq=train.cutoff_len,
        checkpointing=bool(train.gradient_checkpointing),
        attention=attention,
        padded=not (train.packing or train.neat_packing),
        optimizer_states=0 if train.optim in ("sgd",) else 2,
        optim_bytes=1 if "8bit" in train.optim else None,
        lora_rank=max(train.lora_rank, 1),
        lora_target=train.lora_target if train.finetuning_type == "lora" else "all",
        dora=train.finetuning_type == "lora" and bool(train.use_dora),
        freeze_layers=train.freeze_trainable_layers,
        rows_per_example=2 if train.stage in PAIRWISE_STAGES else 1,
        checkpointing_key=(
            "disable_gradient_checkpointing"
            if "disable_gradient_checkpointing" in getattr(train, "explicit", ())
            else "gradient_checkpointing"
        ),
        reference_copy=uses_reference(train)
        and (train.finetuning_type not in ("lora", "oft") or bool(train.ref_model)),
    )


def communication(run: Run, accumulation: int) -> int:
    """Bytes one rank sends per optimizer step, ring collectives (ZeRO paper sec. 7: DDP all-reduce 2*Psi;
    ZeRO-1 reduce-scatter + all-gather 2*Psi; ZeRO-2 reduce-scatters every micro-batch; ZeRO-3 and FSDP2
    all-gather the weights in forward and backward and reduce-scatter the gradients: 3*Psi per micro-batch).
    Offload adds the CPU<->device copies of the trainable partition (counted like communication)."""
    if run.world <= 1:
        comm = 0
    else:
        c = 2 if run.precision != "fp32" or run.pure_bf16 else 4
        t, everything = run.trainable * c, total_params(run.shape) * c
        if run.strategy == "ddp":  # DDP all-reduces the gradients in the trainable weights' dtype
            comm = 2 * run.trainable * weight_bytes(run, trainable=True)
        elif run.strategy == "zero1":
            comm = 2 * t
        elif run.strategy == "zero2":
            comm = t * accumulation + t
        else:
            comm = (2 * everything + t) * accumulation
    if run.offload:
        comm += 2 * run.trainable * 4 // max(run.world, 1) + (
            2 * total_params(run.shape) * 2 // max(run.world, 1) * accumulation if run.stage == 3 else 0
        )
    return comm


@dataclass(frozen=True)
class Candidate:
    run: Run
    peak: int
    fits: bool
    accumulation: int  # gradient_accumulation_steps that keeps the configured global batch
    communication: int


def _divisors_up_to(n: int) -> list[int]:
    return [b for b in range(1, n + 1) if n % b == 0]


def candidates(configured: Run, memory: int | None, accumulation: int) -> list[Candidate]:
    """Every strategy x offload x checkpointing x micro-batch (every divisor of the configured micro-batch
    times gradient accumulation: the same global batch, with gradient accumulation to match), judged
    against `memory` minus HEADROOM."""
    global_micro = configured.micro_batch * accumulation
    out = []
    for strategy, offload in STRATEGIES:
        for checkpointing in (False, True):
            for mb in _divisors_up_to(global_micro):
                run = configured.but(
                    strategy=strategy, offload=offload, checkpointing=checkpointing, micro_batch=mb
                )
                p = peak(run)
                acc = global_micro // mb
                fits = memory is not None and p <= memory * (1 - HEADROOM)
                out.append(Candidate(run, p, fits, acc, communication(run, acc)))
    return out


def rank_key(c: Candidate) -> tuple[int, int, int, int]:
    """Offload only when nothing else fits (the optimizer step then runs on the host CPU, and PCIe is
    slower than the fabric), then the least communication, no recomputation, the larger micro-batch."""
    return (c.run.offload, c.communication, c.run.checkpointing, -c.run.micro_batch)


def recommend(cands: list[Candidate]) -> Candidate | None:
    fitting = [c for c in cands if c.fits]
    return min(fitting, key=rank_key) if fitting else None


def change_line(configured: Run, chosen: Candidate, accumulation: int) -> str:
    """What to change in the config to get `chosen`, in one line."""
    r = chosen.run
    parts = []
    if (r.strategy, r.offload) != (configured.strategy, configured.offload):
        parts += strategy_change(configured, r)
    if r.checkpointing != configured.checkpointing:
        if configured.checkpointing_key == "disable_gradient_checkpointing":  # the key the config wrote
            parts.append(f"train.disable_gradient_checkpointing: {'false' if r.checkpointing else 'true'}")
        else:
            parts.append(f"train.gradient_checkpointing: {'true' if r.checkpointing else 'false'}")
    if r.micro_batch != configured.micro_batch:
        parts.append(f"train.per_device_train_batch_size: {r.micro_batch}")
    if chosen.accumulation != accumulation:
        parts.append(f"train.gradient_accumulation_steps: {chosen.accumulation} (same global batch)")
    return "; ".join(parts) if parts else "nothing: the configured run is the recommended one"
