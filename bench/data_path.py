"""Time from process start to the first optimizer step, runtime vs LLaMA-Factory, cold and warm cache.

    .venv/bin/python bench/data_path.py                      # 50,000 rows, cutoff 1024, 2 workers
    .venv/bin/python bench/data_path.py --rows 2000 --out /tmp/r.json   # a quick check

What it does, all in one run:
* writes a deterministic alpaca json (`--rows`, default 50,000; log-normal reply lengths, a few rows
  longer than the cutoff) and a dataset_info.json naming it `bench_alpaca`;
* writes the tiny Llama (runtime.commands.make_tiny's BPE tokenizer and model builders, positions up to
  2048) that both
  tools load;
* starts each variant as its own process, `rounds` times, interleaved (the machine is shared):
  - `runtime_cold`: `xgen-runtime train` with an empty `cache_dir`;
  - `runtime_warm`: the same command again with the same data, tokenizer and `cache_dir`;
  - `lf_cold` / `lf_warm`: `llamafactory-cli train` (from LF_VENV, default /work/lfvenv) with the same
    keys, an empty `cache_dir`, then again with the same one. No `tokenized_path` for either tool: this is
    the caching a user gets by default.
  Every variant: sft, LoRA, template chatml, cutoff_len 1024, preprocessing_num_workers 2, batch 2,
  max_steps 1, save_strategy no.
* measures `first_step_s`: from just before the process is started to the end of its first optimizer
  step (a TrainerCallback's on_step_end, written to a file; the wrapper only adds that callback and then
  calls the tool's own CLI entry point with the same argv), and `wall_s` for the whole process; counts the
  datasets cache files (`*.arrow`) each start added to its `cache_dir` (0: everything was read from cache).
* prints medians and ratios and writes bench/results-datapath.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LF_VENV = Path(os.environ.get("LF_VENV", "/work/lfvenv"))
VARIANTS = ("runtime_cold", "lf_cold", "runtime_warm", "lf_warm")

# A wrapper run by each tool's own python: adds one TrainerCallback that writes the time of the first
# optimizer step, then hands the argv to the tool's CLI entry point unchanged.
WRAPPER = r"""
import json, sys, time

MARKS = {"python": time.time()}
MARK = sys.argv.pop(1)
TOOL = sys.argv.pop(1)
if TOOL == "runtime":  # what `xgen-runtime train` does before anything imports peft (runtime/cli.py)
    from runtime.config import load_config
    from runtime.perf.lean_imports import hide_unused_bitsandbytes

    hide_unused_bitsandbytes(load_config(sys.argv[2]))
from transformers import TrainerCallback

MARKS["imports"] = time.time()


class FirstStep(TrainerCallback):
    def on_train_begin(self, args, state, control, **kwargs):
        MARKS["train_begin"] = time.time()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1:
            MARKS["first_step"] = time.time()
            with open(MARK, "w") as f:
                json.dump(MARKS, f)


if TOOL == "lf":
    from llamafactory.train import tuner

    run_exp = tuner.run_exp
    tuner.run_exp = lambda args=None, callbacks=None: run_exp(args, [*(callbacks or []), FirstStep()])
    from llamafactory.cli import main

    sys.argv = ["llamafactory-cli", *sys.argv[1:]]
    sys.exit(main())
else:
    import runtime.train

    run_training = runtime.train.run_training
    runtime.train.run_training = lambda cfg, extra_callbacks=(): run_training(
        cfg, extra_callbacks=[*extra_callbacks, FirstStep()]
    )
    from runtime.cli import main

    sys.exit(main(sys.argv[1:]))
