"""runtime/perf/lean_imports.py: bitsandbytes stays out of a training process that does not use it, and is
left alone for GaLore/APOLLO and the bitsandbytes optimizers; deepspeed stays out of an `xgen-runtime train`
process without a DeepSpeed config (accelerate's unwrap_model imports it otherwise), and an in-process
caller of runtime.cli.main keeps it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from runtime.config import TrainConfig
from runtime.perf.lean_imports import hide_unused_bitsandbytes, hide_unused_deepspeed, needs_bitsandbytes

PROBE = """
import sys
from runtime.config import TrainConfig
from runtime.perf.lean_imports import hide_unused_bitsandbytes
hidden = hide_unused_bitsandbytes(TrainConfig(**{keys}))
import peft  # imports bitsandbytes whenever it looks installed
from peft.import_utils import is_bnb_available
print(hidden, sys.modules.get("bitsandbytes") is not None, is_bnb_available())
"""


def test_which_runs_need_bitsandbytes() -> None:
    assert not needs_bitsandbytes(TrainConfig())
    assert not needs_bitsandbytes(TrainConfig(optim="adamw_torch_fused"))
    assert not needs_bitsandbytes(TrainConfig(quantization_bit=4, quantization_method="hqq"))
    for keys in ({"quantization_bit": 4}, {"use_galore": True}, {"use_apollo": True},
                 {"optim": "adamw_bnb_8bit"}, {"optim": "paged_adamw_32bit"}, {"optim": "lion_8bit"},
                 {"optim": "ademamix"}):  # fmt: skip
        assert needs_bitsandbytes(TrainConfig(**keys)), keys


def test_peft_sees_no_bitsandbytes_in_a_run_that_does_not_need_it() -> None:
    pytest.importorskip("bitsandbytes")  # installed here (GaLore/APOLLO tests); the check needs it present
    out = subprocess.run(
        [sys.executable, "-c", PROBE.replace("{keys}", "{}")], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[-2] == "True False False"  # hidden; never imported; peft calls it unavailable


def test_a_run_that_needs_it_is_left_alone() -> None:
    before = "bitsandbytes" in sys.modules, sys.modules.get("bitsandbytes")
    assert hide_unused_bitsandbytes(TrainConfig(optim="adamw_bnb_8bit")) is False
    assert hide_unused_bitsandbytes(TrainConfig(use_galore=True)) is False
    assert ("bitsandbytes" in sys.modules, sys.modules.get("bitsandbytes")) == before


DEEPSPEED_PROBE = """
import sys
import torch
from runtime.config import TrainConfig
from runtime.perf.lean_imports import hide_unused_deepspeed
hidden = hide_unused_deepspeed(TrainConfig())
from accelerate.utils import extract_model_from_parallel  # what Trainer.__init__ calls via unwrap_model
from transformers.integrations import is_deepspeed_available
extract_model_from_parallel(torch.nn.Linear(1, 1))
print(hidden, sys.modules.get("deepspeed") is not None, bool(is_deepspeed_available()))
"""

# runtime.cli.main as the console script calls it (no argv) and as a test calls it (argv): train itself is
# replaced by a probe of what the process sees.
CLI_PROBE = """
import sys
import runtime.train
runtime.train.train = lambda cfg: print("deepspeed", sys.modules.get("deepspeed", "not imported"))
from runtime.cli import main
if sys.argv[1] == "own":
    sys.argv = ["xgen-runtime", "train", sys.argv[2]]
    main()
else:
    main(["train", sys.argv[2]])
"""


def test_deepspeed_is_kept_out_of_a_run_without_a_deepspeed_config() -> None:
    pytest.importorskip("deepspeed")  # installed here (ZeRO tests); the check needs it present
    out = subprocess.run(
        [sys.executable, "-c", DEEPSPEED_PROBE], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert out[-2] == "True False False"  # hidden; never imported; transformers calls it unavailable


def test_a_deepspeed_run_keeps_deepspeed() -> None:
    before = "deepspeed" in sys.modules, sys.modules.get("deepspeed")
    assert hide_unused_deepspeed(TrainConfig(deepspeed_config={"zero_optimization": {"stage": 2}})) is False
    assert hide_unused_deepspeed(TrainConfig(deepspeed="ds_z2_config.json")) is False
    assert ("deepspeed" in sys.modules, sys.modules.get("deepspeed")) == before


def test_only_a_train_process_of_its_own_hides_deepspeed(tmp_path) -> None:
    cfg = tmp_path / "cfg.yaml"
    keys = {"model_name_or_path": "m", "stage": "sft", "finetuning_type": "lora", "dataset": "d"}
    keys |= {"template": "chatml", "output_dir": "out"}
    cfg.write_text("".join(f"{key}: {value}\n" for key, value in keys.items()))

    def probe(how: str) -> str:
        run = subprocess.run([sys.executable, "-c", CLI_PROBE, how, str(cfg)], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-2000:]
        return [line for line in run.stdout.splitlines() if line.startswith("deepspeed")][-1]

    assert probe("own") == "deepspeed None"  # `xgen-runtime train` / `python -m runtime train`
    assert probe("in-process") == "deepspeed not imported"  # left importable for the caller
