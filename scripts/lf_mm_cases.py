"""Write what LLaMA-Factory's own qwen2_vl / qwen3_vl plugin and supervised processor make of image rows.

Run with LLaMA-Factory's Python (it cannot share the project's environment), on make-tiny's VL models:

    .venv/bin/python -m runtime.commands.make_tiny /tmp/tiny
    LF=/work/lfvenv/bin/python
    $LF scripts/lf_mm_cases.py /tmp/tiny tests/runtime/mm/cases.jsonl

torchvision cannot load beside the CPU torch, so LLaMA-Factory's processor is built by hand from what its
plugin reads: the image processor (PIL backend), the tokenizer, and the image_max/min_pixels attributes
LLaMA-Factory's patch_processor sets. One JSON line per (template, setting, row): input_ids, labels,
image_grid_thw and pixel_values (zlib + base64 of the float32 bytes, with its shape), or LLaMA-Factory's
error for a bad row. tests/runtime/mm/test_lf_cases.py checks the runtime against the committed file always,
and against a fresh run when LLaMA-Factory is installed. Standalone on purpose: imports nothing from here.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import zlib
from types import SimpleNamespace

# (template, model folder under the tiny dir)
MODELS = {"qwen2_vl": "vl_model", "qwen3_vl": "vl3_model"}
SETTINGS = {
    "defaults": {},
    "small": {"image_max_pixels": 40 * 40, "image_min_pixels": 30 * 30},
    "large": {"image_max_pixels": 100 * 100, "image_min_pixels": 50 * 50},
}
ROWS = 6  # the first rows of tiny_mllm.json (1- and 2-image rows)
BAD_ROWS = {
    "too_few_images": (
        [{"role": "user", "content": "<image><image>two?"}, {"role": "assistant", "content": "one"}],
        1,
    ),
    "too_many_images": ([{"role": "user", "content": "none?"}, {"role": "assistant", "content": "no"}], 1),
}


def pack(tensor) -> dict:
    array = tensor.to(dtype=__import__("torch").float32).contiguous().numpy()
    return {
        "shape": list(array.shape),
        "f32_zlib_b64": base64.b64encode(zlib.compress(array.tobytes(), 9)).decode(),
    }


# (freeze_vision_tower, freeze_multi_modal_projector, freeze_language_model, freeze_trainable_layers,
#  freeze_extra_modules)
PARTS = [
    (True, True, False, 1, None),
    (False, True, False, 2, None),
    (True, False, False, -1, ["lm_head"]),
    (False, False, True, 1, None),
]


def trainable_lines(tiny_dir: str) -> list[dict]:
    """What LLaMA-Factory's adapter code trains on each tiny model: LoRA target modules (`all`), and the
    trainable parameter names under full and freeze tuning, for a few freeze_* settings."""
    from llamafactory.model.adapter import _setup_freeze_tuning, _setup_full_tuning
    from llamafactory.model.model_utils.misc import find_all_linear_modules
    from llamafactory.model.model_utils.visual import patch_target_modules
    from transformers import AutoModelForImageTextToText

    lines = []
    for folder in ("vl_model", "vl3_model", "vl3moe_model"):
        for vision, projector, language, layers, extra in PARTS:
            args = SimpleNamespace(
                freeze_vision_tower=vision,
                freeze_multi_modal_projector=projector,
                freeze_language_model=language,
                freeze_trainable_layers=layers,
                freeze_trainable_modules=["all"],
                freeze_extra_modules=extra,
                use_llama_pro=False,
            )
            head = {
                "kind": "trainable",
                "model": folder,
                "freeze_vision_tower": vision,
                "freeze_multi_modal_projector": projector,
                "freeze_language_model": language,
                "freeze_trainable_layers": layers,
                "freeze_extra_modules": ",".join(extra) if extra else None,
            }
            model = AutoModelForImageTextToText.from_pretrained(os.path.join(tiny_dir, folder))
            targets = patch_target_modules(model, args, find_all_linear_modules(model, vision))
            head["lora_targets"] = sorted(targets)
            for method, setup in (("full", _setup_full_tuning), ("freeze", _setup_freeze_tuning)):
                model = AutoModelForImageTextToText.from_pretrained(os.path.join(tiny_dir, folder))
                setup(model, args, True, False)
                head[f"{method}_trainable"] = sorted(
                    n for n, p in model.named_parameters() if p.requires_grad
                )
            lines.append(head)
    return lines


PAIR_ROWS = 6  # the first rows of tiny_mllm_dpo.json (RLHF-V's shape)


def pairwise_lines(tiny_dir: str) -> list[dict]:
    """What LLaMA-Factory's pairwise processor (DPO) makes of image preference rows, per template: chosen_*
    and rejected_* ids and labels, and its collator's batch for the first two rows (chosen rows, then
    rejected, each with its images: input_ids, image_grid_thw and the shape of pixel_values); plus a row
    whose placeholders do not match its images."""
    from llamafactory.data.collator import PairwiseDataCollatorWithPadding
    from llamafactory.data.processor import PairwiseDatasetProcessor
    from llamafactory.data.template import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    data_dir = os.path.join(tiny_dir, "data")
    with open(os.path.join(data_dir, "tiny_mllm_dpo.json"), encoding="utf-8") as f:
        rows = json.load(f)[:PAIR_ROWS]
    roles = {"human": "user", "gpt": "assistant"}

    def turn(message: dict) -> dict:
        return {"role": roles[message["from"]], "content": message["value"]}

    lines = []
    for name, folder in MODELS.items():
        model_dir = os.path.join(tiny_dir, folder)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        args = DataArguments(template=name, cutoff_len=100000)
        template = get_template_and_fix_tokenizer(tokenizer, args)
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(model_dir)
        processor = SimpleNamespace(
            image_processor=image_processor,
            video_processor=image_processor,
            tokenizer=tokenizer,
            model_input_names=["pixel_values", "image_grid_thw"],
            image_max_pixels=768 * 768,
            image_min_pixels=32 * 32,
        )
        encoder = PairwiseDatasetProcessor(
            template=template, tokenizer=tokenizer, processor=processor, data_args=args
        )
        cases = [
            (
                f"pair{i}",
                [turn(m) for m in r["conversations"]],
                [turn(r["chosen"]), turn(r["rejected"])],
                r["images"],
            )
            for i, r in enumerate(rows)
        ]
        cases.append(("pair_too_many_images", cases[0][1], cases[0][2], cases[0][3] * 2))
        features = []
        for case, prompt, response, images in cases:
            paths = [os.path.join(data_dir, p) for p in images]
            line = {
                "kind": "pairwise",
                "template": name,
                "model": folder,
                "case": case,
                "prompt": prompt,
                "response": response,
                "images": images,
            }
            try:
                ids = encoder._encode_data_example(
                    prompt=prompt, response=response, system="", tools="", images=paths, videos=[], audios=[]
                )
            except ValueError as exc:
                line["error"] = str(exc)
                lines.append(line)
                continue
            names = ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels")
            line.update(dict(zip(names, ids, strict=True)))
            lines.append(line)
            features.append(
                {
                    "chosen_input_ids": ids[0],
                    "chosen_attention_mask": [1] * len(ids[0]),
                    "chosen_labels": ids[1],
                    "rejected_input_ids": ids[2],
                    "rejected_attention_mask": [1] * len(ids[2]),
                    "rejected_labels": ids[3],
                    "images": paths,
                    "videos": [],
                    "audios": [],
                }
            )
        collator = PairwiseDataCollatorWithPadding(
            template=template, processor=processor, tokenizer=tokenizer, model=None, label_pad_token_id=-100
        )
        batch = collator(features[:2])
        lines.append(
            {
                "kind": "pairwise_batch",
                "template": name,
                "model": folder,
                "rows": [f"pair{i}" for i in range(2)],
                "input_ids": batch["input_ids"].tolist(),
                "labels": batch["labels"].tolist(),
                "image_grid_thw": batch["image_grid_thw"].tolist(),
                "pixel_values_shape": list(batch["pixel_values"].shape),
            }
        )
    return lines


def main(tiny_dir: str, out_path: str) -> int:
    os.environ.setdefault("LLAMAFACTORY_VERBOSITY", "ERROR")
    import llamafactory
    from llamafactory.data.processor import SupervisedDatasetProcessor
    from llamafactory.data.template import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    data_dir = os.path.join(tiny_dir, "data")
    with open(os.path.join(data_dir, "tiny_mllm.json"), encoding="utf-8") as f:
        rows = json.load(f)[:ROWS]
    lines = []
    for name, folder in MODELS.items():
        model_dir = os.path.join(tiny_dir, folder)
        for setting, extra in SETTINGS.items():
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
            args = DataArguments(template=name, cutoff_len=100000)
            template = get_template_and_fix_tokenizer(tokenizer, args)
            image_processor = Qwen2VLImageProcessorPil.from_pretrained(model_dir)
            processor = SimpleNamespace(
                image_processor=image_processor,
                video_processor=image_processor,
                tokenizer=tokenizer,
                model_input_names=["pixel_values", "image_grid_thw"],
                image_max_pixels=extra.get("image_max_pixels", 768 * 768),
                image_min_pixels=extra.get("image_min_pixels", 32 * 32),
            )
            encoder = SupervisedDatasetProcessor(
                template=template, tokenizer=tokenizer, processor=processor, data_args=args
            )
            head = {"template": name, "model": folder, "setting": setting, **extra}
            cases = [(f"row{i}", r["messages"], r["images"]) for i, r in enumerate(rows)]
            cases += [
                (case, messages, ["vl_images/0_red.png"] * n) for case, (messages, n) in BAD_ROWS.items()
            ]
            for case, messages, images in cases:
                paths = [os.path.join(data_dir, p) for p in images]
                line = {**head, "case": case, "messages": messages, "images": images}
                try:
                    ids, labels = encoder._encode_data_example(
                        prompt=messages[:-1],
                        response=messages[-1:],
                        system="",
                        tools="",
                        images=paths,
                        videos=[],
                        audios=[],
                    )
                except ValueError as exc:
                    line["error"] = str(exc)
                    lines.append(line)
                    continue
                mm = template.mm_plugin.get_mm_inputs(paths, [], [], [len(paths)], [0], [0], [ids], processor)
                line.update(
                    input_ids=ids,
                    labels=labels,
                    image_grid_thw=mm["image_grid_thw"].tolist(),
                    pixel_values=pack(mm["pixel_values"]),
                )
                lines.append(line)
    lines += trainable_lines(tiny_dir)
    lines += pairwise_lines(tiny_dir)
    import PIL
    import transformers

    meta = {
        "llamafactory": llamafactory.__version__,
        "transformers": transformers.__version__,
        "pillow": PIL.__version__,
    }
    with open(out_path, "w", encoding="utf-8") as f:
        f.write(json.dumps({"meta": meta}) + "\n")
        for line in lines:
            f.write(json.dumps(line) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2]))
