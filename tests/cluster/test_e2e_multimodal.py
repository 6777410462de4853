"""A vision-language LoRA SFT across the two nodes: LLaMA-Factory's qwen3vl_lora_sft.yaml, bare, on
make-tiny's Qwen3-VL and image rows (`xgen slurm lf.yaml --nodes 2 …`); the adapter saved with the
processor parts reloads on its base and changes what the model says about an image."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import e2e
import harness
import pytest
import yaml

# An image in a text prompt: its vision markers, as LLaMA-Factory's qwen3_vl plugin writes `<image>`.
QUESTION = "<|vision_start|><|image_pad|><|vision_end|>what color is the block?"
# Reloads what a user gets (in a subprocess: keeps torch out of pytest's memory): the tokenizer, image
# processor and chat template from the output folder, the adapter on the Qwen3-VL base; prints the
# largest |lora_B| and how far the adapter moves the logits of one image prompt, as JSON.
RELOAD = """
import json, sys
import torch
from peft import PeftModel
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoTokenizer
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil as P

base_dir, out, image, question = sys.argv[1:]
tokenizer = AutoTokenizer.from_pretrained(out)
processor = P.from_pretrained(out)
pixels = processor(images=[Image.open(image).convert("RGB")], return_tensors="pt")
template = open(f"{out}/chat_template.jinja").read()
messages = [{"role": "user", "content": question}]
prompt = tokenizer.apply_chat_template(
    messages, chat_template=template, tokenize=False, add_generation_prompt=True
)
# the image pad token once per merged patch, as LLaMA-Factory's qwen3_vl plugin expands it
count = int(pixels["image_grid_thw"].prod()) // processor.merge_size**2
batch = tokenizer(prompt.replace("<|image_pad|>", "<|image_pad|>" * count), return_tensors="pt")
image_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
batch = {**batch, **pixels, "mm_token_type_ids": (batch["input_ids"] == image_id).long()}
adapter = load_file(f"{out}/adapter_model.safetensors")
lora_b = max(v.abs().max().item() for k, v in adapter.items() if "lora_B" in k)
model = AutoModelForImageTextToText.from_pretrained(base_dir).eval()
with torch.no_grad():
    before = model(**batch).logits
    adapted = PeftModel.from_pretrained(model, out).eval()
    after = adapted(**batch).logits
print(json.dumps({"prompt": prompt, "image_tokens": int((batch["input_ids"] == image_id).sum()),
                  "lora_b": lora_b, "logits_moved": (after - before).abs().max().item()}))
"""


@pytest.fixture(scope="module")
def tiny_vl(cluster: harness.Cluster) -> Path:
    """make-tiny's whole output on the shared filesystem (the session's `tiny` is the text-only model)."""
    dest = cluster.paths.shared / "tiny-vl"
    tool = Path(sys.executable).parent / "xgen-runtime"
    proc = subprocess.run([str(tool), "make-tiny", str(dest)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"xgen-runtime make-tiny failed:\n{proc.stderr}"
    return dest


def qwen3vl_lora_sft(tiny_vl: Path, out: Path) -> dict:
    """LLaMA-Factory's examples/train_lora/qwen3vl_lora_sft.yaml, key for key; paths, dataset, lengths,
    workers and steps made small (4 steps of one row per rank, a checkpoint at the last)."""
    return {
        "model_name_or_path": str(tiny_vl / "vl3_model"),
        "image_max_pixels": 262144,
        "video_max_pixels": 16384,
        "trust_remote_code": True,
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_rank": 8,
        "lora_target": "all",
        "dataset": "tiny_mllm",
        "dataset_dir": str(tiny_vl / "data"),
        "template": "qwen3_vl_nothink",
        "cutoff_len": 256,
        "max_samples": 1000,
        "preprocessing_num_workers": 1,
        "dataloader_num_workers": 0,
        "output_dir": str(out),
        "logging_steps": 1,
        "save_steps": 4,
        "plot_loss": True,
        "overwrite_output_dir": True,
        "save_only_model": False,
        "report_to": "none",
        "per_device_train_batch_size": 1,
        "gradient_accumulation_steps": 1,
        "learning_rate": 1.0e-4,
        "num_train_epochs": 3.0,
        "max_steps": 4,
        "lr_scheduler_type": "cosine",
        "warmup_ratio": 0.1,
        "bf16": True,
        "ddp_timeout": 180000000,
        "resume_from_checkpoint": None,
    }


def test_a_qwen3vl_lora_sft_yaml_trains_on_two_nodes(
    cluster: harness.Cluster, tiny_vl: Path, shared_dir: Path
) -> None:
    out_dir = shared_dir / "out"
    lf = shared_dir / "qwen3vl_lora_sft.yaml"
    lf.write_text(yaml.safe_dump(qwen3vl_lora_sft(tiny_vl, out_dir), sort_keys=False))
    flags = ["--nodes", "2", "--partition", "xgt", "--device", "cpu", "--devices-per-node", "2"]
    flags += ["--python", sys.executable, "--workdir", str(shared_dir)]
    script = e2e.render(shared_dir, "slurm", lf, *flags, script="vl.sh")
    info = cluster.wait_done(cluster.sbatch(script, cwd=shared_dir, env=e2e.RUN_ENV), timeout=400)
    out = Path(info["StdOut"]).read_text(errors="replace")
    assert info["JobState"] == "COMPLETED", out[-6000:]

    start = e2e.start_line(out)
    assert (start.world_size, start.nodes, sorted(start.hosts)) == (4, 2, ["node0", "node1"]), start
    assert (start.device, start.backend) == ("cpu", "gloo"), start
    assert "xgen-runtime: qwen3_vl: " in out, out[-6000:]  # the vision-language stage ran, not the text one
    assert e2e.saved_dir(out) == out_dir
    assert json.loads((out_dir / "trainer_state.json").read_text())["global_step"] == 4
    for name in ("adapter_model.safetensors", "preprocessor_config.json", "chat_template.jinja"):
        assert (out_dir / name).is_file(), name
    assert (out_dir / "checkpoint-4" / "adapter_model.safetensors").is_file()
    assert (out_dir / "checkpoint-4" / "preprocessor_config.json").is_file()  # every checkpoint, as LF
    targets = json.loads((out_dir / "adapter_config.json").read_text())["target_modules"]
    assert targets and all(".language_model." in t for t in targets), targets  # vision tower frozen

    image = tiny_vl / "data" / "vl_images" / "3_red.png"
    argv = [sys.executable, "-c", RELOAD, str(tiny_vl / "vl3_model"), str(out_dir), str(image), QUESTION]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    reloaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert reloaded["prompt"] == f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n", reloaded
    assert reloaded["image_tokens"] == 4, reloaded  # 56x56 pixels -> 64x64, 16-pixel patches merged 2x2
    assert reloaded["lora_b"] > 0 and reloaded["logits_moved"] > 1e-6, reloaded
