#!/usr/bin/env bash
# Set up a fresh machine for xgen development: system packages (root only), a .venv with the
# pinned CPU stack, and xgen itself installed editable. Idempotent: re-running is cheap.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(shellcheck slurm-wlm munge openssh-server pdsh iproute2 iptables)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]]; then
    echo "setup: apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "setup: not root, skipping system packages: ${missing[*]} (cluster tests will be skipped)" >&2
  fi
fi

if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
stamp=.venv/.xgen-setup-stamp
if [[ ! -f $stamp || requirements-dev.txt -nt $stamp || pyproject.toml -nt $stamp ]]; then
  echo "setup: installing Python packages into .venv (about 2 minutes on a fresh machine)"
  .venv/bin/pip install -q -r requirements-dev.txt
  # deepspeed ships as an sdist; no-build-isolation records the real torch version and
  # DS_BUILD_OPS=0 leaves its C++ ops to build on first use (only where they are needed).
  DS_BUILD_OPS=0 .venv/bin/pip install -q --no-cache-dir --no-build-isolation "deepspeed==0.19.8"
  .venv/bin/pip install -q --no-deps -e .
  touch "$stamp"
fi
