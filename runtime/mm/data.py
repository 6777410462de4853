"""Image datasets for vision-language SFT and DPO, as LLaMA-Factory 0.9.5 reads them:

    dataset_info.json  columns.images names the column (mllm_demo: "images": "images")
    a row              alpaca or sharegpt, plus a list of image paths (relative to media_dir, which
                       defaults to dataset_dir; a path that is not a file there is used as given)
    the text           one `<image>` per image, in order; a row where the counts differ is an error
                       (one line per bad row, then the run stops: LLaMA-Factory stops at the first)

Each `<image>` is expanded into the vision tokens (runtime.mm.plugin) before the rows are tokenized by
the same code as text SFT (runtime.data.tokenize), so labels are masked exactly as for text. The images
stay paths in the tokenized rows; VisionCollator opens them per batch, as LLaMA-Factory's collator does.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.config import ConfigError, TrainConfig
from runtime.contract.say import note, say
from runtime.data.formats import FEATURES, check_columns, convert_alpaca, convert_sharegpt
from runtime.data.registry import DatasetAttr, resolve_datasets
from runtime.mm.families import FAMILIES, VISION_STAGES, model_type, refuse_stage, unsupported_family
from runtime.mm.plugin import PLUGINS, ImageSettings, count_problem, expand_messages, resolve_paths

SHOWN_BAD_ROWS = 20
# Why video rows stop: transformers' Qwen video processors are built on torchvision (PyAV only decodes).
VIDEO_REFUSAL = (
    "video rows are not supported here (transformers' Qwen video processors need torchvision, which has "
    "no build for this torch)"
)


def vision_family(cfg: TrainConfig) -> str | None:
    """The model's vision-language family when it is one the runtime trains, else None: the text path
    then runs, and refuses image/video/audio columns and placeholders in one line (runtime.data.formats).
    A template that does not fit the family, or a stage other than sft and dpo, stops the run."""
    kind = model_type(cfg.model_name_or_path)
    if kind in FAMILIES:
        if cfg.template not in PLUGINS or PLUGINS[cfg.template][0] != FAMILIES[kind]:
            raise ConfigError("template", template_problem(kind, cfg.template))
        if cfg.stage not in VISION_STAGES:
            refuse_stage(kind, cfg.stage)
        return kind
    return None


def template_problem(kind: str, template: str) -> str:
    names = " or ".join(name for name, plugin in PLUGINS.items() if plugin[0] == FAMILIES[kind])
    return f"{kind} models need template {names} (LLaMA-Factory's); got {template}"


def image_settings(cfg: TrainConfig) -> ImageSettings:
    return ImageSettings(max_pixels=cfg.image_max_pixels, min_pixels=cfg.image_min_pixels)


# --- rows -----------------------------------------------------------------------------------------


def convert_with_images(
    batch: dict[str, list],
    indices: list[int],
    *,
    columns: dict,
    tags: dict,
    ranking: bool,
    formatting: str,
    media_dir: str,
    name: str,
) -> dict[str, list]:
    """runtime.data.formats' conversion, plus `_images`: the row's image paths found as LF does, and
    `_where`: `'<dataset>' row <i>` (its row in its own file, for the bad-row lines after the mix)."""
    convert = convert_alpaca if formatting == "alpaca" else convert_sharegpt
    out = convert(batch, columns=columns, tags=tags, ranking=ranking)
    out.pop("_media")  # placeholders are counted against the images per row instead
    images = batch.get(columns.get("images", ""))
    size = len(out["_prompt"])
    out["_images"] = [resolve_paths(images[i] if images else None, media_dir) for i in range(size)]
    out["_where"] = [f"'{name}' row {i}" for i in indices]
    return out


def encode_row(
    prompt: list[dict],
    response: list[dict],
    system: str,
    tools: str,
    images: list[str],
    *,
    tokenizer: Any,
    chat: Any,
    image_processor: Any,
    settings: ImageSettings,
    image_token: str,
    cutoff_len: int,
    train_on_prompt: bool = False,
    mask_history: bool = False,
) -> dict[str, list] | None:
    """One row's input_ids/attention_mask/labels with its `<image>` expanded (None: nothing to learn, or
    the cutoff cut into an image's tokens). Raises ValueError for a placeholder/image count mismatch."""
    from runtime.data.tokenize import tokenize_sft
    from runtime.mm.plugin import image_inputs

    problem = count_problem(prompt + response, images)
    if problem:
        raise ValueError(problem)
    grids = image_inputs(image_processor, images, settings).get("image_grid_thw", [])
    fit = {"tokenizer": tokenizer, "image_token": image_token, "merge_size": image_processor.merge_size}
    messages = expand_messages(
        prompt + response, grids, merge_size=image_processor.merge_size, image_token=image_token
    )
    batch = {"_prompt": [messages[:-1]], "_response": [messages[-1:]], "_system": [system], "_tools": [tools]}
    out = tokenize_sft(
        batch,
        tokenizer=tokenizer,
        chat=chat,
        cutoff_len=cutoff_len,
        train_on_prompt=train_on_prompt,
        mask_history=mask_history,
    )
    if not out["input_ids"] or not _image_tokens_kept(out["input_ids"][0], grids, **fit):
        return None
    return {k: v[0] for k, v in out.items()}


