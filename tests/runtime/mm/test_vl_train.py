"""Vision-language SFT on make-tiny's Qwen-VL models: LLaMA-Factory's qwen3vl_lora_sft.yaml trains 2 steps
and its adapter reloads with the processor parts; what trains matches LLaMA-Factory's freeze/LoRA rules;
bad rows and unsupported combinations stop in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from trainer_harness import (
    base_config,
    max_diff,
    run_inprocess,
    run_torchrun,
    weights,
    write_config,
)

EXAMPLES = Path(__file__).parents[1] / "lf_examples"


def vl_config(tiny_vl_dir: Path, out: Path, **overrides) -> dict:
    cfg = base_config(
        tiny_vl_dir,
        out,
        model_name_or_path=str(tiny_vl_dir / "vl_model"),
        template="qwen2_vl",
        dataset="tiny_mllm",
        cutoff_len=256,
        max_steps=2,
        finetuning_type="lora",
    )
    cfg.update(overrides)
    return cfg


def _image_batch(tiny_vl_dir: Path, model_dir: Path):
    from transformers import AutoTokenizer

    from runtime.data.templates import resolve_template
    from runtime.mm.data import VisionCollator, encode_row
    from runtime.mm.plugin import ImageSettings
    from runtime.mm.stage import load_image_processor

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    processor = load_image_processor(str(model_dir))
    row = encode_row(
        [{"role": "user", "content": "<image>what color?"}],
        [{"role": "assistant", "content": "red"}],
        "",
        "",
        [str(tiny_vl_dir / "data" / "vl_images" / "3_red.png")],
        tokenizer=tokenizer,
        chat=resolve_template("qwen2_vl", tokenizer),
        image_processor=processor,
        settings=ImageSettings(),
        image_token="<|image_pad|>",
        cutoff_len=1000,
    )
    image_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    collator = VisionCollator(tokenizer.pad_token_id, processor, ImageSettings(), image_id)
    return collator([{**row, "images": [str(tiny_vl_dir / "data" / "vl_images" / "3_red.png")]}])


def test_lf_qwen3vl_lora_example_trains_and_reloads(tiny_vl_dir: Path, tmp_path: Path, capsys) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    from runtime.mm.stage import load_image_processor

    out = tmp_path / "out"
    text = (EXAMPLES / "qwen3vl_lora_sft.yaml").read_text().replace("TINY", str(tiny_vl_dir))
    path = tmp_path / "qwen3vl_lora_sft.yaml"
    path.write_text(text.replace("OUT", str(out)))
    assert run_inprocess(path) == 0
    log = capsys.readouterr().out
    assert "qwen3_vl: 16,384 of" in log, log
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2
    targets = json.loads((out / "adapter_config.json").read_text())["target_modules"]
    assert targets and all(".language_model." in t for t in targets), targets
    # what a user reloads: tokenizer, image processor, chat template, adapter on its base
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert (out / "chat_template.jinja").is_file() and (out / "preprocessor_config.json").is_file()
    assert load_image_processor(str(out)).patch_size == 16
    base = AutoModelForImageTextToText.from_pretrained(tiny_vl_dir / "vl3_model")
    model = PeftModel.from_pretrained(base, out).eval()
    batch = _image_batch(tiny_vl_dir, out)
    assert tokenizer.convert_tokens_to_ids("<|image_pad|>") in batch["input_ids"][0].tolist()
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)


def test_lora_all_targets_what_llamafactory_targets(tiny_vl_dir: Path) -> None:
    """find_all_linear_modules + patch_target_modules: the language model's linears by full name; with
    the vision tower trainable, its blocks too, never patch_embed nor the projector (merger)."""
    from transformers import AutoModelForImageTextToText

    from runtime.config import parse_train_config
    from runtime.mm.model import adapter_targets, composite_of

    model = AutoModelForImageTextToText.from_pretrained(tiny_vl_dir / "vl_model")
    parts = composite_of(model)
    keys = {"model_name_or_path": "x", "dataset": "d", "template": "qwen2_vl"}
    frozen = adapter_targets(model, parts, parse_train_config(keys), ["all"])
    assert len(frozen) == 2 * 7 and all(n.startswith("model.language_model.layers.") for n in frozen)
    open_tower = adapter_targets(
        model, parts, parse_train_config({**keys, "freeze_vision_tower": False}), ["all"]
    )
    tower = [n for n in open_tower if ".visual." in n]
    assert {n.rsplit(".", 1)[-1] for n in tower} == {"qkv", "proj", "gate_proj", "up_proj", "down_proj"}
    assert not any("merger" in n or "patch_embed" in n for n in open_tower)


def test_full_tuning_freezes_the_vision_tower_and_projector(tiny_vl_dir: Path) -> None:
    from transformers import AutoModelForImageTextToText

    from runtime.config import parse_train_config
    from runtime.mm.model import apply_frozen_parts, composite_of

    keys = {"model_name_or_path": "x", "dataset": "d", "template": "qwen2_vl", "finetuning_type": "full"}
    for extra, trains in (
        ({}, {"language_model", "lm_head"}),
        ({"freeze_multi_modal_projector": False}, {"language_model", "lm_head", "merger"}),
        ({"freeze_vision_tower": False, "freeze_language_model": True}, {"blocks", "patch_embed"}),
    ):
        model = AutoModelForImageTextToText.from_pretrained(tiny_vl_dir / "vl_model")
        apply_frozen_parts(model, composite_of(model), parse_train_config({**keys, **extra}))
        names = {n for n, p in model.named_parameters() if p.requires_grad}
        found = {
            part
            for part in ("language_model", "lm_head", "merger", "blocks", "patch_embed")
            if any(part in n for n in names)
        }
        assert found == trains, (extra, found)


@pytest.mark.parametrize("finetuning_type", ["full", "freeze"])
def test_full_and_freeze_sft_train_on_images(tiny_vl_dir: Path, tmp_path: Path, finetuning_type: str) -> None:
    from safetensors.torch import load_file

    out = tmp_path / "full"
    cfg = vl_config(
        tiny_vl_dir,
        out,
        finetuning_type=finetuning_type,
        freeze_trainable_layers=1,
        dataset="tiny_mllm_alpaca",
        val_size=0.25,
        eval_strategy="steps",
        eval_steps=2,
    )
    assert run_inprocess(write_config(tmp_path / "full.yaml", cfg)) == 0
    saved = weights(out)
    assert any("visual.blocks" in k for k in saved)  # the whole model is saved, frozen parts included
    assert (out / "eval_results.json").is_file()
    before = load_file(tiny_vl_dir / "vl_model" / "model.safetensors")
    moved = {k for k in saved if (saved[k].float() - before[k].float()).abs().max() > 0}
    assert moved and not any(
        "visual" in k for k in moved
    )  # freeze_vision_tower, freeze_multi_modal_projector
    if finetuning_type == "freeze":
        assert all(".layers.1." in k for k in moved), sorted(moved)


def test_bad_rows_are_listed_one_line_each(tiny_vl_dir: Path, tmp_path: Path, capsys) -> None:
    """Placeholder/image mismatches and an image file that is not there: `xgen-runtime check` names each
    row, and so does training, before the model loads, without a traceback."""
    from runtime.cli import main

    data = tmp_path / "data"
    data.mkdir()
    rows = json.loads((tiny_vl_dir / "data" / "tiny_mllm.json").read_text())[:5]
    rows[1]["images"] = []
    rows[3]["messages"][0]["content"] += " <image>"
    rows[4]["images"][0] = "vl_images/not_there.png"  # a two-image row
    (data / "rows.json").write_text(json.dumps(rows))
    (data / "good.json").write_text(json.dumps(rows[:1] * 3))  # mixed in first: rows keep their own numbers
    info = json.loads((tiny_vl_dir / "data" / "dataset_info.json").read_text())["tiny_mllm"]
    (data / "dataset_info.json").write_text(
        json.dumps({"good": {**info, "file_name": "good.json"}, "rows": {**info, "file_name": "rows.json"}})
    )
    # the paths are relative to media_dir, here the tiny data folder
    cfg = vl_config(
        tiny_vl_dir,
        tmp_path / "out",
        dataset="good,rows",
        dataset_dir=str(data),
        media_dir=str(tiny_vl_dir / "data"),
    )
    path = write_config(tmp_path / "bad.yaml", cfg)
    assert main(["check", str(path)]) != 0
    checked = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert [line.split(": row ", 1)[1] for line in checked] == [
        "1: 2 <image> placeholder(s) for 0 image(s)",
        "3: 2 <image> placeholder(s) for 1 image(s)",
        f"4: image not found: vl_images/not_there.png (neither in {tiny_vl_dir / 'data'} nor from "
        f"{Path.cwd()})",
    ], checked
    assert run_inprocess(path) != 0
    log = capsys.readouterr()
    text = log.out + log.err
    assert "dataset: 'rows' row 1: 2 <image> placeholder(s) for 0 image(s)" in text, text
    assert "dataset: 'rows' row 3: 2 <image> placeholder(s) for 1 image(s)" in text, text
    assert "dataset: 'rows' row 4: image vl_images/not_there.png: No such file or directory" in text, text
    assert "3 row(s) whose <image> placeholders do not match their images, or whose image files" in text
    assert "Traceback" not in text and "parameters train" not in text  # stopped before the model loads


@pytest.mark.parametrize(
    ("overrides", "words", "checked"),
    [
        ({"finetuning_type": "full", "use_galore": True}, "not supported for qwen2_5_vl models", False),
        (
            {"template": "qwen3_vl"},
            "qwen2_5_vl models need template qwen2_vl (LLaMA-Factory's); got qwen3_vl",
            True,
        ),
        ({"stage": "kto", "dataset": "reverse_kto"}, "train with stage sft or dpo here (not kto)", True),
        ({"packing": True}, "packing image rows is not supported", True),
        ({"image_max_pixels": 10, "image_min_pixels": 20}, "cannot be smaller than image_min_pixels", True),
    ],
    ids=["galore", "template", "kto", "packing", "pixels"],
)
def test_refused_in_one_line(tiny_vl_dir: Path, tmp_path: Path, capsys, overrides, words, checked) -> None:
    """Training stops in one line; `xgen-runtime check` (each node's check, and xgen check) says it before
    submission where the keys and the model's config.json decide it."""
    from runtime.cli import main

    cfg = vl_config(tiny_vl_dir, tmp_path / "out", **overrides)
    path = write_config(tmp_path / "refused.yaml", cfg)
    assert run_inprocess(path) != 0
    log = capsys.readouterr()
    assert words in log.out + log.err
    if checked:
        assert main(["check", str(path)]) != 0
        assert words in capsys.readouterr().err


def test_video_rows_and_keys(tiny_vl_dir: Path) -> None:
    from runtime.config import ConfigError, parse_train_config
    from runtime.mm.plugin import count_problem

    keys = {"model_name_or_path": "x", "dataset": "d", "video_max_pixels": 16384}
    assert parse_train_config(keys).video_max_pixels == 16384  # LLaMA-Factory's example config runs
    assert "video is not supported" in count_problem([{"role": "user", "content": "<video>hi"}], [])
    with pytest.raises(ConfigError, match="audio is not supported"):
        parse_train_config({**keys, "audio_sampling_rate": 8000})


@pytest.mark.slow
@pytest.mark.parametrize(
    ("strategy", "name"),
    [
        ({}, "ddp"),
        ({"deepspeed": "z3"}, "deepspeed-z3"),
        ({"fsdp": "full_shard auto_wrap"}, "fsdp"),
    ],
    ids=["ddp", "z3", "fsdp2"],
)
def test_two_ranks_equal_single_process_lora(
    tiny_vl_dir: Path, tmp_path: Path, strategy: dict, name: str
) -> None:
    """LoRA SFT on image rows: 2 gloo ranks × 2 rows against one process × 4 rows, same global batch."""
    single, multi = tmp_path / "single", tmp_path / "multi"
    data = {"max_steps": 3, **{k: v for k, v in strategy.items() if k in ("dataset", "max_steps")}}
    cfg = vl_config(tiny_vl_dir, single, per_device_train_batch_size=4, **data)
    assert run_inprocess(write_config(tmp_path / "single.yaml", cfg)) == 0
    cfg = vl_config(tiny_vl_dir, multi, per_device_train_batch_size=2, **{**strategy, **data})
    proc = run_torchrun(write_config(tmp_path / "multi.yaml", cfg), tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "world_size=2" in proc.stdout and f"strategy={name}" in proc.stdout
    diff = max_diff(weights(multi), weights(single))
    print(f"max |multi - single| = {diff:.3g}")
    assert diff < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize(
    ("strategy", "name"), [({}, "ddp"), ({"deepspeed": "z3"}, "deepspeed-z3")], ids=["ddp", "z3"]
)
def test_two_ranks_equal_single_process_lora_dpo(
    tiny_vl_dir: Path, tmp_path: Path, strategy: dict, name: str
) -> None:
    """LoRA DPO on image preference rows (the reference: the adapter switched off): 2 gloo ranks × 2 pairs
    against one process × 4 pairs, same global batch."""
    single, multi = tmp_path / "single", tmp_path / "multi"
    dpo = {"stage": "dpo", "dataset": "tiny_mllm_dpo", "max_steps": 3, "pref_beta": 0.1}
    cfg = vl_config(tiny_vl_dir, single, per_device_train_batch_size=4, **dpo)
    assert run_inprocess(write_config(tmp_path / "single.yaml", cfg)) == 0
    cfg = vl_config(tiny_vl_dir, multi, per_device_train_batch_size=2, **{**strategy, **dpo})
    proc = run_torchrun(write_config(tmp_path / "multi.yaml", cfg), tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "world_size=2" in proc.stdout and f"strategy={name}" in proc.stdout
    diff = max_diff(weights(multi), weights(single))
    print(f"max |multi - single| = {diff:.3g}")
    assert 0 < max(v.abs().max().item() for k, v in weights(single).items() if "lora_B" in k)  # it trained
    assert diff < 1e-5


def test_lora_merge_export_reloads_with_its_processor_parts(tiny_vl_dir: Path, tmp_path: Path) -> None:
    """LLaMA-Factory's merge_lora keys: the merged Qwen2.5-VL reloads with AutoModelForImageTextToText,
    its image processor, tokenizer and chat template, and gives the adapter's logits on an image row."""
    import torch
    import yaml
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    from runtime.cli import main
    from runtime.mm.stage import load_image_processor

    out, export = tmp_path / "out", tmp_path / "export"
    assert run_inprocess(write_config(tmp_path / "lora.yaml", vl_config(tiny_vl_dir, out))) == 0
    merge = {
        "model_name_or_path": str(tiny_vl_dir / "vl_model"),
        "adapter_name_or_path": str(out),
        "template": "qwen2_vl",
        "trust_remote_code": True,
        "export_dir": str(export),
        "export_size": 5,
        "export_device": "cpu",
        "export_legacy_format": False,
    }
    (tmp_path / "merge.yaml").write_text(yaml.safe_dump(merge))
    assert main(["export", str(tmp_path / "merge.yaml")]) == 0
    for name in ("preprocessor_config.json", "chat_template.jinja", "tokenizer_config.json"):
        assert (export / name).is_file(), name
    assert AutoTokenizer.from_pretrained(export).chat_template
    assert load_image_processor(str(export)).patch_size == 14
    batch = _image_batch(tiny_vl_dir, export)
    merged = AutoModelForImageTextToText.from_pretrained(export).eval()
    base = AutoModelForImageTextToText.from_pretrained(tiny_vl_dir / "vl_model")
    adapter = PeftModel.from_pretrained(base, out).eval()
    with torch.no_grad():
        diff = (merged(**batch).logits - adapter(**batch).logits).abs().max().item()
    assert diff < 1e-5, diff


@pytest.mark.parametrize("finetuning_type", ["lora", "full"])
def test_qwen3_vl_moe_trains(tiny_vl_dir: Path, tmp_path: Path, capsys, finetuning_type: str) -> None:
    """The MoE variant: LoRA reaches the attention linears only (its experts are fused parameters, no
    nn.Linear, as in LLaMA-Factory's find_all_linear_modules); full tuning moves the experts."""
    from safetensors.torch import load_file

    out = tmp_path / "out"
    cfg = vl_config(
        tiny_vl_dir,
        out,
        model_name_or_path=str(tiny_vl_dir / "vl3moe_model"),
        template="qwen3_vl",
        finetuning_type=finetuning_type,
    )
    assert run_inprocess(write_config(tmp_path / "moe.yaml", cfg)) == 0
    assert "qwen3_vl_moe:" in capsys.readouterr().out
    if finetuning_type == "lora":
        targets = json.loads((out / "adapter_config.json").read_text())["target_modules"]
        assert {t.rsplit(".", 1)[-1] for t in targets} == {"q_proj", "k_proj", "v_proj", "o_proj"}
        return
    before = load_file(tiny_vl_dir / "vl3moe_model" / "model.safetensors")
    after = weights(out)
    expert = next(k for k in after if k.endswith("mlp.experts.gate_up_proj"))
    assert (after[expert] - before[expert]).abs().max() > 0
    tower = next(k for k in after if "visual.blocks.0.attn.qkv.weight" in k)
    assert (after[tower] - before[tower]).abs().max() == 0  # freeze_vision_tower: true


def test_freeze_tuning_trains_what_llamafactory_trains(tiny_vl_dir: Path) -> None:
    """_setup_freeze_tuning: `.{i}.` of the last layers (the vision tower's blocks of the same index are
    forbidden while it is frozen), plus the projector when freeze_multi_modal_projector is false."""
    from transformers import AutoModelForImageTextToText

    from runtime.config import parse_train_config
    from runtime.mm.model import apply_vl_freeze, composite_of

    keys = {"model_name_or_path": "x", "dataset": "d", "template": "qwen2_vl", "finetuning_type": "freeze"}
    for extra, prefixes in (
        ({"freeze_trainable_layers": 1}, {"model.language_model.layers.1."}),
        (
            {
                "freeze_trainable_layers": -1,
                "freeze_multi_modal_projector": False,
                "freeze_extra_modules": "lm_head",
            },
            {"model.language_model.layers.0.", "model.visual.merger.", "lm_head."},
        ),
    ):
        model = AutoModelForImageTextToText.from_pretrained(tiny_vl_dir / "vl_model")
        apply_vl_freeze(model, composite_of(model), parse_train_config({**keys, **extra}))
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        assert names and all(any(n.startswith(p) for p in prefixes) for n in names), (extra, names)
        assert all(any(n.startswith(p) for n in names) for p in prefixes), (extra, names)


def test_lf_qwen2_5vl_oft_example_trains(tiny_vl_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    text = (EXAMPLES / "qwen2_5vl_oft_sft.yaml").read_text().replace("TINY", str(tiny_vl_dir))
    path = tmp_path / "qwen2_5vl_oft_sft.yaml"
    path.write_text(text.replace("OUT", str(out)))
    assert run_inprocess(path) == 0
    assert "qwen2_5_vl:" in capsys.readouterr().out
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "OFT"
    assert config["target_modules"] and all(".language_model." in t for t in config["target_modules"])


def test_text_only_batch_gets_llamafactorys_dummy_image_without_changing_the_loss(tiny_vl_dir: Path) -> None:
    """ZeRO-3/FSDP need every rank to run the vision tower: a batch of text rows (alpaca_en_demo mixed
    into an image dataset) gets a masked dummy image, and its loss stays the text loss."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    from runtime.data.templates import resolve_template
    from runtime.mm.data import VisionCollator, encode_row
    from runtime.mm.plugin import ImageSettings
    from runtime.mm.stage import load_image_processor

    model_dir = tiny_vl_dir / "vl_model"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    processor = load_image_processor(str(model_dir))
    chat = resolve_template("qwen2_vl", tokenizer)
    rows = [
        encode_row(
            [{"role": "user", "content": question}],
            [{"role": "assistant", "content": answer}],
            "",
            "",
            [],
            tokenizer=tokenizer,
            chat=chat,
            image_processor=processor,
            settings=ImageSettings(),
            image_token="<|image_pad|>",
            cutoff_len=1000,
        )
        for question, answer in (("name a color", "red"), ("say hello to the big bird", "hello"))
    ]
    ids = {
        t: tokenizer.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|vision_start|>", "<|vision_end|>")
    }
    plain = VisionCollator(tokenizer.pad_token_id, processor, ImageSettings(), ids["<|image_pad|>"])
    dummy = VisionCollator(
        tokenizer.pad_token_id,
        processor,
        ImageSettings(),
        ids["<|image_pad|>"],
        vision_start_id=ids["<|vision_start|>"],
        vision_end_id=ids["<|vision_end|>"],
    )
    without, with_dummy = plain([dict(r) for r in rows]), dummy([dict(r) for r in rows])
    assert "pixel_values" not in without and with_dummy["image_grid_thw"].tolist() == [[1, 4, 4]]
    assert with_dummy["mm_token_type_ids"][0].sum() == 4 and with_dummy["mm_token_type_ids"][1].sum() == 0
    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    with torch.no_grad():
        diff = (model(**with_dummy).loss - model(**without).loss).abs().item()
    assert diff < 1e-5, diff


# --- DPO on image preference rows ------------------------------------------------------------------------


def test_lf_qwen3vl_lora_dpo_example_trains_and_reloads(tiny_vl_dir: Path, tmp_path: Path, capsys) -> None:
    """examples/train_lora/qwen3vl_lora_dpo.yaml on RLHF-V-shaped rows: 2 steps against the adapter-disabled
    reference, and the adapter reloads on its base with the processor parts."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from runtime.stages.reference import sequence_logps

    out = tmp_path / "out"
    text = (EXAMPLES / "qwen3vl_lora_dpo.yaml").read_text().replace("TINY", str(tiny_vl_dir))
    path = tmp_path / "qwen3vl_lora_dpo.yaml"
    path.write_text(text.replace("OUT", str(out)))
    assert run_inprocess(path) == 0
    assert "qwen3_vl: 16,384 of" in capsys.readouterr().out
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2
    assert (out / "chat_template.jinja").is_file() and (out / "preprocessor_config.json").is_file()
    base = AutoModelForImageTextToText.from_pretrained(tiny_vl_dir / "vl3_model")
    model = PeftModel.from_pretrained(base, out).eval()
    batch = _pair_batch(tiny_vl_dir, out)
    with torch.no_grad():
        policy, _ = sequence_logps(model, batch)
        with model.disable_adapter():
            reference, _ = sequence_logps(model, batch)
    assert (policy - reference).abs().max() > 0  # the two steps moved the policy away from its reference


def _pair_batch(tiny_vl_dir: Path, model_dir: Path, image: str = "3_red.png") -> dict:
    """Two preference rows on one image each, collated as the DPO run collates them."""
    from transformers import AutoTokenizer

    from runtime.data.templates import resolve_template
    from runtime.mm.data import VisionCollator, encode_pair_row
    from runtime.mm.plugin import VISION_BOS, VISION_EOS, ImageSettings
    from runtime.mm.stage import load_image_processor

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    processor = load_image_processor(str(model_dir))
    path = str(tiny_vl_dir / "data" / "vl_images" / image)
    rows = [
        encode_pair_row(
            [{"role": "user", "content": "<image>what color is the block?"}],
            [{"role": "assistant", "content": good}, {"role": "assistant", "content": bad}],
            "",
            "",
            [path],
            tokenizer=tokenizer,
            chat=resolve_template("qwen3_vl_nothink", tokenizer),
            image_processor=processor,
            settings=ImageSettings(),
            image_token="<|image_pad|>",
            cutoff_len=1000,
        )
        for good, bad in (("red", "blue"), ("the block is red", "green"))
    ]
    collator = VisionCollator(
        tokenizer.pad_token_id,
        processor,
        ImageSettings(),
        tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        vision_start_id=tokenizer.convert_tokens_to_ids(VISION_BOS),
        vision_end_id=tokenizer.convert_tokens_to_ids(VISION_EOS),
    )
    return collator([{**row, "images": [path]} for row in rows if row])


def test_dpo_log_probs_see_the_images(tiny_vl_dir: Path) -> None:
    """The DPO batch is chosen rows then rejected rows, each with its row's image (4 images for 2 pairs),
    and the sequence log-probs the loss uses run the vision tower on them: another image, other log-probs."""
    import torch
    from transformers import AutoModelForImageTextToText

    from runtime.stages.reference import sequence_logps

    model_dir = tiny_vl_dir / "vl3_model"
    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    seen = []
    model.model.visual.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    red, blue = _pair_batch(tiny_vl_dir, model_dir), _pair_batch(tiny_vl_dir, model_dir, "1_blue.png")
    assert red["input_ids"].shape[0] == 4 and red["image_grid_thw"].shape[0] == 4
    assert not torch.equal(red["input_ids"][0], red["input_ids"][2])  # row 0 chosen, row 2 its rejected
    with torch.no_grad():
        on_red, lengths = sequence_logps(model, red)
        on_blue, _ = sequence_logps(model, blue)
    assert seen == [red["pixel_values"].shape[0], blue["pixel_values"].shape[0]]
    # response tokens, each with its end-of-turn: "red", "the block is red", then "blue", "green"
    assert lengths[0] == lengths[2] == lengths[3] < lengths[1]
    assert (on_red - on_blue).abs().max() > 1e-6


@pytest.mark.parametrize("command", ["check", "train"])
def test_other_vision_language_families_are_refused_naming_the_family(
    tiny_vl_dir: Path, tmp_path: Path, capsys, command: str
) -> None:
    """MOSS-VL (LLaMA-Factory's mossvl_* examples) and other families with a vision_config, given image
    rows: one line naming the family, before any model loads (the folder has no weights). Their
    text rows still train as before (the text path)."""
    from runtime.cli import main

    moss = tmp_path / "moss"
    moss.mkdir()
    (moss / "config.json").write_text(json.dumps({"model_type": "moss_vl", "vision_config": {"depth": 2}}))
    for name in ("tokenizer.json", "tokenizer_config.json"):  # a real folder has its tokenizer, not weights
        (moss / name).write_bytes((tiny_vl_dir / "vl3_model" / name).read_bytes())
    cfg = vl_config(tiny_vl_dir, tmp_path / "out", model_name_or_path=str(moss), template="qwen3_vl")
    path = write_config(tmp_path / "moss.yaml", cfg)
    assert (main([command, str(path)]) if command == "check" else run_inprocess(path)) != 0
    said = capsys.readouterr().err
    assert (
        "columns: moss_vl: this vision-language family is not supported for image rows (Qwen2-VL, "
        "Qwen2.5-VL, Qwen3-VL and Qwen3-VL-MoE train on images here" in said
    ), said
    assert said.count("error:") == 1, said


def test_packed_image_rows_differ_from_the_unpacked_examples_so_packing_is_refused(tiny_vl_dir: Path) -> None:
    """Why `packing` and the padding-free rows stay off for Qwen-VL, measured: two image examples joined
    into one row as the text path joins them (positions restarting per example) give the second example
    other logits than it has alone, with or without the restarting positions (M-RoPE's positions come
    from the image grids of the whole row). If transformers ever keeps them apart, this fails: then
    measure packing again and lift the refusal."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    from runtime.data.templates import resolve_template
    from runtime.mm.data import VisionCollator, encode_row
    from runtime.mm.plugin import ImageSettings
    from runtime.mm.stage import load_image_processor

    model_dir = tiny_vl_dir / "vl3_model"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    processor = load_image_processor(str(model_dir))
    images = [str(tiny_vl_dir / "data" / "vl_images" / name) for name in ("3_red.png", "1_blue.png")]
    rows = [
        encode_row(
            [{"role": "user", "content": "<image>what color?"}],
            [{"role": "assistant", "content": answer}],
            "",
            "",
            [image],
            tokenizer=tokenizer,
            chat=resolve_template("qwen3_vl_nothink", tokenizer),
            image_processor=processor,
            settings=ImageSettings(),
            image_token="<|image_pad|>",
            cutoff_len=1000,
        )
        for image, answer in zip(images, ("red", "blue"), strict=True)
    ]
    collate = VisionCollator(
        tokenizer.pad_token_id, processor, ImageSettings(), tokenizer.convert_tokens_to_ids("<|image_pad|>")
    )
    alone = collate([{**rows[1], "images": [images[1]]}])
    joined = {k: rows[0][k] + rows[1][k] for k in ("input_ids", "attention_mask", "labels")}
    packed = collate([{**joined, "images": images}])
    first, second = len(rows[0]["input_ids"]), len(rows[1]["input_ids"])
    restarting = torch.tensor([list(range(first)) + list(range(second))])
    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    with torch.no_grad():
        want = model(**alone).logits[0]
        gaps = [
            (model(**packed, **extra).logits[0, first:] - want).abs().max().item()
            for extra in ({}, {"position_ids": restarting})
        ]
    print(f"packed vs unpacked, second example's logits: {gaps[0]:.3g} (row positions), "
          f"{gaps[1]:.3g} (restarting positions)")  # fmt: skip
    assert min(gaps) > 1e-3, gaps


def test_a_videos_column_is_refused_in_one_line_saying_why(tiny_vl_dir: Path, tmp_path: Path, capsys) -> None:
    from runtime.cli import main

    data = tmp_path / "data"
    data.mkdir()
    rows = [{"messages": [{"role": "user", "content": "<video>what?"}, {"role": "assistant", "content": "a"}],
             "videos": ["clip.mp4"]}]  # fmt: skip
    (data / "clips.json").write_text(json.dumps(rows))
    info = {"clips": {"file_name": "clips.json", "formatting": "sharegpt",
                      "columns": {"messages": "messages", "videos": "videos"},
                      "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                               "assistant_tag": "assistant"}}}  # fmt: skip
    (data / "dataset_info.json").write_text(json.dumps(info))
    cfg = vl_config(tiny_vl_dir, tmp_path / "out", dataset="clips", dataset_dir=str(data))
    assert main(["check", str(write_config(tmp_path / "clips.yaml", cfg))]) != 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert (
        len(lines) == 1
        and "columns.videos: video rows are not supported here (transformers' Qwen video" in (lines[0])
    ), lines
