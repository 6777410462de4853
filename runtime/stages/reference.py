"""The frozen reference model DPO, KTO and ASFT compare against, and per-sequence log-probabilities.

The reference is the adapter-disabled policy for LoRA (no second copy) unless `ref_model` names a
model; otherwise a frozen copy of the initial model. Under ZeRO-3 that copy goes through
deepspeed.initialize so its partitioned weights are gathered for the forward pass (as trl's
prepare_deepspeed does); under DDP and FSDP a plain copy on the device is enough, since it never
takes part in a backward pass.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch

from runtime.config import TrainConfig
from runtime.config.rules import uses_reference
from runtime.model import fit_embeddings, load_model

VISION_INPUTS = ("pixel_values", "image_grid_thw", "mm_token_type_ids")  # runtime.mm.data.VisionCollator


def sequence_logps(
    model: Any, inputs: dict[str, torch.Tensor], prefix: str = ""
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of response-token log-probs, response length) per row; labels are the input ids shifted.

    `prefix` picks another set of columns from the same batch (KTO's `kl_input_ids`…); a vision-language
    batch's image inputs (runtime.mm's VisionCollator) go with the unprefixed columns."""
    extra = {key: inputs[key] for key in VISION_INPUTS if key in inputs and not prefix}
    logits = model(
        input_ids=inputs[f"{prefix}input_ids"], attention_mask=inputs[f"{prefix}attention_mask"], **extra
    ).logits[:, :-1]
    labels = inputs[f"{prefix}labels"][:, 1:]
    mask = labels != -100
    logps = torch.gather(logits.float().log_softmax(-1), 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logps * mask).sum(-1), mask.sum(-1)


def load_reference(cfg: TrainConfig, device: str, tokenizer: Any) -> Any:
    """The reference model to load, or None: no reference in the loss, or the adapter-disabled base
    (LoRA, OFT). Fitted to the tokenizer like the policy (a template's added tokens grow both)."""
    if not uses_reference(cfg):
        return None
    if cfg.finetuning_type in ("lora", "oft") and not cfg.ref_model:
        return None
    return fit_embeddings(load_model(cfg, stage=cfg.stage, device=device, path=cfg.ref_model), tokenizer)


class ReferenceMixin:
    """For Trainer subclasses: `self.ref_model` set up for the strategy, `reference(model)` to use it.

    Call `setup_reference(ref_model, needed=...)` at the end of __init__ (it needs the accelerator)."""

    ref_model: Any = None
    needs_reference: bool = False

    def setup_reference(self, ref: Any, *, needed: bool) -> None:
        self.needs_reference = needed
        self.ref_model = self._prepare_reference(ref) if (needed and ref is not None) else None

    def _prepare_reference(self, ref: Any) -> Any:
        ref.requires_grad_(False).eval()
        if not self.is_deepspeed_enabled:  # type: ignore[attr-defined]
            return ref.to(self.args.device)  # type: ignore[attr-defined]
        import deepspeed

        config = copy.deepcopy(self.accelerator.state.deepspeed_plugin.deepspeed_config)  # type: ignore[attr-defined]
        config.pop("optimizer", None)
        config.pop("scheduler", None)
        zero = config.setdefault("zero_optimization", {})
        if zero.get("stage") != 3:
            zero["stage"] = 0  # only ZeRO-3 needs the engine to gather weights
        hidden = getattr(ref.config, "hidden_size", None)
        for key, value in (
            ("reduce_bucket_size", hidden * hidden if hidden else 5e8),
            ("stage3_param_persistence_threshold", 10 * hidden if hidden else 1e5),
            ("stage3_prefetch_bucket_size", int(0.9 * hidden * hidden) if hidden else 5e8),
        ):
            if zero.get(key) == "auto":
                zero[key] = value
        engine, *_ = deepspeed.initialize(model=ref, config=config)
        engine.eval()
        return engine

    @contextmanager
    def reference(self, model: Any) -> Iterator[Any]:
        """The module to call for reference log-probs, under no_grad (LoRA: the adapter switched off)."""
        with torch.no_grad():
            if self.ref_model is not None:
                yield self.ref_model
                return
            unwrapped = self.accelerator.unwrap_model(model)  # type: ignore[attr-defined]
            with unwrapped.disable_adapter() if hasattr(unwrapped, "disable_adapter") else nullcontext():
                yield model
