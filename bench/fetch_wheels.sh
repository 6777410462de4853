#!/usr/bin/env bash
# Download, here (where PyPI is reachable), the wheels the GPU machine lacks, into .whl/ at the repo root.
# The GPU image has torch 2.11 / transformers 5.17 / peft / accelerate but no datasets or liger-kernel, and
# no network. We carry the same transformers/peft/datasets the CPU suite is tested with.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
  --platform manylinux_2_24_x86_64 --platform any)
WHEELS=(transformers==5.23.0 peft==0.21.2 datasets==5.2.0 liger-kernel==0.8.5 dill==0.4.0 "multiprocess==0.70.18")
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d .whl "${WHEELS[@]}"
# DeepSpeed for scripts/gpu_checks.sh (issue 5): the sdist (~2 MB, built there against the image's torch)
# and the dependencies the image lacks, in a subfolder so bench/run_gpu.sh's .whl/*.whl leaves them alone.
mkdir -p .whl/deepspeed
python3 -m pip download -q --no-deps --no-binary :all: -d .whl/deepspeed deepspeed==0.19.8
DS_WHEELS=(hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  typing-extensions==4.16.0)  # pydantic-core wants typing-extensions>=4.16, newer than the image may have
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d .whl/deepspeed "${DS_WHEELS[@]}"
du -sh .whl
