"""xgen: one YAML config in, launch scripts out (Slurm, DeepSpeed hostfile, per-node shell, accelerate).

Never imports torch: only `runtime.config` and `runtime.contract.zero`, which are torch-free by contract.
"""

__version__ = "0.1.0"
