"""LLaMA-Factory 0.9.5's qwen2_vl / qwen3_vl mm_plugin, for images (data/mm_plugin.py, Qwen2VLPlugin):

- each image is opened, shrunk to at most `image_max_pixels` / grown to at least `image_min_pixels`
  (area, aspect kept, int() of each side), converted to RGB, then made at least 28 pixels a side and at
  most 200:1 (BasePlugin._preprocess_image + Qwen2VLPlugin._preprocess_image);
- the image processor turns the batch's images into `pixel_values` and `image_grid_thw`;
- each `<image>` in the text becomes `<|vision_start|>` + `<|image_pad|>` × (t·h·w / merge_size²) +
  `<|vision_end|>`, in order; the number of `<image>` must equal the number of images.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

IMAGE_PLACEHOLDER = "<image>"
VIDEO_PLACEHOLDER = "<video>"
AUDIO_PLACEHOLDER = "<audio>"
# LLaMA-Factory's model_args defaults.
IMAGE_MAX_PIXELS = 768 * 768
IMAGE_MIN_PIXELS = 32 * 32
# template name → (LLaMA-Factory's plugin, its image token, video token)
PLUGINS = {
    "qwen2_vl": ("qwen2_vl", "<|image_pad|>", "<|video_pad|>"),
    "qwen3_vl": ("qwen3_vl", "<|image_pad|>", "<|video_pad|>"),
    "qwen3_vl_nothink": ("qwen3_vl", "<|image_pad|>", "<|video_pad|>"),
}
VISION_BOS, VISION_EOS = "<|vision_start|>", "<|vision_end|>"


@dataclass(frozen=True)
class ImageSettings:
    """The image keys of a `train:` config, with LLaMA-Factory's defaults."""

    max_pixels: int = IMAGE_MAX_PIXELS
    min_pixels: int = IMAGE_MIN_PIXELS


def count_problem(messages: list[dict[str, str]], images: list[Any]) -> str:
    """ "" when the `<image>` placeholders match the images, else what is wrong (LF raises on it)."""
    text = "".join(m["content"] for m in messages)
    found = text.count(IMAGE_PLACEHOLDER)
    if found != len(images):
        return f"{found} {IMAGE_PLACEHOLDER} placeholder(s) for {len(images)} image(s)"
    for tag, kind in ((VIDEO_PLACEHOLDER, "video"), (AUDIO_PLACEHOLDER, "audio")):
        if tag in text:
            return f"{tag} in the text: {kind} is not supported (only images; video needs torchvision)"
    return ""


def resolve_paths(images: Any, media_dir: str) -> list[str]:
    """LLaMA-Factory's _find_medias for local files: media_dir/path when that file exists, else as given."""
    if images is None:
        return []
    if not isinstance(images, list):
        images = [images]
    out = []
    for image in images:
        joined = os.path.join(media_dir, image)
        out.append(joined if os.path.isfile(joined) else image)
    return out


def load_image(path: Any, settings: ImageSettings):
    """Open and regularize one image as LLaMA-Factory's Qwen2VLPlugin does."""
    from io import BytesIO

    from PIL import Image

    if isinstance(path, dict):
        path = BytesIO(path["bytes"]) if path.get("bytes") is not None else path["path"]
    image = path if isinstance(path, Image.Image) else Image.open(path)
    if image.width * image.height > settings.max_pixels:
        factor = math.sqrt(settings.max_pixels / (image.width * image.height))
        image = image.resize((int(image.width * factor), int(image.height * factor)))
    if image.width * image.height < settings.min_pixels:
        factor = math.sqrt(settings.min_pixels / (image.width * image.height))
        image = image.resize((int(image.width * factor), int(image.height * factor)))
    if image.mode != "RGB":
        image = image.convert("RGB")
    if min(image.width, image.height) < 28:
        image = image.resize((max(image.width, 28), max(image.height, 28)))
    if image.width / image.height > 200:
        image = image.resize((image.height * 180, image.height))
    if image.height / image.width > 200:
        image = image.resize((image.width, image.width * 180))
    return image


def image_inputs(image_processor, paths: list[Any], settings: ImageSettings) -> dict[str, Any]:
    """pixel_values and image_grid_thw for a list of images (empty dict for none)."""
    if not paths:
        return {}
    images = [load_image(p, settings) for p in paths]
    return dict(image_processor(images, return_tensors="pt"))


def expand_messages(
    messages: list[dict[str, str]], grids: list[Any], *, merge_size: int, image_token: str
) -> list[dict[str, str]]:
    """Each `<image>` → vision_start + image_token × (t·h·w / merge²) + vision_end, in order."""
    merge = merge_size**2
    out, index = [], 0
    for message in messages:
        content = message["content"]
        while IMAGE_PLACEHOLDER in content:
            t, h, w = (int(x) for x in grids[index])
            content = content.replace(
                IMAGE_PLACEHOLDER, f"{VISION_BOS}{image_token * (t * h * w // merge)}{VISION_EOS}", 1
            )
            index += 1
        out.append({**message, "content": content})
    return out
