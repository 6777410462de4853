"""CPU-only patches: what the stock stack gets wrong when there is no accelerator (findings E2, E4).

`runtime.train` applies them only when the device is cpu (tests, debugging); on GPUs/NPUs the stock
path runs unchanged. See ../shared/notes/trainer-cpu-findings.md for the measurements behind each.
"""

from __future__ import annotations

import importlib


def patch_deepspeed_shm_build() -> None:
    """Skip DeepSpeed's shm-comm JIT build (~35 s, E4).

    `import deepspeed.comm.torch as m` would bind the real torch (deepspeed.comm re-exports a
    name `torch`), so go through importlib.
    """
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def patch_trainer_fsdp_on_cpu() -> None:
    """Make Trainer honour FSDP2 on CPU (accelerate only enables it for accelerator devices, E2).

    Only applied when the device is cpu; on GPUs/NPUs the stock path runs unchanged.
    """
    from transformers import Trainer

    if getattr(Trainer, "_xgen_fsdp_cpu_patch", False):
        return
    original = Trainer.create_accelerator_and_postprocess

    def patched(self: Trainer) -> None:
        original(self)
        if self.args.fsdp_plugin_args is None or self.is_fsdp_enabled:
            return
        from accelerate.state import PartialState
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
        from torch.distributed.fsdp import CPUOffloadPolicy

        state = self.accelerator.state
        plugin = FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args)
        if isinstance(plugin.cpu_offload, CPUOffloadPolicy):
            plugin.cpu_offload = CPUOffloadPolicy(pin_memory=False)  # pinning needs an accelerator
        if state.mixed_precision != "no":
            plugin.set_mixed_precision(state.mixed_precision)  # else bf16 silently runs in fp32
        state.fsdp_plugin = plugin
        state.distributed_type = DistributedType.FSDP
        # AcceleratorState() re-reads PartialState's shared dict; without this, save sees MULTI_CPU.
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        self.is_fsdp_enabled = True

    Trainer.create_accelerator_and_postprocess = patched
    Trainer._xgen_fsdp_cpu_patch = True
