"""`xgen doctor`: the preflight, then an all-reduce bandwidth test over the backend training will use
(gloo on CPU, NCCL on GPUs, HCCL on NPUs), a table with one row per node and a JSON report.

`python -m runtime.doctor CONFIG` runs under the same launcher, allocation, environment and rendezvous as
training (the scripts `xgen doctor slurm|shell|deepspeed` writes are the training scripts with this module
in place of `runtime train`). `facts` and `report` are torch-free; `bandwidth` imports torch.
Bus bandwidth is nccl-tests' `busbw` for all-reduce: algbw x 2(n-1)/n, algbw = bytes / time.
"""
