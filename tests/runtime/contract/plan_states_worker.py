"""One rank of the model-states measurement (tests/runtime/contract/test_plan_states.py), on CPU with gloo.

    python -m torch.distributed.run --standalone --nproc_per_node 2 plan_states_worker.py \
        STRATEGY METHOD PRECISION OUT

STRATEGY: ddp, fsdp2, or a named ZeRO stage of runtime/contract/zero.py (z1, z2, z3, z2_offload,
z3_offload); METHOD: full, lora, dora, freeze; PRECISION: fp32, or bf16 (DeepSpeed's bf16 section).

Builds a small Llama, wraps it as the runtime's strategies do (torch DDP, DeepSpeed with the runtime's
named ZeRO JSON, FSDP2 fully_shard per layer; torch AdamW with the Trainer's two parameter groups), takes
one optimizer step, runs the next forward and backward, and then counts the bytes of every tensor this
rank's Python objects hold (distinct storages; a ZeRO-3 parameter's partition is its ds_tensor, an FSDP2
DTensor its local shard), minus the batch and the named communication buffers, which the plan counts
apart, and minus module buffers, scalars and what existed before the model, which it does not count.
ZeRO-1 is counted at the end of that backward, before the engine's reduction moves the gradients into
its bucket and partition: all of them exist then. Offload: on CPU the host and the "device" are the same
memory, so what DeepSpeed placed on its offload device (found by the attributes that hold it) is
counted apart, as `host`. Writes OUT.rank<N>.json; PLAN_STATES_DEBUG=1 adds the biggest storages.
"""

from __future__ import annotations

import gc
import json
import os
import sys
from types import SimpleNamespace

import torch
import torch.distributed as dist
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.trainer_pt_utils import get_parameter_names

CONFIG = dict(
    model_type="llama",
    vocab_size=2048,
    hidden_size=256,
    intermediate_size=688,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=2,
    tie_word_embeddings=False,
)
MICRO_BATCH, SEQ = 1, 32
FREEZE_LAYERS = 2  # freeze_trainable_layers: the last 2 of the 4 layers train
BEFORE: dict[int, int] = {}  # storages alive before the model is built: constants of the imported modules


def storages(tensors) -> dict[int, int]:
    out: dict[int, int] = {}
    for t in tensors:
        local = getattr(t, "_local_tensor", None)
        t = local if isinstance(local, torch.Tensor) else t
        if t.device.type == "meta":
            continue
        st = t.untyped_storage()
        if st.nbytes():
            out[st.data_ptr()] = st.nbytes()
    return out


def live_tensors() -> list[torch.Tensor]:
    found = []
    for obj in gc.get_objects():
        try:
            if isinstance(obj, torch.Tensor):
                found.append(obj)
        except ReferenceError:
            continue
    return found


def model(method: str) -> torch.nn.Module:
    """The Llama of CONFIG in fp32 (the runtime keeps fp32 weights on CPU), tuned as the runtime does:
    LoRA/DoRA r 8 on every linear but the head (`lora_target: all`), or freeze's last FREEZE_LAYERS
    layers by runtime.model.apply_freeze."""
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(AutoConfig.for_model(**CONFIG), dtype=torch.float32)
    if method in ("lora", "dora"):
        from peft import LoraConfig, get_peft_model

        from runtime.model import linear_module_names

        config = LoraConfig(r=8, target_modules=linear_module_names(m), use_dora=method == "dora")
        m = get_peft_model(m, config)
    elif method == "freeze":
        from runtime.model import apply_freeze

        cfg = SimpleNamespace(
            freeze_trainable_layers=FREEZE_LAYERS,
            freeze_trainable_modules="all",
            freeze_extra_modules=None,
            use_llama_pro=False,
            pure_bf16=False,
        )
        m = apply_freeze(m, cfg, stage="sft")
    return m


def deepspeed_engine(m: torch.nn.Module, stage: str, precision: str):
    import deepspeed

    from runtime.contract.zero import zero_config
    from runtime.distributed import deepspeed_for_device
    from runtime.scaffolding.cpu import patch_deepspeed_shm_build

    patch_deepspeed_shm_build()
    ds, _ = deepspeed_for_device(zero_config(stage), "cpu")  # offload: torch AdamW, as the runtime on CPU
    h = CONFIG["hidden_size"]
    auto = {  # what transformers' HfTrainerDeepSpeedConfig fills in for "auto"
        "reduce_bucket_size": h * h,
        "stage3_prefetch_bucket_size": int(0.9 * h * h),
        "stage3_param_persistence_threshold": 10 * h,
    }
    for key, value in list(ds["zero_optimization"].items()):
        if value == "auto":
            ds["zero_optimization"][key] = auto[key]
    ds.update(
        train_batch_size=MICRO_BATCH * 2,
        train_micro_batch_size_per_gpu=MICRO_BATCH,
        gradient_accumulation_steps=1,
        gradient_clipping=1.0,
    )
    ds["fp16"]["enabled"] = False
    ds["bf16"]["enabled"] = precision == "bf16"
    engine, optimizer, _, _ = deepspeed.initialize(model=m, optimizer=adamw(m), config=ds)
    return engine, optimizer


