#!/usr/bin/env bash
# LLaMA-Factory 0.9.5 in its own virtualenv, for bench/sft_throughput.py's lf_default / lf_best variants.
# It is never a dependency of xgen: it pins transformers <= 5.6 and peft <= 0.18.1, so it cannot share the
# project's environment (../shared/notes/llamafactory-peer.md).
#
#   bash bench/lf_venv.sh [DIR]           create DIR (default .lfvenv) or complete it; idempotent
#   bash bench/lf_venv.sh --check [DIR]   change nothing: exit 0 when DIR's LLaMA-Factory imports, else 1
#
# Then: XGEN_LF_PYTHON=DIR/bin/python python bench/sft_throughput.py ...   (or --lf-python DIR/bin/python)
#
# Environment:
#   LF_WHEELS=PATH   offline: install from the wheels in PATH only (pip --no-index --find-links PATH --no-deps),
#                    as bench/run_gpu.sh does with .whl/lf from bench/fetch_wheels.sh
#   LF_SYSTEM_SITE=1 the venv also sees the system's site-packages (the GPU image's CUDA torch)
#   LF_BASE_PYTHON=P the python that creates the venv (default python3)
#   LF_TORCH=SPEC    torch to install with it online (default torch==2.13.0, the CPU build measured here;
#                    empty: none, e.g. with LF_SYSTEM_SITE=1)
#
# The two install traps, handled after every install (and reported by --check):
#   1. pip pulls torchvision and torchaudio builds that cannot load against the venv's torch. torchvision is
#      not needed for text training: when it does not import, it is uninstalled.
#   2. LLaMA-Factory imports torchaudio unconditionally (data/mm_plugin.py). When it does not import, its
#      compiled extensions are renamed *.so.disabled: torchaudio then imports in pure-Python mode.
set -euo pipefail

check_only=0
if [ "${1:-}" = --check ]; then check_only=1; shift; fi
DIR="${1:-.lfvenv}"
PY="$DIR/bin/python"
LF_SPEC="llamafactory==0.9.5"
LF_TORCH="${LF_TORCH-torch==2.13.0}"

imports() { PYTHONPATH="" "$PY" -c "import $1" >/dev/null 2>&1; }
in_venv() {  # is distribution $1 installed inside DIR itself (not only visible from the system site)?
  PYTHONPATH="" "$PY" - "$1" "$DIR" <<'PY'
import importlib.metadata as md, os, sys
try:
    path = os.path.realpath(str(md.distribution(sys.argv[1]).locate_file("")))
except md.PackageNotFoundError:
    sys.exit(1)
sys.exit(0 if path.startswith(os.path.realpath(sys.argv[2])) else 1)
PY
}
report() {
  PYTHONPATH="" "$PY" - <<'PY'
import importlib.metadata as md
import llamafactory.train.tuner  # noqa: F401  - the `train` entry point and everything it imports
print("lf_venv: ok:", ", ".join(f"{n} {md.version(n)}" for n in
      ("llamafactory", "torch", "transformers", "peft", "accelerate", "datasets", "trl")))
PY
}

if [ "$check_only" = 1 ]; then
  [ -x "$PY" ] || { echo "lf_venv: $DIR has no bin/python (create it: bash bench/lf_venv.sh $DIR)"; exit 1; }
  ok=0
  imports torchvision || ! PYTHONPATH="" "$PY" -m pip show -q torchvision >/dev/null 2>&1 \
    || { echo "lf_venv: trap 1 open: torchvision is installed but does not import"; ok=1; }
  imports torchaudio || { echo "lf_venv: trap 2 open: torchaudio does not import"; ok=1; }
  report || { echo "lf_venv: llamafactory does not import from $DIR"; ok=1; }
  exit "$ok"
fi

# --- create and install (skipped when llamafactory 0.9.5 is already there) ---
if [ ! -x "$PY" ]; then
  "${LF_BASE_PYTHON:-python3}" -m venv ${LF_SYSTEM_SITE:+--system-site-packages} "$DIR"
fi
if [ "$(PYTHONPATH="" "$PY" -c 'import importlib.metadata as m; print(m.version("llamafactory"))' 2>/dev/null)" \
  != 0.9.5 ]; then
  if [ -n "${LF_WHEELS:-}" ]; then
    # Offline: every carried wheel, no resolver (what the carried set lacks comes from the system site).
    PYTHONPATH="" "$PY" -m pip install -q --no-index --no-deps --find-links "$LF_WHEELS" "$LF_WHEELS"/*.whl
  else
    # shellcheck disable=SC2086  # LF_TORCH is one spec or empty
    PYTHONPATH="" "$PY" -m pip install -q $LF_TORCH "$LF_SPEC"
  fi
fi

# --- trap 1: torchvision that cannot load ---
if ! imports torchvision && in_venv torchvision; then
  echo "lf_venv: torchvision does not import against this torch; uninstalling it (text training needs none)"
  PYTHONPATH="" "$PY" -m pip uninstall -q -y torchvision
fi
# --- trap 2: torchaudio, imported by LLaMA-Factory, whose compiled extensions cannot load ---
if ! imports torchaudio; then
  lib="$(PYTHONPATH="" "$PY" -c 'import importlib.util as u, os; s = u.find_spec("torchaudio"); print(os.path.join(os.path.dirname(s.origin), "lib") if s else "")')"
  if [ -n "$lib" ] && [ -d "$lib" ]; then
    echo "lf_venv: torchaudio's extensions do not load; disabling $lib/*.so (pure-Python mode)"
    for so in "$lib"/*.so; do [ -e "$so" ] && mv "$so" "$so.disabled"; done
  fi
  imports torchaudio || { echo "lf_venv: torchaudio still does not import (is it installed?)"; exit 1; }
fi
report
echo "lf_venv: use XGEN_LF_PYTHON=$PY"
