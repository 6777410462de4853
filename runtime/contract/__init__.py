"""Torch-free launch contracts shared by the generator (xgen) and the runtime: the ZeRO JSON (zero),
the Slurm signal/pid/progress contract (slurm), credentials (secrets), the expected world (expected_world),
the one atomic file write (files), the `xgen-runtime: …` log line that `xgen check` reads back (say),
and the memory plan per device (plan; docs/plan.md).

Standard library and runtime.config only: `xgen` imports these, and `xgen` never imports torch.
"""
