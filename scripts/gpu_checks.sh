#!/usr/bin/env bash
# The one command for the GPU checks (docs/gpu-checks.md): carried wheels (+ deepspeed from its sdist)
# -> tests/runtime/distributed/test_gpu_paths.py on one CUDA GPU. Separate from bench/run_gpu.sh (the throughput benchmark).
#
#   bash scripts/gpu_checks.sh       # on the GPU machine, from the repo root, with .whl/ carried along
#
# Everything it writes lands in $OUT (the device tool brings that folder back): versions.txt,
# deepspeed-install.log, pytest-gpu-paths.log, gpu-figures.jsonl (one JSON line per training launch) and
# plan-peak.jsonl (XGEN_PLAN_PEAK=1: xgen plan's peak against the measured one, bench/plan_peak.py).
set -uo pipefail  # no -e: a failed step is logged and the next one still runs; the exit status sums them up
cd "$(dirname "$0")/.." || exit 2

# --- budget ---
# PYTEST_TIMEOUT_S: hard stop for the tests; below the device tool's 600 s so $OUT still comes back.
PYTEST_TIMEOUT_S="${PYTEST_TIMEOUT_S:-530}"
# OUT: where logs and figures go; the device tool sets it, a manual run gets a temp folder.
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
status=0

# --- environment and wheels (shared with bench/run_gpu.sh) ---
# shellcheck source=bench/gpu_env.sh
source bench/gpu_env.sh
gpu_env_setup || { echo "gpu_checks: installing .whl/*.whl failed (was .whl carried?)"; exit 2; }
export DS_ACCELERATOR=cuda           # tests/conftest.py defaults it to cpu for the CPU suite
export TORCHINDUCTOR_CACHE_DIR=/tmp/xgen-inductor-cache  # one flex-attention compile for all launches

# --- deepspeed (optional) ---
# The image has no deepspeed. bench/fetch_wheels.sh puts its sdist and the missing dependency wheels in
# .whl/deepspeed/ (a subfolder, so bench/run_gpu.sh's .whl/*.whl does not install them). Built offline
# against the image's torch: --no-build-isolation (setuptools and wheel are on the image); DS_BUILD_OPS=0
# leaves the ops (cpu_adam) to their JIT build at first use. Without it the DeepSpeed tests skip.
if compgen -G ".whl/deepspeed/deepspeed-*.tar.gz" >/dev/null; then
  {
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      .whl/deepspeed/*.whl \
      && DS_BUILD_OPS=0 python3 -m pip install -q --no-index --no-deps --no-cache-dir --no-build-isolation \
        --upgrade --target "$SITE" .whl/deepspeed/deepspeed-*.tar.gz \
      && python3 -c "import deepspeed; print('deepspeed', deepspeed.__version__, 'imports')"
  } 2>&1 | tee "$OUT/deepspeed-install.log" || echo "gpu_checks: deepspeed did not install; its tests will skip"
else
  echo "gpu_checks: no .whl/deepspeed/deepspeed-*.tar.gz (bench/fetch_wheels.sh); DeepSpeed tests will skip"
fi
echo "gpu_checks: setup took ${SECONDS} s"

# --- the checks ---
export XGEN_GPU_FIGURES="$OUT/gpu-figures.jsonl"
: > "$XGEN_GPU_FIGURES"
if [[ "${PLAN_ONLY:-0}" != 1 ]]; then
  timeout "$PYTEST_TIMEOUT_S" python3 -m pytest -q -m gpu -p no:cacheprovider -rA \
    tests/runtime/distributed/test_gpu_paths.py 2>&1 | tee "$OUT/pytest-gpu-paths.log" || status=1
fi
# XGEN_PLAN_PEAK=1: also xgen plan's peak against torch.cuda.max_memory_allocated (docs/plan.md; within
# 10% is the aim), ~1 min; opt-in so the pytest budget above keeps the whole run under the tool's 600 s
# (with XGEN_PLAN_PEAK=1 lower PYTEST_TIMEOUT_S, or set PLAN_ONLY=1 to skip the tests).
if [[ "${XGEN_PLAN_PEAK:-0}" == 1 ]]; then
  timeout 240 python3 bench/plan_peak.py 2>&1 | tee "$OUT/plan-peak.jsonl" || status=1
fi
echo "gpu_checks: done in ${SECONDS} s, status ${status}; files in $OUT"
exit "$status"
