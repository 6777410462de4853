#!/usr/bin/env bash
# The embedded default, end to end on this machine: set up, build a tiny model and dataset in code
# (no downloads), generate the per-node launch script with xgen, run it (2 CPU processes, gloo), and
# check that the fine-tuned adapter loads.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false DS_ACCELERATOR=cpu

work=demo-run
rm -rf "$work" && mkdir -p "$work"
echo "== 1/4 tiny model + datasets -> $work/tiny"
xgen-runtime make-tiny "$work/tiny"
cp examples/cpu-tiny.yaml "$work/xgen.yaml"   # its relative paths resolve next to the config

echo "== 2/4 xgen check + xgen shell -> $work/node0.sh"
xgen check "$work/xgen.yaml"
xgen shell "$work/xgen.yaml" --node-rank 0 -o "$work/node0.sh"

echo "== 3/4 run the generated script"
start=$SECONDS
bash "$work/node0.sh"
echo "training script finished in $((SECONDS - start)) s"

echo "== 4/4 reload the result (from another directory: the adapter records its base model's absolute path)"
python - "$work/saves/tiny-cpu-lora" <<'PY'
import json, sys
from pathlib import Path
from peft import AutoPeftModelForCausalLM

out = Path(sys.argv[1])
results = json.loads((out / "train_results.json").read_text())
model = AutoPeftModelForCausalLM.from_pretrained(out)
print(f"reloaded {type(model).__name__} from {out}: world_size={results['world_size']} "
      f"steps={results['global_step']} train_loss={results['train_loss']:.3f}")
PY