def encode_pair_row(
    prompt: list[dict],
    response: list[dict],
    system: str,
    tools: str,
    images: list[str],
    *,
    tokenizer: Any,
    chat: Any,
    image_processor: Any,
    settings: ImageSettings,
    image_token: str,
    cutoff_len: int,
    **_: Any,
) -> dict[str, list] | None:
    """One preference row's chosen_* and rejected_* columns (runtime.data.tokenize.tokenize_pairwise) with
    the prompt's `<image>` expanded; the counts are checked for prompt + chosen and prompt + rejected, as
    LLaMA-Factory's pairwise processor checks each. None when the cutoff cut into an image's tokens.
    Raises ValueError for a count mismatch."""
    from runtime.data.tokenize import tokenize_pairwise
    from runtime.mm.plugin import image_inputs

    problem = count_problem(prompt + response[:1], images) or count_problem(prompt + response[1:], images)
    if problem:
        raise ValueError(problem)
    grids = image_inputs(image_processor, images, settings).get("image_grid_thw", [])
    expand = {"merge_size": image_processor.merge_size, "image_token": image_token}
    fit = {"tokenizer": tokenizer, **expand}
    batch = {
        "_prompt": [expand_messages(prompt, grids, **expand)],
        "_response": [response],
        "_system": [system],
        "_tools": [tools],
    }
    out = tokenize_pairwise(batch, tokenizer=tokenizer, chat=chat, cutoff_len=cutoff_len)
    if not out["chosen_input_ids"] or not _image_tokens_kept(out["chosen_input_ids"][0], grids, **fit):
        return None
    return {k: v[0] for k, v in out.items()}


