"""xgen's packaged trainer: `python -m runtime train CFG` (console script `xgen-runtime`).

Importing this package must stay cheap and torch-free: the generator imports
`runtime.config` and `runtime.contract.zero` to validate configs without torch.
"""
