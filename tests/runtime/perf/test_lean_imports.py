"""runtime/perf/lean_imports.py: bitsandbytes stays out of a training process that does not use it, and is
left alone for GaLore/APOLLO and the bitsandbytes optimizers."""

from __future__ import annotations

import subprocess
import sys

import pytest

from runtime.config import TrainConfig
from runtime.perf.lean_imports import hide_unused_bitsandbytes, needs_bitsandbytes

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
    for keys in ({"use_galore": True}, {"use_apollo": True}, {"optim": "adamw_bnb_8bit"},
                 {"optim": "paged_adamw_32bit"}, {"optim": "lion_8bit"}, {"optim": "ademamix"}):  # fmt: skip
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
