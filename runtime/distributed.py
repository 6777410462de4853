"""Device and backend detection, and the DDP / FSDP2 / DeepSpeed wiring around HF Trainer.

Each function does one thing the stock stack gets wrong or leaves out (findings E1–E4):
DeepSpeed on CPU needs an explicit `init_distributed`, gloo aborts at exit without
`destroy_process_group`. When FSDP or DeepSpeed was asked for and the model is not wrapped
that way, `check_wrapped` fails loudly instead of training under DDP. The patches only CPU runs
need (FSDP through Trainer, DeepSpeed's shm-op build) are in `runtime.scaffolding.cpu`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import socket
import sys
from dataclasses import dataclass
from typing import Any

from runtime.config import ConfigError, TrainConfig
from runtime.contract.slurm import RDZV_ROUND

BACKENDS = {"cpu": "gloo", "cuda": "nccl", "npu": "hccl"}


def is_npu_available() -> bool:
    """True only when torch_npu imports and sees a device (a broken install must not crash us)."""
    if importlib.util.find_spec("torch_npu") is None:
        return False
    try:
        import torch_npu  # noqa: F401
    except Exception:  # ImportError (libhccl.so …), OSError, RuntimeError
        return False
    import torch

    return hasattr(torch, "npu") and torch.npu.is_available()


def detect_device(cfg: TrainConfig) -> str:
    """cpu | cuda | npu. XGEN_DEVICE (exported by the generated scripts) wins; then use_cpu; then probes."""
    import torch

    pinned = os.environ.get("XGEN_DEVICE", "").strip().lower()
    if pinned:
        if pinned not in BACKENDS:
            raise ConfigError("XGEN_DEVICE", f"must be one of cpu, cuda, npu; got {pinned!r}")
        unusable = {
            "cuda": "torch.cuda.is_available() is False (a CPU-only torch, or no driver in this process?)",
            "npu": "torch_npu is missing or sees no NPU (is it installed, and CANN's set_env.sh sourced?)",
        }
        if (pinned == "cuda" and not torch.cuda.is_available()) or (
            pinned == "npu" and not is_npu_available()
        ):
            # The node has the devices (the script's detection found them) but this python cannot use
            # them: train on CPU rather than die, and say so loudly on every rank.
            print(
                f"xgen-runtime: WARNING: XGEN_DEVICE={pinned} but {unusable[pinned]}; falling back to cpu",
                file=sys.stderr,
                flush=True,
            )
            return "cpu"
        return pinned
    if cfg.use_cpu:
        return "cpu"
    if is_npu_available():
        return "npu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def launch_ranks() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from the torch.distributed.run environment."""
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("LOCAL_RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
    )


def is_rank0() -> bool:
    return launch_ranks()[0] == 0


BACKENDS = {"cpu": "gloo", "cuda": "nccl", "npu": "hccl"}  # what accelerate/DeepSpeed would pick


def join_restarted_world(device: str, timeout_s: float) -> bool:
    """After a restart inside the job (torch.distributed.run --max-restarts), create the process group
    on a store prefix of this attempt. Returns True when it did.

    Why our own code: with the c10d rendezvous the workers of every attempt share the agent's TCPStore
    without a per-attempt prefix (torch's `_create_c10d_store` assumes a new store per retry), so gloo's
    address exchange of the new workers reads the dead workers' addresses and fails with "Connection
    refused" (measured on torch 2.13, 2 ranks, one SIGKILLed). The first attempt of a static rendezvous
    is left to accelerate and DeepSpeed as before; they reuse a process group that already exists. Under
    c10d every round gets its prefix, the first included: a node that restarts because another failed
    may still be at restart count 0, and must meet the others under the same prefix (measured on the
    suite's two-node cluster: without it the restarted workers waited for each other until the timeout)."""
    import torch
    import torch.distributed as dist

    # c10d: the round every node met in (`runtime launch` exports it); the restart count differs between
    # nodes there, as a node restarted because another node failed does not count a restart. Static: the
    # restart count, the same on every node (each node's workers fail, and restart, together).
    rdzv_round = os.environ.get(RDZV_ROUND)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    first = attempt == "0" and rdzv_round is None
    if first or not agent_store or dist.is_initialized() or device not in BACKENDS:
        return False
    prefix = f"xgen/round_{rdzv_round}" if rdzv_round is not None else f"xgen/attempt_{attempt}"
    from datetime import timedelta

    timeout = timedelta(seconds=timeout_s)
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timeout
    )
    rank, local_rank, world_size = launch_ranks()
    if device == "cuda":
        torch.cuda.set_device(local_rank)  # as accelerate does before it creates an NCCL group
    elif device == "npu":
        torch.npu.set_device(local_rank)  # type: ignore[attr-defined]
    dist.init_process_group(
        BACKENDS[device],
        store=dist.PrefixStore(prefix, store),
        rank=rank,
        world_size=world_size,
        timeout=timeout,
    )
    return True


