"""Preflight: each node checks, before any model is loaded, what most often breaks multi-node jobs.

Torch-free and quick on purpose: it runs on every node from the generated scripts (`# --- preflight ---`)
as `python -m runtime.preflight CONFIG …`, prints one line per problem

    xgen: preflight: <host>: <what>: <what is wrong>; <the fix>

and exits with EXIT_PREFLIGHT (3) when anything is wrong, so "the cluster is wrong" stands apart from a
config error (2), a training failure (1) and a checkpoint-and-requeue (75). One module per check family:
`network` (hostname, master address, NIC, InfiniBand switch), `resources` (/dev/shm, disk), `versions`,
`inputs` (model, datasets, DeepSpeed JSON, shared output_dir), `devices` (nvidia-smi / npu-smi), `ssh`
(hostfile launchers), `exchange` (the nodes compare facts over the master port before torch.distributed
starts) and `run` (the order, the deadline, the exit status). docs/preflight.md lists every check.
"""

EXIT_PREFLIGHT = 3
