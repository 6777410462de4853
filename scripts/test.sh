#!/usr/bin/env bash
# The project's test command (README, and .ci/run calls exactly this).
# Sets up what is missing, then runs the whole suite: unit, golden, runtime and the real
# two-node cluster tests (those need root; they skip with a reason otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false DS_ACCELERATOR=cpu
# Two pytest-xdist workers (more on bigger machines, at most 4): the cluster tests, which mostly wait on
# Slurm, run in one worker while the other trains the runtime tests (tests/conftest.py groups them).
# XGEN_TEST_WORKERS=0 runs everything in this one process.
workers=${XGEN_TEST_WORKERS:-$(nproc)}
((workers > 4)) && workers=4
((workers == 1)) && workers=2
if ((workers == 0)); then
  exec .venv/bin/python -m pytest "$@"
fi
exec .venv/bin/python -m pytest -n "$workers" --dist loadgroup "$@"
