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

# --- environment ---
export PYTHONUNBUFFERED=1           # logs stream into tee even when the command is killed
export HF_HUB_OFFLINE=1             # no network there; nothing may be downloaded anyway
export TOKENIZERS_PARALLELISM=false
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True  # less fragmentation across the variants of one process

# --- wheels ---
# The image has torch 2.11 / transformers 5.17 / peft / accelerate but no datasets or liger-kernel; carry the
# versions the CPU suite is tested with (bench/fetch_wheels.sh). --target keeps the image's site-packages intact.
# SITE: where the wheels go (read first through PYTHONPATH).
SITE="${SITE:-/tmp/site}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
  || { echo "run_gpu: installing .whl/*.whl failed (was .whl carried?)"; exit 2; }
export PYTHONPATH="$SITE:$PWD"
# datasets 5.2 wants pyarrow>=24, fsspec<=2026.9.0, huggingface-hub>=1.31; transformers 5.23 wants
# huggingface-hub>=1.31, tokenizers>=0.23.1, regex>=2025.10.22. The image's versions are not all known
# ahead: print them, try the imports, and fall back to the image's transformers if 5.23 does not import.
python3 - <<'EOF' 2>&1 | tee "$OUT/versions.txt"
import importlib, importlib.metadata as md
for name in ("torch", "triton", "transformers", "peft", "accelerate", "datasets", "liger-kernel", "pyarrow",
             "fsspec", "huggingface-hub", "tokenizers", "regex", "safetensors", "dill", "multiprocess", "xxhash"):
    try:
        print(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name}: not installed")
for module in ("transformers", "datasets", "peft", "liger_kernel.transformers"):
    try:
        importlib.import_module(module)
        print(f"import {module}: ok")
    except Exception as exc:  # noqa: BLE001 - report whatever breaks
        print(f"import {module}: FAILED {type(exc).__name__}: {exc}")
EOF
if grep -q "import transformers: FAILED" "$OUT/versions.txt"; then
  echo "run_gpu: transformers 5.23 does not import here; falling back to the image's transformers" | tee -a "$OUT/versions.txt"
  rm -rf "$SITE/transformers" "$SITE"/transformers-*.dist-info
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/versions.txt"

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
