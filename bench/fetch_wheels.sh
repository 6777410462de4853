#!/usr/bin/env bash
# Download, here (where PyPI is reachable), the wheels the GPU machine lacks, into .whl/ at the repo root.
# The GPU image has torch 2.11 / transformers 5.17 / peft / accelerate but no datasets or liger-kernel, and
# no network. We carry the same transformers/peft/datasets the CPU suite is tested with.
set -euo pipefail
cd "$(dirname "$0")/.."
exclude="$(git rev-parse --git-path info/exclude)"  # a worktree's .git is a file: ask git where it is
mkdir -p "$(dirname "$exclude")"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
mkdir -p .whl
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
  --platform manylinux_2_24_x86_64 --platform any)
WHEELS=(transformers==5.23.0 peft==0.21.2 datasets==5.2.0 liger-kernel==0.8.5 dill==0.4.0 "multiprocess==0.70.18")
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d .whl "${WHEELS[@]}"
# DeepSpeed for scripts/gpu_checks.sh: the sdist (~2 MB, built there against the image's torch)
# and the dependencies the image lacks, in a subfolder so bench/run_gpu.sh's .whl/*.whl leaves them alone.
mkdir -p .whl/deepspeed
python3 -m pip download -q --no-deps --no-binary :all: -d .whl/deepspeed deepspeed==0.19.8
DS_WHEELS=(hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  typing-extensions==4.16.0)  # pydantic-core wants typing-extensions>=4.16, newer than the image may have
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d .whl/deepspeed "${DS_WHEELS[@]}"
# LLaMA-Factory 0.9.5 for bench/sft_throughput.py's lf_default/lf_best, in .whl/lf. bench/run_gpu.sh
# installs them offline with bench/lf_venv.sh (--no-deps) into a venv that also sees the image's site-packages
# (its CUDA torch, numpy, pyarrow, requests, ...). Carried: what LLaMA-Factory's train path imports (traced in
# the CPU venv: `import llamafactory.train.tuner` and the sft workflow) at the versions LLaMA-Factory pins or
# was measured with here, where the image has another version (transformers 5.17, tokenizers) or may lack it.
# Not carried, because the train path does not need them: gradio, fastapi, uvicorn, modelscope, av and matplotlib
# (both imported only when installed), scipy, torchvision.
mkdir -p .whl/lf
LF_WHEELS=(llamafactory==0.9.5 transformers==5.6.0 tokenizers==0.22.2 peft==0.18.1 accelerate==1.11.0 trl==0.24.0
  datasets==4.0.0 dill==0.3.8 multiprocess==0.70.16 "fsspec==2025.3.0" xxhash==4.1.0 omegaconf==2.4.0
  sentencepiece==0.2.3 torchaudio==2.11.1 pandas==2.3.3 pytz==2026.6 tzdata==2026.6 python-dateutil==4.0.0)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d .whl/lf "${LF_WHEELS[@]}"
du -sh .whl .whl/lf
# The device tool carries at most 64 MiB with the working tree: keep the wheels well below it.
LIMIT_MIB=56
size_mib=$(( $(du -sb .whl | cut -f1) / 1048576 ))
if [ "$size_mib" -gt "$LIMIT_MIB" ]; then
  echo "fetch_wheels: .whl is ${size_mib} MiB, over ${LIMIT_MIB} MiB (the carry limit is 64 MiB with the tree)" >&2
  exit 1
fi
echo "fetch_wheels: .whl is ${size_mib} MiB (limit ${LIMIT_MIB})"