def adamw(m: torch.nn.Module) -> torch.optim.Optimizer:
    """torch AdamW with transformers' Trainer groups (`create_optimizer`): weight decay, then none (biases
    and norms, `Trainer.get_decay_parameter_names`, whose patterns these are: importing the Trainer costs
    each rank 2.5 s); DeepSpeed partitions each group apart and drops an empty one."""
    no_decay = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]
    decay = set(get_parameter_names(m, [torch.nn.LayerNorm], no_decay))
    named = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
    groups = [[p for n, p in named if n in decay], [p for n, p in named if n not in decay]]
    return torch.optim.AdamW([{"params": g} for g in groups if g], lr=1e-4)


def comm_buffers(optimizer) -> list[torch.Tensor]:
    """DeepSpeed's gradient bucket tensors (`ipg_buffer`, `ipg_buckets[dtype].buffer`) and ZeRO-1/2
    offload's device-side staging buffer (`temp_grad_buffer_for_gpu_offload`): the plan's `ZeRO buckets`
    term, not model states."""
    found = []
    for name, value in vars(optimizer).items():
        if "ipg" not in name and name != "temp_grad_buffer_for_gpu_offload":
            continue
        values = (
            value.values()
            if isinstance(value, dict)
            else value
            if isinstance(value, (list, tuple))
            else [value]
        )
        for v in values:
            v = getattr(v, "buffer", v)
            for t in v if isinstance(v, list) else [v]:
                if isinstance(t, torch.Tensor):
                    found.append(t)
    return found


