#!/usr/bin/env bash
# The one command for the GPU machine: carried wheels -> LLaMA-Factory's venv -> GPU correctness
# tests -> benchmark (padded, flat_flex, runtime, runtime_tokens, lf_default, lf_best).
#
#   bash bench/run_gpu.sh            # on the GPU machine, from the repo root, with .whl/ carried along
#   ONLY=bench MODES=lora bash bench/run_gpu.sh    # a second call: no tests, the other mode
#
# Everything it writes lands in $OUT (the device tool brings that folder back): versions.txt, pytest-gpu.log,
# bench.log, results.json and, when time is left, results-levers.json. The device tool kills a command at
# 600 s, so every step checks the clock and the benchmark rewrites results.json after each variant.
set -uo pipefail  # no -e: a failed step is logged and the next one still runs; the exit status sums them up
cd "$(dirname "$0")/.." || exit 2

# --- budget ---
# BUDGET_S: seconds this script may use in all (keep below the tool's 600 s limit for the copy-back).
BUDGET_S="${BUDGET_S:-570}"
# OUT: where logs and results go; the device tool sets it, a manual run gets a temp folder.
OUT="${OUT:-$(mktemp -d)}"
# ONLY=levers: skip the tests and the main table, run only the lever ablation (a second, later call).
# ONLY=bench: skip the GPU tests, run the main table only.
ONLY="${ONLY:-}"
# MODES: the bench's --modes (full first: the headline figure). VARIANTS: its --variants (LLaMA-Factory's
# two are dropped when its venv cannot be made).
MODES="${MODES:-full,lora}"
VARIANTS="${VARIANTS:-padded,flat_flex,runtime,runtime_tokens,lf_default,lf_best}"
mkdir -p "$OUT"
left() { echo $((BUDGET_S - SECONDS)); }
status=0

# --- environment and wheels (shared with scripts/gpu_checks.sh) ---
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True  # less fragmentation across the variants of one process
# shellcheck source=bench/gpu_env.sh
source bench/gpu_env.sh
gpu_env_setup || { echo "run_gpu: installing .whl/*.whl failed (was .whl carried?)"; exit 2; }

if [ "$ONLY" != levers ]; then
  # --- LLaMA-Factory 0.9.5 in its own venv, offline, over the image's CUDA torch (bench/lf_venv.sh handles
  # the torchvision/torchaudio traps); its wheels are in .whl/lf (bench/fetch_wheels.sh) ---
  if [[ "$VARIANTS" == *lf_* ]]; then
    if LF_WHEELS=.whl/lf LF_SYSTEM_SITE=1 LF_TORCH="" timeout 150 bash bench/lf_venv.sh /tmp/lfvenv \
      2>&1 | tee "$OUT/lf_venv.log" && grep -q "^lf_venv: ok" "$OUT/lf_venv.log"; then
      export XGEN_LF_PYTHON=/tmp/lfvenv/bin/python
    else
      echo "run_gpu: LLaMA-Factory's venv failed ($OUT/lf_venv.log); running without lf_default/lf_best" \
        | tee -a "$OUT/lf_venv.log"
      VARIANTS="$(echo "$VARIANTS" | tr , '\n' | grep -v '^lf_' | paste -sd,)"
      status=1
    fi
  fi

  if [ "$ONLY" != bench ]; then
    # --- correctness on the GPU (tests/runtime/perf/test_perf_gpu.py: optimised vs plain path, bf16) ---
    timeout "$(( $(left) < 180 ? $(left) : 180 ))" python3 -m pytest -q -m gpu -p no:cacheprovider \
      tests/runtime/perf/test_perf_gpu.py 2>&1 | tee "$OUT/pytest-gpu.log" || status=1
  fi

  # --- benchmark: MODES x VARIANTS (each variant in its own process; runs predicted past the deadline
  # are skipped, and results.json is rewritten after every run) ---
  BENCH_S=$(( $(left) - 15 ))
  timeout "$BENCH_S" python3 bench/sft_throughput.py --modes "$MODES" --variants "$VARIANTS" \
    --deadline-s "$((BENCH_S - 10))" --out "$OUT/results.json" 2>&1 | tee "$OUT/bench.log" || status=1
fi

# --- lever ablation with what time is left (full SFT; one lever off per row, against the runtime row) ---
if [ "$(left)" -gt 120 ]; then
  LEVER_S=$(( $(left) - 10 ))
  timeout "$LEVER_S" python3 bench/sft_throughput.py --modes full --variants runtime --levers \
    --deadline-s "$((LEVER_S - 10))" --out "$OUT/results-levers.json" 2>&1 | tee "$OUT/bench-levers.log" || status=1
else
  echo "run_gpu: $(left) s left, no lever ablation in this run" | tee -a "$OUT/bench.log"
fi
echo "run_gpu: done in ${SECONDS} s, status ${status}; files in $OUT"
exit "$status"