"""

# runtime.commands.make_tiny.WORDS, imported lazily (the module imports nothing heavy, but keep main fast)
WORDS = None


def generate_alpaca(path: Path, rows: int, seed: int = 0) -> dict:
    """Deterministic alpaca rows over the tiny tokenizer's words (about one token per word).

    Replies are log-normal (median ~160 words), prompts 4-30 words, an `input` on 40 % of the rows;
    about 2 % of the rows are longer than 1024 tokens, so truncation runs too."""
    from runtime.commands.make_tiny import TASKS
    from runtime.commands.make_tiny import WORDS as words

    rng = random.Random(seed)

    def text(n: int) -> str:
        return " ".join(rng.choice(words) for _ in range(n))

    data, lengths = [], []
    for i in range(rows):
        reply = min(int(rng.lognormvariate(math.log(160), 0.6)), 3000)
        row = {
            "instruction": f"{rng.choice(TASKS)} {text(rng.randint(4, 30))}",
            "input": "",
            "output": text(reply),
        }
        if i % 5 < 2:
            row["input"] = text(rng.randint(5, 120))
        data.append(row)
        lengths.append(reply)
    text = json.dumps(data, ensure_ascii=False)
    if not path.exists() or path.read_text() != text:  # unchanged: keep its mtime, so warm caches stay warm
        path.write_text(text)
    (path.parent / "dataset_info.json").write_text(json.dumps({"bench_alpaca": {"file_name": path.name}}))
    lengths.sort()
    return {"rows": rows, "median_reply_words": lengths[len(lengths) // 2], "bytes": path.stat().st_size}


def build_model_dir(dest: Path) -> Path:
    """runtime.commands.make_tiny's BPE tokenizer and Llama builder, with positions (and
    model_max_length) for 1024."""
    from transformers import AutoTokenizer

    from runtime.commands.make_tiny import build_model, build_tiny

    tiny = build_tiny(dest / "tiny")
    tokenizer = AutoTokenizer.from_pretrained(tiny.model)
    tokenizer.model_max_length = 4096
    model_dir = dest / "model"
    tokenizer.save_pretrained(model_dir)
    build_model(tokenizer, 0, max_position_embeddings=2048).save_pretrained(model_dir)
    shutil.rmtree(dest / "tiny")
    return model_dir


def train_keys(model_dir: Path, data_dir: Path, out: Path, cache: Path) -> dict:
    """The same keys for both tools (LLaMA-Factory's names)."""
    return {
        "model_name_or_path": str(model_dir),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_target": "all",
        "dataset": "bench_alpaca",
        "dataset_dir": str(data_dir),
        "template": "chatml",
        "cutoff_len": 1024,
        "preprocessing_num_workers": 2,
        "cache_dir": str(cache),
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "max_steps": 1,
        "learning_rate": 1e-4,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "output_dir": str(out),
        "seed": 0,
    }


def count_arrow(cache: Path) -> int:
    return sum(1 for _ in cache.rglob("*.arrow")) if cache.exists() else 0


def run_variant(variant: str, work: Path, model_dir: Path, data_dir: Path, round_: int, timeout: int) -> dict:
    tool, state = variant.split("_")
    cache = work / f"cache-{tool}-{round_}"
    if state == "cold" and cache.exists():
        shutil.rmtree(cache)
    out = work / f"out-{variant}-{round_}"
    shutil.rmtree(out, ignore_errors=True)
    config = work / f"{variant}-{round_}.yaml"
    config.write_text(json.dumps(train_keys(model_dir, data_dir, out, cache)))  # JSON is YAML
    mark = work / f"{variant}-{round_}.first-step"
    mark.unlink(missing_ok=True)
    wrapper = work / "first_step.py"
    wrapper.write_text(WRAPPER)
    python = str(LF_VENV / "bin" / "python") if tool == "lf" else sys.executable
    argv = [python, str(wrapper), str(mark), tool, "train", str(config)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("PYTHONPATH", None)
    env["TMPDIR"] = str(work)
    before = count_arrow(cache)
    log = work / f"{variant}-{round_}.log"
    cpu_before = _children_cpu()
    start = time.time()
    with open(log, "w") as handle:
        code = subprocess.run(
            argv, stdout=handle, stderr=subprocess.STDOUT, env=env, timeout=timeout
        ).returncode
    wall = time.time() - start
    cpu = _children_cpu() - cpu_before
    if code != 0 or not mark.exists():
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{variant} round {round_} exited {code}; log {log}:\n{tail}")
    marks = json.loads(mark.read_text())
    return {
        "variant": variant,
        "round": round_,
        "first_step_s": round(marks["first_step"] - start, 2),
        # phases: interpreter start, `import transformers` done, Trainer.train begins (data and model
        # ready), first step done; relative to the process start
        "phases_s": {k: round(v - start, 2) for k, v in marks.items()},
        "wall_s": round(wall, 2),
        # user + system seconds of the whole process and its tokenizer workers: on a shared machine this
        # moves far less with the load than the wall times do
        "cpu_s": round(cpu, 2),
        "new_cache_files": count_arrow(cache) - before,
    }


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def versions() -> dict:
    import datasets
    import transformers

    lf = subprocess.run(
        [
            str(LF_VENV / "bin" / "python"),
            "-c",
            "import llamafactory, transformers, datasets;"
            "print(llamafactory.__version__, transformers.__version__, datasets.__version__)",
        ],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    return {
        "python": platform.python_version(),
        "runtime_transformers": transformers.__version__,
        "runtime_datasets": datasets.__version__,
        "llamafactory": lf[0] if lf else None,
        "lf_transformers": lf[1] if len(lf) > 1 else None,
        "lf_datasets": lf[2] if len(lf) > 2 else None,
        "cpus": len(os.sched_getaffinity(0)),
    }


def summarize(rows: list[dict]) -> dict:
    """Medians per variant of first_step_s (wall) and cpu_s (CPU seconds of the whole process), and the
    ratios: tool vs tool at the same cache state, cold vs warm per tool (above 1: the first is slower)."""
    out: dict = {}
    for field in ("first_step_s", "cpu_s"):
        medians = {}
        for variant in VARIANTS:
            values = [r[field] for r in rows if r["variant"] == variant]
            if values:
                medians[variant] = round(statistics.median(values), 2)
        pairs = [("lf_cold", "runtime_cold"), ("lf_warm", "runtime_warm")]
        pairs += [("runtime_cold", "runtime_warm"), ("lf_cold", "lf_warm")]
        out[f"median_{field}"] = medians
        out[f"ratios_{field}"] = {
            f"{a} / {b}": round(medians[a] / medians[b], 2) for a, b in pairs if a in medians and b in medians
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repeats of the four variants")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results-datapath.json"))
    parser.add_argument("--work", help="keep the generated files here (default: a temporary folder)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per process")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="comma list; runtime_warm,lf_warm with an earlier run's --work re-measures warm starts",
    )
    args = parser.parse_args()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="datapath-"))
    work.mkdir(parents=True, exist_ok=True)
    data_dir = work / "data"
    data_dir.mkdir(exist_ok=True)
    data = generate_alpaca(data_dir / "alpaca.json", args.rows)
    model_dir = build_model_dir(work)
    print(f"data: {data}; model: {model_dir}; work: {work}", flush=True)
    rows: list[dict] = []
    context = {
        "data": data,
        "versions": versions(),
        "rounds": args.rounds,
        "keys": train_keys(model_dir, data_dir, Path("OUT"), Path("CACHE")),
    }
    for round_ in range(args.rounds):
        for variant in [v for v in VARIANTS if v in args.variants.split(",")]:
            row = run_variant(variant, work, model_dir, data_dir, round_, args.timeout)
            rows.append(row)
            print(json.dumps(row), flush=True)
            Path(args.out).write_text(
                json.dumps({**context, "runs": rows, **summarize(rows)}, indent=1) + "\n"
            )
    summary = summarize(rows)
    print(json.dumps(summary, indent=1))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