def offloaded(optimizer, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """What DeepSpeed keeps on its offload device (host memory; on CPU the same memory as the "device").
    ZeRO-1/2 `cpu_offload`: the fp32 partition and its gradient (`single_partition_of_fp32_groups`), the
    host staging buffers (`temp_grad_buffer_for_cpu_offload`, `param_buffer_of_bit16_for_cpu_offload_groups`)
    and accumulated gradients. ZeRO-3 `offload_optimizer`: the fp32 partition (`fp32_partitioned_groups_flat`)
    and the gradient partitions (`grad_partitions_flat_buffer`); `offload_param`: the parameter partitions
    (`param_groups_fp16_flat_cpu_memory`, the `ds_tensor` of every parameter not kept whole). And the
    wrapped torch optimizer's states, which follow the fp32 partition onto the host."""
    if not any(getattr(optimizer, a, False) for a in ("cpu_offload", "offload_optimizer", "offload_param")):
        return []
    found: list[torch.Tensor] = []
    for name in ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat"):
        for t in getattr(optimizer, name, None) or []:
            found += [t, t.grad] if t.grad is not None else [t]
    found += list(getattr(optimizer, "param_buffer_of_bit16_for_cpu_offload_groups", None) or [])
    found += list((getattr(optimizer, "accumulated_grads_in_cpu", None) or {}).values())
    for name in ("temp_grad_buffer_for_cpu_offload", "grad_partitions_flat_buffer"):
        if isinstance(getattr(optimizer, name, None), torch.Tensor):
            found.append(getattr(optimizer, name))
    if getattr(optimizer, "offload_param", False):
        found += list(getattr(optimizer, "param_groups_fp16_flat_cpu_memory", None) or [])
        found += [
            p.ds_tensor for p in params if getattr(p, "ds_tensor", None) is not None and not p.ds_persist
        ]
    for state in optimizer.optimizer.state.values():
        found += [v for v in state.values() if isinstance(v, torch.Tensor)]
    return found


def held_bytes(m: torch.nn.Module) -> tuple[dict[int, int], dict[int, int]]:
    """Every storage this rank's Python objects hold, with the parameters and their gradients (p.grad made
    by autograd in C++ has no Python object until asked for: gc alone would miss it), split into what may
    be a model state and what is not: the module's buffers (rotary inv_freq), scalars (the loss, step
    counts, DeepSpeed's per-parameter norms) and what the imports held before the model was built
    (module-level constants), which no memory term counts."""
    gc.collect()
    params = list(m.parameters())  # FSDP2's sharded DTensors: ask after wrapping, or the full ones stay alive
    grads = [p.grad for p in params if p.grad is not None]
    accum = [p.grad_accum for p in params if getattr(p, "grad_accum", None) is not None]
    live = live_tensors()
    held = storages([*live, *params, *grads, *accum])
    scalars = [t for t in live if t.dim() == 0 and t.untyped_storage().nbytes() <= 8]
    other = storages([*m.buffers(), *scalars]) | BEFORE
    return {k: n for k, n in held.items() if k not in other}, other


def debug_listing(m, optimizer, excluded: list[torch.Tensor], host: list[torch.Tensor]) -> list:
    """(bytes, device | host | buffer, the attribute or parameter name holding it) of the biggest storages."""
    names: dict[int, str] = {}
    owners = [(n, v) for n, v in vars(optimizer).items()] + [(n, [p]) for n, p in m.named_parameters()]
    for name, value in owners:
        values = (
            value.values()
            if isinstance(value, dict)
            else value
            if isinstance(value, (list, tuple))
            else [value]
        )
        for v in values:
            for t in v if isinstance(v, (list, tuple)) else [v]:
                if isinstance(t, torch.Tensor):
                    for ptr in storages([t]):
                        names.setdefault(ptr, name)
                    for ptr in storages([t.grad] if t.grad is not None else []):
                        names.setdefault(ptr, name + ".grad")
    skip, offload = storages(excluded), storages(host)
    smallest = int(os.environ.get("PLAN_STATES_DEBUG_MIN", 100000))
    listing = {}
    for ptr, n in held_bytes(m)[0].items() | skip.items() | offload.items():
        if n > smallest:
            where = "host" if ptr in offload else "buffer" if ptr in skip else "device"
            listing[ptr] = (n, where, names.get(ptr, "?"))
    return sorted(listing.values(), reverse=True)[:200]


def main() -> None:
    strategy, method, precision, out = sys.argv[1:5]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    BEFORE.update(storages(live_tensors()))
    m = model(method)
    m.train()
    ids = torch.randint(
        0, CONFIG["vocab_size"], (MICRO_BATCH, SEQ), generator=torch.Generator().manual_seed(rank)
    )
    buffers: list[torch.Tensor] = []
    host: list[torch.Tensor] = []
    held: dict[int, int] = {}
    excluded: dict[int, int] = {}
    other: dict[int, int] = {}
    if strategy.startswith("z"):
        engine, optimizer = deepspeed_engine(m, strategy, precision)
        if strategy == "z1":  # ZeRO-1 reduces after the backward: count the full gradients before that
            reduce = engine.allreduce_gradients

            def counted_then_reduced(*args, **kwargs):
                counted, not_states = held_bytes(m)
                held.update(counted)
                other.update(not_states)
                excluded.update(storages(comm_buffers(optimizer)))  # the bucket is emptied after
                return reduce(*args, **kwargs)

            engine.allreduce_gradients = counted_then_reduced
        for step in range(2):
            held.clear()
            excluded.clear()
            loss = engine(input_ids=ids, labels=ids).loss
            engine.backward(loss)
            if step == 0:
                engine.step()
        buffers = comm_buffers(optimizer)
        host = offloaded(optimizer, list(m.parameters()))
    else:
        if strategy == "ddp":
            wrapped = torch.nn.parallel.DistributedDataParallel(m)
        else:
            from torch.distributed.fsdp import fully_shard

            for layer in m.get_decoder().layers:
                fully_shard(layer)
            wrapped = fully_shard(m)
        optimizer = adamw(m)
        for step in range(2):
            loss = wrapped(input_ids=ids, labels=ids).loss
            loss.backward()
            if step == 0:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
    del loss
    if not held:
        held, other = held_bytes(m)
    excluded.update(storages([ids, *buffers]))
    offload = storages(host)
    device = sum(n for ptr, n in held.items() if ptr not in excluded and ptr not in offload)
    result = {
        "rank": rank,
        "bytes": device,
        "host": sum(offload.values()),
        "buffers": sum(excluded.values()) - ids.numel() * 8,
        "other": sum(other.values()),
    }
    if os.environ.get("PLAN_STATES_DEBUG"):
        result["big"] = debug_listing(m, optimizer, [ids, *buffers], host)
    with open(f"{out}.rank{rank}.json", "w") as f:
        json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)  # DeepSpeed's atexit hooks can hang a gloo group on the way out


if __name__ == "__main__":
    main()
