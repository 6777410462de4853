"""The custom optimizers LLaMA-Factory's keys ask for: LoRA+, GaLore, APOLLO, BAdam, Adam-mini, Muon.

`method_optimizer(cfg, args)` returns a factory for Trainer's `optimizer_cls_and_kwargs` (Trainer
calls `factory()(model)` when it creates the optimizer: after FSDP wrapping, before DeepSpeed), or
None for the optimizer `optim` names. Each builder uses the library made for the method (peft's
LoRA+, galore-torch, apollo-torch, badam, adam-mini, torch.optim.Muon); only the parameter
grouping, which decides what the method applies to, is ours.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

import torch
from torch import nn

from runtime.config import ConfigError, TrainConfig
from runtime.config.methods import METHOD_PACKAGES, custom_optimizer

# Output heads and embeddings: never projected (GaLore/APOLLO) nor orthogonalised (Muon).
_NOT_HIDDEN = ("lm_head", "score", "v_head", "classifier", "embed")


def check_method_packages(cfg: TrainConfig) -> None:
    """Refuse, before any model loads, a method whose package is not installed."""
    for key, (extra, module) in METHOD_PACKAGES.items():
        if getattr(cfg, key) and importlib.util.find_spec(module) is None:
            raise ConfigError(
                key, f"needs the {module} package, which is not installed: pip install 'xgen[{extra}]'"
            )


def check_world(cfg: TrainConfig, world_size: int) -> None:
    """The rules that depend on how many processes train (LLaMA-Factory's parser.py)."""
    if world_size <= 1:
        return
    for name in ("galore_layerwise", "apollo_layerwise"):
        if getattr(cfg, name) and getattr(cfg, "use_" + name.split("_")[0]):
            raise ConfigError(name, f"runs in one process only (world size is {world_size}); set it false")
    if cfg.use_badam:
        raise ConfigError("use_badam", f"runs in one process only here; world size is {world_size}")


def method_optimizer(cfg: TrainConfig, args: Any) -> Any:
    """A factory for Trainer.optimizer_cls_and_kwargs, or None when `optim` decides."""
    key = custom_optimizer(cfg)
    if key is None:
        return None
    return functools.partial(_Factory, BUILDERS[key], cfg, args)


class _Factory:
    """Trainer instantiates the factory, then calls it with the model (transformers' factory protocol)."""

    def __init__(self, build: Any, cfg: TrainConfig, args: Any) -> None:
        self.build, self.cfg, self.args = build, cfg, args

    def __call__(self, model: nn.Module, **_: Any) -> torch.optim.Optimizer:
        return self.build(model, self.cfg, self.args)


def _decay_split(model: nn.Module, params: list[tuple[str, nn.Parameter]]) -> tuple[list, list]:
    """(decay, no_decay) as Trainer splits them: no decay for biases and norm weights."""
    from transformers import Trainer

    decay_names = set(Trainer.get_decay_parameter_names(None, model))  # it does not use self
    decay = [p for n, p in params if n in decay_names]
    no_decay = [p for n, p in params if n not in decay_names]
    return decay, no_decay


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _base_optimizer(args: Any) -> tuple[type, dict[str, Any]]:
    from transformers import Trainer

    return Trainer.get_optimizer_cls_and_kwargs(args)


# --- LoRA+ ---------------------------------------------------------------------------------
def build_loraplus(model: nn.Module, cfg: TrainConfig, args: Any) -> torch.optim.Optimizer:
    """B matrices (and 1-D adapter weights such as DoRA's magnitudes) at lr * loraplus_lr_ratio."""
    from peft.optimizers import create_loraplus_optimizer

    optimizer_cls, kwargs = _base_optimizer(args)
    kwargs = {k: v for k, v in kwargs.items() if k != "lr"}
    return create_loraplus_optimizer(
        model,
        optimizer_cls,
        lr=args.learning_rate,
        loraplus_lr_ratio=cfg.loraplus_lr_ratio,
        loraplus_lr_embedding=cfg.loraplus_lr_embedding,
        loraplus_weight_decay=args.weight_decay,
        **kwargs,
    )


# --- GaLore / APOLLO -----------------------------------------------------------------------
def _low_rank_params(model: nn.Module, target: str, key: str) -> list[nn.Parameter]:
    """2-D weights of the targeted nn.Linear modules (`all`: every linear layer but heads)."""
    targets = [t.strip() for t in target.split(",") if t.strip()]
    chosen = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if targets == ["all"]:
            if any(part in name.split(".") for part in _NOT_HIDDEN):
                continue
        elif not any(t in name for t in targets):
            continue
        chosen += [p for p in module.parameters() if p.requires_grad and p.ndim == 2]
    if not chosen:
        raise ConfigError(key, f"{target!r} matches no trainable linear layer")
    return chosen


def _low_rank_optimizer(
    model: nn.Module,
    args: Any,
    optimizer_cls: type,
    projected: list[nn.Parameter],
    extra: dict,
    layerwise: bool,
) -> torch.optim.Optimizer:
    """Projected weights get the method's keys in their param group; the rest plain AdamW groups."""
    ids = {id(p) for p in projected}
    decay, no_decay = _decay_split(model, [(n, p) for n, p in _trainable(model) if id(p) not in ids])
    _, kwargs = _base_optimizer(args)
    kwargs = {k: v for k, v in kwargs.items() if k in ("lr", "betas", "eps")}
    groups = [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": args.weight_decay},
        {"params": projected, "weight_decay": args.weight_decay, **extra},
    ]
    if not layerwise:
        return optimizer_cls(groups, **kwargs)
    # One optimizer per weight, stepped in backward as soon as its gradient is complete;
    # transformers' LayerWiseDummyOptimizer and get_scheduler schedule each of them.
    from transformers.trainer_pt_utils import LayerWiseDummyOptimizer

    per_param = {}
    for group in groups:
        for param in group["params"]:
            per_param[param] = optimizer_cls([{**group, "params": [param]}], **kwargs)

    def step_now(param: nn.Parameter) -> None:
        if param.grad is not None:
            per_param[param].step()
            per_param[param].zero_grad()

    for param in per_param:
        param.register_post_accumulate_grad_hook(step_now)
    return LayerWiseDummyOptimizer(optimizer_dict=per_param, lr=args.learning_rate)


def build_galore(model: nn.Module, cfg: TrainConfig, args: Any) -> torch.optim.Optimizer:
    import galore_torch

    classes = {
        "adamw_torch": galore_torch.GaLoreAdamW,
        "adamw_torch_fused": galore_torch.GaLoreAdamW,
        "adamw_8bit": galore_torch.GaLoreAdamW8bit,
        "adamw_bnb_8bit": galore_torch.GaLoreAdamW8bit,
        "paged_adamw_8bit": galore_torch.GaLoreAdamW8bit,
        "adafactor": galore_torch.GaLoreAdafactor,
    }
    if args.optim not in classes:
        raise ConfigError("optim", f"GaLore runs with {', '.join(classes)}; got {args.optim}")
    extra = {
        "rank": cfg.galore_rank,
        "update_proj_gap": cfg.galore_update_interval,
        "scale": cfg.galore_scale,
        "proj_type": cfg.galore_proj_type,
    }
    projected = _low_rank_params(model, cfg.galore_target, "galore_target")
    return _low_rank_optimizer(model, args, classes[args.optim], projected, extra, cfg.galore_layerwise)


def build_apollo(model: nn.Module, cfg: TrainConfig, args: Any) -> torch.optim.Optimizer:
    from apollo_torch import APOLLOAdamW

    if args.optim not in ("adamw_torch", "adamw_torch_fused"):
        raise ConfigError("optim", f"APOLLO runs with adamw_torch; got {args.optim}")
    extra = {
        "rank": cfg.apollo_rank,
        "proj": cfg.apollo_proj,
        "proj_type": cfg.apollo_proj_type,
        "update_proj_gap": cfg.apollo_update_interval,
        "scale": cfg.apollo_scale,
        "scale_type": cfg.apollo_scale_type,
        "scale_front": cfg.apollo_scale_front,
    }
    projected = _low_rank_params(model, cfg.apollo_target, "apollo_target")
    return _low_rank_optimizer(model, args, APOLLOAdamW, projected, extra, cfg.apollo_layerwise)


# --- BAdam ---------------------------------------------------------------------------------
def build_badam(model: nn.Module, cfg: TrainConfig, args: Any) -> torch.optim.Optimizer:
    """Layer mode: one decoder block trains at a time, switching blocks every badam_switch_interval steps
    (badam counts from 0: the first block gets one step less)."""
    optimizer_cls, kwargs = _base_optimizer(args)
    decay, no_decay = _decay_split(model, _trainable(model))
    groups = [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": args.weight_decay}]
    verbose = cfg.badam_verbose if args.process_index == 0 else 0
    if cfg.badam_mode == "layer":
        from badam import BlockOptimizer

        return BlockOptimizer(
            base_optimizer=optimizer_cls(groups, **kwargs),
            named_parameters_list=list(model.named_parameters()),
            block_prefix_list=None,
            switch_block_every=cfg.badam_switch_interval,
            start_block=cfg.badam_start_block,
            switch_mode=cfg.badam_switch_mode,
            verbose=verbose,
        )
    from badam import BlockOptimizerRatio

    return BlockOptimizerRatio(
        param_groups=groups,
        named_parameters_list=list(model.named_parameters()),
        update_ratio=cfg.badam_update_ratio,
        mask_mode=cfg.badam_mask_mode,
        verbose=verbose,
        include_embedding=False,
        **kwargs,
    )


def add_badam_hooks(trainer: Any) -> None:
    """badam's own Trainer hooks, as LLaMA-Factory installs them: the older clip_grad_norm_ copes with
    the sparse gradients of ratio mode; BAdamCallback adapts gradient checkpointing to block updates."""
    from types import MethodType

    from badam import BAdamCallback, clip_grad_norm_old_version

    trainer.accelerator.clip_grad_norm_ = MethodType(clip_grad_norm_old_version, trainer.accelerator)
    trainer.add_callback(BAdamCallback)


# --- Adam-mini -----------------------------------------------------------------------------
def build_adam_mini(model: nn.Module, cfg: TrainConfig, args: Any) -> torch.optim.Optimizer:
    from adam_mini import Adam_mini

    config = model.config if hasattr(model, "config") else model.module.config
    return Adam_mini(
        named_parameters=model.named_parameters(),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        weight_decay=args.weight_decay,
        dim=config.hidden_size,
        n_heads=config.num_attention_heads,
        n_kv_heads=getattr(config, "num_key_value_heads", None),
        verbose=args.process_index == 0,
    )


# --- Muon ----------------------------------------------------------------------------------
class MuonWithAdamW(torch.optim.Optimizer):
    """torch.optim.Muon for hidden 2-D weights, AdamW for the rest, as one optimizer.

    Written here because torch's Muon takes only 2-D parameters and Trainer (and its LR scheduler)
    expects a single Optimizer: the two inner optimizers share their param-group dicts with this
    one, so the scheduler's lr reaches both; state is saved and loaded per inner optimizer.
    """

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.Optimizer) -> None:
        self.muon, self.adamw = muon, adamw
        super().__init__(muon.param_groups + adamw.param_groups, {})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = closure() if closure is not None else None
        self.muon.step()
        self.adamw.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])


def build_muon(model: nn.Module, cfg: TrainConfig, args: Any) -> torch.optim.Optimizer:
    """Muon with Moonlight's lr scaling (match_rms_adamw), so one learning_rate suits both parts."""
    hidden, rest = [], []
    for name, param in _trainable(model):
        is_hidden = param.ndim == 2 and not any(part in name for part in _NOT_HIDDEN)
        (hidden if is_hidden else rest).append(param)
    muon = torch.optim.Muon(
        hidden or [torch.zeros(1, 1)],  # Muon refuses an empty list; a dummy never has a gradient
        lr=args.learning_rate,
        weight_decay=args.weight_decay,
        adjust_lr_fn="match_rms_adamw",
    )
    adamw = torch.optim.AdamW(
        rest or [torch.zeros(1)],
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        weight_decay=args.weight_decay,
    )
    return MuonWithAdamW(muon, adamw)


BUILDERS = {
    "loraplus_lr_ratio": build_loraplus,
    "use_galore": build_galore,
    "use_apollo": build_apollo,
    "use_badam": build_badam,
    "use_adam_mini": build_adam_mini,
    "use_muon": build_muon,
}
