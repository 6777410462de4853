"""SFT or DPO of a Qwen vision-language model on image rows (runtime.stages' sft and dpo runners hand over
here when the model is one): tokenizer + image processor → image datasets → model → VisionCollator →
the stage's own trainer (SFTTrainer, or DPOTrainer with its reference) → save, with the image processor
and chat template beside the weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.contract.say import say
from runtime.mm.data import VisionCollator, build_vision_datasets, image_settings, vision_family
from runtime.mm.model import check_method, summary
from runtime.mm.plugin import PLUGINS, VISION_BOS, VISION_EOS


def load_image_processor(path: str) -> Any:
    """The model folder's image processor through its PIL backend: the torchvision-backed processor
    class cannot load beside a CPU torch that has no torchvision build."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil.from_pretrained(path)


def save_processor_parts(out: Path, image_processor: Any, tokenizer: Any, chat_template: str | None) -> None:
    """What AutoProcessor reloads on a machine with torchvision: preprocessor_config.json, the tokenizer
    files and chat_template.jinja (transformers' processor layout), next to the weights."""
    image_processor.save_pretrained(out)
    if chat_template:
        (out / "chat_template.jinja").write_text(chat_template, encoding="utf-8")


def stage_trainer(ctx: Any, tokenizer: Any) -> tuple[type, dict[str, Any]]:
    """The stage's own trainer class and its keyword arguments (DPO: its reference model loaded)."""
    if ctx.cfg.stage == "dpo":
        from runtime.stages.dpo import DPOTrainer, trainer_options

        return DPOTrainer, trainer_options(ctx.cfg, ctx.device, tokenizer)
    from runtime.stages.sft import SFTTrainer, loss_options

    return SFTTrainer, loss_options(ctx.cfg)


def run(ctx: Any) -> None:
    from runtime.data import resolve_template
    from runtime.data.once import cache_root, plan_builders, run_once
    from runtime.model import build_model, load_tokenizer
    from runtime.stages.recipe import fit, make_trainer, save_outputs

    # --- setup ---
    cfg = ctx.cfg
    kind = vision_family(cfg)
    check_method(cfg, kind)
    cfg.padding_free = False  # runtime.perf turned it off with a note (M-RoPE); packing is refused
    tokenizer = load_tokenizer(cfg)
    image_processor = load_image_processor(cfg.model_name_or_path)
    chat = resolve_template(
        cfg.template,
        tokenizer,
        enable_thinking=cfg.enable_thinking,
        preserve_thinking=cfg.preserve_thinking,
        default_system=cfg.default_system,
    )

    def build() -> Any:
        return build_vision_datasets(cfg, tokenizer, chat, image_processor)

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        plan = plan_builders(cache_root(cfg))
        say(plan.line)
        data = run_once(plan, build, say)
    else:
        data = build()
    model = build_model(cfg, stage=cfg.stage, device=ctx.device, tokenizer=tokenizer)
    say(f"{kind}: {summary(model)} ({cfg.finetuning_type})")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collator = VisionCollator(
        pad_token_id=pad_id,
        image_processor=image_processor,
        settings=image_settings(cfg),
        image_token_id=tokenizer.convert_tokens_to_ids(PLUGINS[cfg.template][1]),
        vision_start_id=tokenizer.convert_tokens_to_ids(VISION_BOS),
        vision_end_id=tokenizer.convert_tokens_to_ids(VISION_EOS),
    )
    trainer_class, options = stage_trainer(ctx, tokenizer)
    trainer = make_trainer(
        trainer_class, ctx, model=model, tokenizer=tokenizer, data=data, collator=collator, **options
    )
    template = chat.chat_template_for_saving(tokenizer)
    trainer.save_extras = lambda folder: save_processor_parts(folder, image_processor, tokenizer, template)
    # --- train ---
    metrics = fit(trainer, ctx)
    if ctx.preempted:
        return
    # --- save ---
    save_outputs(trainer, ctx, tokenizer, metrics)
    if cfg.do_train and trainer.args.should_save:
        save_processor_parts(Path(cfg.output_dir), image_processor, tokenizer, template)
