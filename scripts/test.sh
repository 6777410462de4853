#!/usr/bin/env bash
# The project's test command (README, and .ci/run calls exactly this).
# Sets up what is missing, then runs the whole suite: unit, golden, runtime and the real
# two-node cluster tests (those need root; they skip with a reason otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false DS_ACCELERATOR=cpu
exec .venv/bin/python -m pytest "$@"