def _image_tokens_kept(
    ids: list[int], grids: Any, *, tokenizer: Any, image_token: str, merge_size: int
) -> bool:
    """Whether a tokenized row still holds every image token its grids need (t*h*w / merge² each): False
    when cutoff_len cut into them, and the vision features would not fit the row."""
    wanted = sum(int(t) * int(h) * int(w) // merge_size**2 for t, h, w in grids)
    return ids.count(tokenizer.convert_tokens_to_ids(image_token)) == wanted


PAIR_COLUMNS = tuple(
    f"{side}_{name}" for side in ("chosen", "rejected") for name in ("input_ids", "attention_mask", "labels")
)


def tokenize_images(batch: dict[str, list], **kwargs: Any) -> dict[str, list]:
    """datasets.map(batched=True): encode_row per row; `images` keeps the paths for the collator.
    Count mismatches come back as `_bad` lines (the caller reports them all, then stops)."""
    pairwise = kwargs.pop("pairwise", False)
    columns = PAIR_COLUMNS if pairwise else ("input_ids", "attention_mask", "labels")
    encode = encode_pair_row if pairwise else encode_row
    out: dict[str, list] = {**{key: [] for key in columns}, "images": [], "_bad": []}
    rows = zip(
        batch["_prompt"],
        batch["_response"],
        batch["_system"],
        batch["_tools"],
        batch["_images"],
        batch["_where"],
        strict=True,
    )
    for prompt, response, system, tools, images, where in rows:
        if len(prompt) % 2 != 1 or len(response) != (2 if pairwise else 1):
            continue
        try:
            row = encode(prompt, response, system, tools, images, **kwargs)
        except ValueError as exc:
            row, bad = None, f"{where}: {exc}: {(prompt[0]['content'] if prompt else '')[:60]!r}"
        except OSError as exc:  # a missing or unreadable image file (PIL raises OSError subclasses)
            row, bad = None, f"{where}: image {getattr(exc, 'filename', None) or exc}: {exc.strerror or exc}"
        else:
            bad = ""
        if row is None and not bad:
            continue
        for key in columns:
            out[key].append(row[key] if row else [])
        out["images"].append(images)
        out["_bad"].append(bad)
    return out


def build_vision_datasets(cfg: TrainConfig, tokenizer: Any, chat: Any, image_processor: Any) -> Any:
    """Tokenized train (and eval) rows with `images` columns; DatasetSplits as runtime.data returns."""
    from runtime.data import DatasetSplits, worker_count
    from runtime.data.loaders import load_raw

    check_vision_keys(cfg)
    kwargs = {
        "tokenizer": tokenizer,
        "chat": chat,
        "image_processor": image_processor,
        "settings": image_settings(cfg),
        "image_token": PLUGINS[cfg.template][1],
        "cutoff_len": cfg.cutoff_len,
        "train_on_prompt": cfg.train_on_prompt,
        "mask_history": cfg.mask_history,
        "pairwise": cfg.stage == "dpo",
    }
    options = {
        "num_proc": worker_count(cfg.preprocessing_num_workers),
        "load_from_cache_file": not cfg.overwrite_cache,
    }

    def one(key: str) -> Any:
        from datasets import Features, List, Value

        from runtime.data import _mix  # mix_strategy / interleave_probs, as for text

        parts = []
        for attr in resolve_datasets(getattr(cfg, key), cfg.dataset_dir, key=key):
            raw = load_raw(attr, cache_dir=cfg.cache_dir, seed=cfg.seed, max_samples=cfg.max_samples)
            _check_image_columns(attr, list(raw.column_names or []), cfg.stage)
            features = Features(
                {
                    **{k: v for k, v in FEATURES.items() if k != "_media"},
                    "_images": List(Value("string")),
                    "_where": Value("string"),
                }
            )
            rows = raw.map(
                convert_with_images,
                batched=True,
                with_indices=True,
                fn_kwargs={
                    "name": attr.name,
                    "columns": attr.columns,
                    "tags": attr.tags,
                    "ranking": bool(attr.ranking),
                    "formatting": attr.formatting,
                    "media_dir": cfg.media_dir or cfg.dataset_dir,
                },
                remove_columns=list(raw.column_names or []),
                features=features,
                desc=f"Converting {attr.name} ({attr.formatting}, images)",
                **options,
            )
            parts.append(rows)
        dataset = _mix(parts, cfg)
        tokenized = dataset.map(
            tokenize_images,
            batched=True,
            fn_kwargs=kwargs,
            remove_columns=list(dataset.column_names or []),
            desc=f"Tokenizing ({cfg.stage}, images)",
            **options,
        )
        _stop_on_bad_rows(key, tokenized)
        if "_bad" in (tokenized.column_names or []):
            tokenized = tokenized.remove_columns("_bad")
        if len(tokenized) == 0:
            raise ConfigError(
                key,
                f"no usable rows in {getattr(cfg, key)}: check formatting/columns/images, and that "
                f"cutoff_len {cfg.cutoff_len} leaves room for each row's image tokens",
            )
        if len(tokenized) < len(dataset):
            note(
                f"{key}: dropped {len(dataset) - len(tokenized)} of {len(dataset)} rows (broken turns, "
                "nothing left to learn, or cutoff_len cutting into an image's tokens)"
            )
        return tokenized

    train = one("dataset")
    evaluation = one("eval_dataset") if cfg.eval_dataset else None
    if cfg.val_size and evaluation is None:
        test_size = int(cfg.val_size) if cfg.val_size > 1 else float(cfg.val_size)
        parts = train.train_test_split(test_size=test_size, seed=cfg.seed)
        train, evaluation = parts["train"], parts["test"]
    return DatasetSplits(train=train, eval=evaluation)


def check_vision_keys(cfg: TrainConfig) -> None:
    """The data keys image rows cannot take (ConfigError, one line): checked by xgen-runtime check too."""
    if cfg.streaming:
        raise ConfigError("streaming", "vision-language datasets are read whole; set streaming: false")
    if cfg.packing or cfg.neat_packing:
        raise ConfigError(
            "packing", "packing image rows is not supported (Qwen's M-RoPE positions); set packing: false"
        )
    if cfg.tokenized_path:
        raise ConfigError("tokenized_path", "not supported with image rows yet (the datasets cache is used)")


CHECKED_ROWS = 1000  # xgen-runtime check reads this many rows of each image dataset (stat, not open)


def check_image_rows(attr: DatasetAttr, raw: Any, cfg: TrainConfig) -> list[str]:
    """`xgen-runtime check`: in the first CHECKED_ROWS rows, placeholders against images and image files
    that are not there; one line per bad row (SHOWN_BAD_ROWS at most). Training checks every row."""
    if "images" not in attr.columns:
        return []
    batch = raw.select(range(min(len(raw), CHECKED_ROWS)))[:]
    rows = convert_with_images(
        batch,
        list(range(len(next(iter(batch.values()), [])))),
        name=attr.name,
        columns=attr.columns,
        tags=attr.tags,
        ranking=bool(attr.ranking),
        formatting=attr.formatting,
        media_dir=cfg.media_dir or cfg.dataset_dir,
    )
    lines = []
    looked = f"neither in {cfg.media_dir or cfg.dataset_dir} nor from {Path.cwd()}"
    for index, (prompt, response, images) in enumerate(
        zip(rows["_prompt"], rows["_response"], rows["_images"], strict=True)
    ):
        problem = count_problem(prompt + response[:1], images)
        missing = [image for image in images if isinstance(image, str) and not Path(image).is_file()]
        if problem or missing:
            gone = f"image not found: {missing[0]} ({looked})" if missing else ""
            lines.append(f"{attr.where()}: row {index}: {problem or gone}")
    if len(lines) > SHOWN_BAD_ROWS:
        lines = lines[:SHOWN_BAD_ROWS] + [f"{attr.where()}: {len(lines) - SHOWN_BAD_ROWS} more bad rows"]
    return lines


def check_dataset_columns(attr: DatasetAttr, column_names: list[str], cfg: TrainConfig) -> None:
    """`xgen-runtime check`'s column check: with `images` allowed when the model is a Qwen-VL one."""
    if model_type(cfg.model_name_or_path) in FAMILIES:
        _check_image_columns(attr, column_names, cfg.stage)
    else:
        check_columns(attr, column_names, stage=cfg.stage, family=unsupported_family(cfg.model_name_or_path))


def _check_image_columns(attr: DatasetAttr, column_names: list[str], stage: str) -> None:
    """runtime.data.formats' column check with `images` allowed (videos/audios still refused there);
    a dataset without images (LLaMA-Factory's examples mix alpaca_en_demo in) gives text rows."""
    for kind in ("videos", "audios"):
        if kind in attr.columns:
            why = VIDEO_REFUSAL if kind == "videos" else "audio is not supported for these models"
            raise ConfigError(
                attr.key, f"{attr.where()}: columns.{kind}: {why}; use a dataset without {kind}"
            )
    if "images" not in attr.columns:
        check_columns(attr, column_names, stage=stage)
        return
    image_column = attr.columns["images"]
    if image_column not in column_names:
        raise ConfigError(attr.key, f"{attr.where()}: column '{image_column}' (columns.images) not found")
    bare = copy.copy(attr)
    bare.columns = {k: v for k, v in attr.columns.items() if k != "images"}
    bare.explicit = attr.explicit - {"images"}
    check_columns(bare, [c for c in column_names if c != image_column], stage=stage)
    attr.columns = {**bare.columns, "images": image_column}


def _stop_on_bad_rows(key: str, tokenized: Any) -> None:
    import pyarrow.compute as pc

    if "_bad" not in (tokenized.column_names or []):  # every row was dropped: "no usable rows" follows
        return
    column = tokenized.with_format("arrow")["_bad"]
    if not pc.any(pc.not_equal(column, "")).as_py():
        return
    bad = [line for line in column.to_pylist() if line]  # each names its dataset and row (`_where`)
    for line in bad[:SHOWN_BAD_ROWS]:
        say(f"{key}: {line}")
    more = f" (first {SHOWN_BAD_ROWS} shown)" if len(bad) > SHOWN_BAD_ROWS else ""
    raise ConfigError(
        key,
        f"{len(bad)} row(s) whose <image> placeholders do not match their images, or whose image files "
        f"cannot be read{more}; fix those rows (image paths are relative to media_dir, else dataset_dir)",
    )


# --- batches --------------------------------------------------------------------------------------


def pair_rows(features: list[dict]) -> list[dict]:
    """Preference rows as 2B plain rows: the B chosen first, then the B rejected, each with its row's
    images (LLaMA-Factory's PairwiseDataCollatorWithPadding; runtime.data.collators.PairwiseCollator)."""
    return [
        {
            "input_ids": f[f"{side}_input_ids"],
            "attention_mask": f[f"{side}_attention_mask"],
            "labels": f[f"{side}_labels"],
            "images": f.get("images") or [],
        }
        for side in ("chosen", "rejected")
        for f in features
    ]


@dataclass
class VisionCollator:
    """Pads like runtime.data's PaddingCollator, then opens the batch's images: pixel_values and
    image_grid_thw from the image processor, mm_token_type_ids (1 on image tokens) for M-RoPE.

    A batch without images gets LLaMA-Factory's dummy image (64x64 white; its vision tokens appended to the
    first row with attention_mask 0 and labels -100) when the vision marker ids are given: under ZeRO-3 or
    FSDP every rank must run the vision tower, or the ranks that have images wait forever for the others."""

    pad_token_id: int
    image_processor: Any
    settings: ImageSettings
    image_token_id: int
    vision_start_id: int | None = None
    vision_end_id: int | None = None
    padding: Any = field(init=False)

    def __post_init__(self) -> None:
        from runtime.data.collators import PaddingCollator

        self.padding = PaddingCollator(self.pad_token_id)

    def __call__(self, features: list[dict]) -> dict[str, Any]:
        from runtime.mm.plugin import image_inputs

        if features and "chosen_input_ids" in features[0]:
            features = pair_rows(features)
        images: list[Any] = [path for f in features for path in (f.get("images") or [])]
        rows = [{k: v for k, v in f.items() if k != "images"} for f in features]
        if not images and self.vision_start_id is not None and self.vision_end_id is not None:
            images, rows[0] = self._with_dummy_image(rows[0])
        batch = self.padding(rows)
        batch.update(image_inputs(self.image_processor, images, self.settings))
        batch["mm_token_type_ids"] = (batch["input_ids"] == self.image_token_id).long()
        return batch

    def _with_dummy_image(self, row: dict) -> tuple[list[Any], dict]:
        from PIL import Image

        from runtime.mm.plugin import image_inputs

        dummy = Image.new("RGB", (64, 64), (255, 255, 255))
        t, h, w = (
            int(x) for x in image_inputs(self.image_processor, [dummy], self.settings)["image_grid_thw"][0]
        )
        count = t * h * w // self.image_processor.merge_size**2
        ids = [self.vision_start_id, *[self.image_token_id] * count, self.vision_end_id]
        row = {
            **row,
            "input_ids": list(row["input_ids"]) + ids,
            "attention_mask": list(row.get("attention_mask") or [1] * len(row["input_ids"])) + [0] * len(ids),
            "labels": list(row.get("labels", row["input_ids"])) + [-100] * len(ids),
        }
        return [dummy], row
