"""Vision-language SFT on images (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3-VL-MoE), as LLaMA-Factory 0.9.5.

  plugin.py   LLaMA-Factory's qwen2_vl/qwen3_vl mm_plugin for images: open, resize, expand `<image>`
  data.py     `images` columns → expanded, tokenized rows; VisionCollator adds pixel_values per batch
  model.py    each family's vision tower / projector / language keys: what freezes, what `all` targets
  stage.py    the SFT run for these models (runtime.stages.sft hands over to it)
  tiny.py     tiny Qwen-VL models, their image processor, small PNGs and image datasets (make-tiny)

No torchvision CPU build exists for this torch, so the full Qwen processor class cannot be built here:
the runtime works from the image processor's PIL backend, the tokenizer and the chat template, and saves
those files so a machine with torchvision can reload them with AutoProcessor. Video and audio are refused.
"""
