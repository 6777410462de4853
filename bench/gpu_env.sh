#!/usr/bin/env bash
# Sourced by bench/run_gpu.sh and scripts/gpu_checks.sh on the GPU machine; defines gpu_env_setup, which they
# call from the repo root after OUT is set: installs the carried wheels into $SITE, exports PYTHONPATH and
# the common environment, writes $OUT/versions.txt. Returns 2 when the wheels cannot be installed (the
# caller says so), else 0.
#
# The image has torch 2.11 / transformers 5.17 / peft / accelerate but no datasets or liger-kernel, and no
# network; carry the versions the CPU suite is tested with (bench/fetch_wheels.sh). --target keeps the
# image's site-packages intact.

gpu_env_setup() {
  # --- environment ---
  export PYTHONUNBUFFERED=1           # logs stream into tee even when the command is killed
  export HF_HUB_OFFLINE=1             # no network there; nothing may be downloaded anyway
  export TOKENIZERS_PARALLELISM=false

  # --- wheels ---
  # SITE: where the wheels go (read first through PYTHONPATH).
  SITE="${SITE:-/tmp/site}"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    .whl/*.whl || return 2
  export PYTHONPATH="$SITE:$PWD"
  # datasets 5.2 wants pyarrow>=24, fsspec<=2026.9.0, huggingface-hub>=1.31; transformers 5.23 wants
  # huggingface-hub>=1.31, tokenizers>=0.23.1, regex>=2025.10.22. The image's versions are not all known
  # ahead: print them, try the imports, and fall back to the image's transformers if 5.23 does not import.
  python3 - <<'PY' 2>&1 | tee "$OUT/versions.txt"
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
PY
  if grep -q "import transformers: FAILED" "$OUT/versions.txt"; then
    echo "gpu_env: transformers 5.23 does not import here; falling back to the image's transformers" \
      | tee -a "$OUT/versions.txt"
    rm -rf "$SITE/transformers" "$SITE"/transformers-*.dist-info
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/versions.txt"
  return 0  # a failing nvidia-smi is logged above, not fatal (as before this was shared)
}
