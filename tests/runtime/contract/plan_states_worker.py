"""One rank of the model-states measurement (tests/runtime/contract/test_plan_states.py), on CPU with gloo.

    python -m torch.distributed.run --standalone --nproc_per_node 2 plan_states_worker.py STRATEGY METHOD OUT

Builds a small Llama, wraps it as the runtime's strategies do (torch DDP, DeepSpeed with the runtime's
named ZeRO JSON, FSDP2 fully_shard per layer), takes one optimizer step, runs the next forward and
backward, and then counts the bytes of every tensor this rank's Python objects hold (distinct storages;
a ZeRO-3 parameter's partition is its ds_tensor, an FSDP2 DTensor its local shard), minus the batch and
the named communication buffers, which the plan counts apart. Writes OUT.rank<N>.json.
"""

from __future__ import annotations

import gc
import json
import os
import sys

import torch
import torch.distributed as dist
from transformers import AutoConfig, AutoModelForCausalLM

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
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(AutoConfig.for_model(**CONFIG), dtype=torch.float32)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        from runtime.model import linear_module_names

        m = get_peft_model(m, LoraConfig(r=8, target_modules=linear_module_names(m)))
    return m


def deepspeed_engine(m: torch.nn.Module, stage: str):
    import deepspeed

    from runtime.contract.zero import zero_config
    from runtime.scaffolding.cpu import patch_deepspeed_shm_build

    patch_deepspeed_shm_build()
    ds = zero_config(stage)
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
    ds["bf16"]["enabled"] = False
    trainable = [p for p in m.parameters() if p.requires_grad]
    engine, optimizer, _, _ = deepspeed.initialize(
        model=m, optimizer=torch.optim.AdamW(trainable, lr=1e-4), config=ds
    )
    return engine, optimizer


def comm_buffers(optimizer) -> list[torch.Tensor]:
    """DeepSpeed's gradient bucket tensors (`ipg_buffer`, `ipg_buckets[dtype].buffer`): the plan's
    `ZeRO buckets` term, not model states."""
    found = []
    for name, value in vars(optimizer).items():
        if "ipg" not in name:
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
            if isinstance(v, torch.Tensor):
                found.append(v)
    return found


def main() -> None:
    strategy, method, out = sys.argv[1], sys.argv[2], sys.argv[3]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    m = model(method)
    m.train()
    ids = torch.randint(
        0, CONFIG["vocab_size"], (MICRO_BATCH, SEQ), generator=torch.Generator().manual_seed(rank)
    )
    buffers: list[torch.Tensor] = []
    if strategy.startswith("z"):
        engine, optimizer = deepspeed_engine(m, strategy)
        for step in range(2):
            loss = engine(input_ids=ids, labels=ids).loss
            engine.backward(loss)
            if step == 0:
                engine.step()
        buffers = comm_buffers(optimizer)
    else:
        if strategy == "ddp":
            wrapped = torch.nn.parallel.DistributedDataParallel(m)
        else:
            from torch.distributed.fsdp import fully_shard

            for layer in m.get_decoder().layers:
                fully_shard(layer)
            wrapped = fully_shard(m)
        optimizer = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
        for step in range(2):
            loss = wrapped(input_ids=ids, labels=ids).loss
            loss.backward()
            if step == 0:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
    del loss
    gc.collect()
    params = list(m.parameters())
    # p.grad made by autograd in C++ has no Python object until asked for: gc alone would miss it.
    grads = [p.grad for p in params if p.grad is not None]
    held = storages([*live_tensors(), *params, *grads])
    excluded = storages([ids, *buffers])
    total = sum(n for ptr, n in held.items() if ptr not in excluded)
    result = {"rank": rank, "bytes": total, "buffers": sum(excluded.values()) - ids.numel() * 8}
    if os.environ.get("PLAN_STATES_DEBUG"):
        by_ptr = {}
        for x in [*live_tensors(), *grads]:
            st = x.untyped_storage()
            if st.nbytes() > 100000:
                by_ptr.setdefault(st.data_ptr(), (st.nbytes(), tuple(x.shape), str(x.dtype)))
        big = sorted(by_ptr.values(), reverse=True)
        result["big"] = big[:40]
    with open(f"{out}.rank{rank}.json", "w") as f:
        json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)  # DeepSpeed's atexit hooks can hang a gloo group on the way out


if __name__ == "__main__":
    main()