def ensure_deepspeed_env() -> None:
    """DeepSpeed always wants a process group; a bare `python -m runtime` gets a one-rank world."""
    if "RANK" in os.environ:
        return
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])


def deepspeed_for_device(ds: dict[str, Any], device: str) -> tuple[dict[str, Any], str | None]:
    """On CPU, offload configs must use torch AdamW: DeepSpeedCPUAdam JIT-builds for ~45 s (E4)."""
    zero = ds.get("zero_optimization", {})
    offloads = any(
        isinstance(zero.get(k), dict) and zero[k].get("device", "none") != "none"
        for k in ("offload_optimizer", "offload_param")
    )
    if device != "cpu" or not offloads or "zero_force_ds_cpu_optimizer" in ds:
        return ds, None
    ds = {**ds, "zero_force_ds_cpu_optimizer": False}
    return ds, "deepspeed offload on cpu: zero_force_ds_cpu_optimizer=false (torch AdamW, no cpu_adam build)"


def init_deepspeed_distributed() -> None:
    """accelerate skips this with use_cpu=True; ZeRO-3 zero.Init then sees world_size 1 (E3)."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    deepspeed.init_distributed(dist_backend=get_accelerator().communication_backend_name())


def check_wrapped(trainer: Any, cfg: TrainConfig) -> None:
    """Fail if FSDP/DeepSpeed was requested but the model was wrapped some other way."""
    if cfg.deepspeed_config is not None:
        from deepspeed import DeepSpeedEngine

        if not isinstance(trainer.model_wrapped, DeepSpeedEngine):
            raise RuntimeError(
                f"deepspeed was requested but the model is a {type(trainer.model_wrapped).__name__}, "
                "not a DeepSpeedEngine; refusing to train without it"
            )
    if cfg.fsdp:
        from torch.distributed.fsdp import FSDPModule

        if not isinstance(trainer.model, FSDPModule):
            raise RuntimeError(
                f"fsdp was requested but the model is a {type(trainer.model_wrapped).__name__}, "
                "not an FSDP2 module; refusing to train under plain DDP"
            )


@dataclass
class StartInfo:
    world_size: int
    hosts: list[str]
    device: str
    backend: str
    strategy: str

    def line(self) -> str:
        return (
            f"xgen-runtime: world_size={self.world_size} nodes={len(set(self.hosts))} "
            f"hosts={','.join(dict.fromkeys(self.hosts))} device={self.device} "
            f"backend={self.backend} strategy={self.strategy}"
        )


def gather_start_info(device: str, strategy: str) -> StartInfo:
    """Every rank's hostname (all_gather_object), so the start line proves who joined."""
    import torch.distributed as dist

    host = socket.gethostname()
    if dist.is_available() and dist.is_initialized():
        hosts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(hosts, host)
        world_size = dist.get_world_size()
        backend = str(dist.get_backend())
    else:
        hosts, world_size, backend = [host], 1, BACKENDS[device]
        strategy = "single" if strategy == "ddp" else strategy
    return StartInfo(world_size, [str(h) for h in hosts], device, backend, strategy)


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def finish() -> None:
    """gloo runs abort at exit one time in three without this (E1); Trainer does not do it."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()
