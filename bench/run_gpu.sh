#!/usr/bin/env bash
# The one command for the GPU machine (issue 7): carried wheels -> GPU correctness tests -> benchmark.
#
#   bash bench/run_gpu.sh            # on the GPU machine, from the repo root, with .whl/ carried along
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
ONLY="${ONLY:-}"
mkdir -p "$OUT"
left() { echo $((BUDGET_S - SECONDS)); }
status=0

# --- environment and wheels (shared with scripts/gpu_checks.sh) ---
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True  # less fragmentation across the variants of one process
# shellcheck source=bench/gpu_env.sh
source bench/gpu_env.sh
gpu_env_setup || { echo "run_gpu: installing .whl/*.whl failed (was .whl carried?)"; exit 2; }

if [ "$ONLY" != levers ]; then
  # --- correctness on the GPU (tests/runtime/test_perf_gpu.py: optimised vs plain path, bf16) ---
  timeout "$(( $(left) < 180 ? $(left) : 180 ))" python3 -m pytest -q -m gpu -p no:cacheprovider \
    tests/runtime/test_perf_gpu.py 2>&1 | tee "$OUT/pytest-gpu.log" || status=1

  # --- benchmark: 2 modes x 3 variants (the issue's table) ---
  BENCH_S=$(( $(left) - 15 ))
  timeout "$BENCH_S" python3 bench/sft_throughput.py --deadline-s "$((BENCH_S - 10))" --out "$OUT/results.json" \
    2>&1 | tee "$OUT/bench.log" || status=1
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
