"""`xgen plan`: the memory one training run needs per device, before anything loads (docs/plan.md).

Torch-free (standard library and runtime.config): the generator, `xgen check` and the node preflight all
read the same numbers. shape: config.json → parameter counts; terms: one function per memory term, each
citing its source; choose: the configured run, the alternatives and the recommendation; devices: how much
memory a device has; report: the text.
"""

from runtime.contract.plan.choose import HEADROOM, candidates, configured_strategy, recommend, run_from_config
from runtime.contract.plan.devices import memory_setting_problem, stated_memory
from runtime.contract.plan.report import misfit, plan_text
from runtime.contract.plan.shape import Shape, read_shape, shape_from_config
from runtime.contract.plan.terms import Run, breakdown, peak

__all__ = [
    "HEADROOM",
    "Run",
    "Shape",
    "breakdown",
    "candidates",
    "configured_strategy",
    "memory_setting_problem",
    "misfit",
    "peak",
    "plan_text",
    "read_shape",
    "recommend",
    "run_from_config",
    "shape_from_config",
    "stated_memory",
]
