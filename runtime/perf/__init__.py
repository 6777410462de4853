"""Perf decisions, made before anything loads: which levers a run gets (plan.py; the NPU plan, npu.py;
what both ask of a config, predicates.py) and lean start-up imports. The levers live in runtime/levers/."""
