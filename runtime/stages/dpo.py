"""Direct preference optimisation, sigmoid loss, against a frozen reference.

loss = -log σ(β · [(log π(y_c) − log π_ref(y_c)) − (log π(y_r) − log π_ref(y_r))]), with
sequence log-probabilities summed over response tokens (labels ≠ -100). The reference is the
adapter-disabled base for LoRA, and a frozen copy of the initial model (or `ref_model`)
otherwise; under ZeRO-3 that copy goes through deepspeed.initialize so its partitioned
weights are gathered for the forward pass (as trl's prepare_deepspeed does).
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F

from runtime.data import build_collator
from runtime.model import build_model, fit_embeddings, load_model, load_tokenizer
from runtime.stages.common import RunContext, fit, load_datasets, make_trainer, save_outputs
from runtime.trainer import PairwisePredictionMixin, XgenTrainer

STAGE = "dpo"


def sequence_logps(model: Any, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of response-token log-probs, response length) per row; labels are the input ids shifted."""
    logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits[:, :-1]
    labels = inputs["labels"][:, 1:]
    mask = labels != -100
    logps = torch.gather(logits.float().log_softmax(-1), 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logps * mask).sum(-1), mask.sum(-1)


class DPOTrainer(PairwisePredictionMixin, XgenTrainer):
    def __init__(self, *args: Any, ref_model: Any = None, beta: float, ftx: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.beta, self.ftx = beta, ftx
        self.ref_model = self._prepare_reference(ref_model) if ref_model is not None else None

    def _prepare_reference(self, ref: Any) -> Any:
        ref.requires_grad_(False).eval()
        if not self.is_deepspeed_enabled:
            return ref.to(self.args.device)
        import deepspeed

        config = copy.deepcopy(self.accelerator.state.deepspeed_plugin.deepspeed_config)
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

    def _reference_logps(self, model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            if self.ref_model is not None:
                return sequence_logps(self.ref_model, inputs)[0]
            unwrapped = self.accelerator.unwrap_model(model)
            with unwrapped.disable_adapter() if hasattr(unwrapped, "disable_adapter") else nullcontext():
                return sequence_logps(model, inputs)[0]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
        ref_logps = self._reference_logps(model, inputs)
        logps, lengths = sequence_logps(model, inputs)
        chosen, rejected = logps.chunk(2)
        ref_chosen, ref_rejected = ref_logps.chunk(2)
        chosen_rewards = self.beta * (chosen - ref_chosen)
        rejected_rewards = self.beta * (rejected - ref_rejected)
        loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
        if self.ftx:
            loss = loss + self.ftx * (-chosen / lengths.chunk(2)[0].clamp(min=1)).mean()
        self.store_metrics(
            {
                "rewards/chosen": chosen_rewards,
                "rewards/rejected": rejected_rewards,
                "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
                "rewards/margins": chosen_rewards - rejected_rewards,
                "logps/chosen": chosen,
                "logps/rejected": rejected,
            }
        )
        return (loss, {}) if return_outputs else loss


def run(ctx: RunContext) -> None:
    # --- setup ---
    cfg = ctx.cfg
    tokenizer = load_tokenizer(cfg)
    data = load_datasets(ctx, tokenizer, stage=STAGE)
    model = build_model(cfg, stage=STAGE, device=ctx.device, tokenizer=tokenizer)
    ref_model = None
    if cfg.finetuning_type != "lora" or cfg.ref_model:
        ref_model = fit_embeddings(
            load_model(cfg, stage=STAGE, device=ctx.device, path=cfg.ref_model), tokenizer
        )
    collator = build_collator(cfg, tokenizer, stage=STAGE)
    trainer = make_trainer(
        DPOTrainer,
        ctx,
        model=model,
        tokenizer=tokenizer,
        data=data,
        collator=collator,
        ref_model=ref_model,
        beta=cfg.pref_beta,
        ftx=cfg.pref_ftx,
    )
    # --- train ---
    metrics = fit(trainer, ctx)
    if ctx.preempted:
        return
    # --- save ---
    save_outputs(trainer, ctx, tokenizer, metrics)
