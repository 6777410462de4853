"""Keep bitsandbytes and deepspeed out of a training process that does not use them.

peft imports bitsandbytes whenever it is installed (its LoRA layers register 8/4-bit variants), and
bitsandbytes 0.50 pulls in torch._inductor and its kernel registry: 2-7 s of every start on the CPU
machines here (`python -X importtime -c "import peft"`: peft 6.3 s with it, 4.1 s without; LLaMA-Factory's
own venv has no bitsandbytes and starts that much sooner). Only QLoRA (quantization_bit with bnb), GaLore,
APOLLO and the bitsandbytes optimizers need it. For every other run it is marked absent before
anything imports it: with sys.modules[name] = None, importlib.util.find_spec returns None and `import`
raises ImportError, which peft and transformers both read as "not installed". peft has no switch for this.

Called from the `xgen-runtime train` process only (runtime/cli.py), never from library code: an in-process
caller (a test session) may import bitsandbytes afterwards for something else.

deepspeed the same way, for a run without a DeepSpeed config: accelerate's `unwrap_model`, which
Trainer.__init__ calls, runs `from deepspeed import DeepSpeedEngine` whenever deepspeed is installed:
0.16-0.29 s of every start and every restart here, 0.88 s under load (bench/README.md, restart cost;
issue #25). LLaMA-Factory's venv has no deepspeed. Only in an `xgen-runtime train` process of its own
(`main()` with no argv), not for an in-process caller: transformers decides once, at import, whether its
HfDeepSpeedConfig derives from accelerate's, so a test session that trained with deepspeed hidden could not
run DeepSpeed in-process afterwards.
"""

from __future__ import annotations

import sys

from runtime.config import TrainConfig

# transformers' OptimizerNames that are bitsandbytes optimizers (adamw_bnb_8bit, paged_adamw_32bit,
# lion_8bit, ademamix, rmsprop_bnb, ...): every one contains one of these.
BNB_OPTIM_MARKERS = ("bnb", "8bit", "32bit", "paged", "lion", "ademamix")


def needs_bitsandbytes(cfg: TrainConfig) -> bool:
    """True for QLoRA with bnb, GaLore/APOLLO (both import it) and a bitsandbytes optimizer."""
    if cfg.quantization_bit is not None and cfg.quantization_method == "bnb":
        return True
    return bool(cfg.use_galore or cfg.use_apollo) or any(m in cfg.optim for m in BNB_OPTIM_MARKERS)


def hide_unused_bitsandbytes(cfg: TrainConfig) -> bool:
    """Mark bitsandbytes absent for this process when the run does not need it and nothing has imported it
    yet. Returns True when it was hidden."""
    if needs_bitsandbytes(cfg) or "bitsandbytes" in sys.modules:
        return False
    sys.modules["bitsandbytes"] = None  # type: ignore[assignment]
    return True


def hide_unused_deepspeed(cfg: TrainConfig) -> bool:
    """Mark deepspeed absent for this process when the run has no DeepSpeed config and nothing has imported
    it yet. Returns True when it was hidden."""
    if cfg.deepspeed is not None or cfg.deepspeed_config is not None or "deepspeed" in sys.modules:
        return False
    sys.modules["deepspeed"] = None  # type: ignore[assignment]
    return True
