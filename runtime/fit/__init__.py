"""The fit loop around transformers' Trainer: the trainer class, optimizers, checkpoints, outputs,
progress and preemption."""
