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
  - `runtime_restart`: the restart cost. `python -m runtime launch --standalone --nproc-per-node 1
    --max-restarts 1 -m runtime train` (torch.distributed.run with restarts, as the generated scripts run
    it) with the warm `cache_dir`, `max_steps` 3 and `save_steps` 1; XGEN_FAULT_KILL_AT_STEP=2 SIGKILLs the
    worker at the end of step 2, after checkpoint-1 was published. The launcher restarts it, it resumes
    from checkpoint-1, and the runtime prints `restart cost: X s from the failure to step 2`: from the
    failure (the agent's timestamp of it) to the end of the first step after the resume. That X is
    `restart_cost_s`, compared with `lf_warm`'s `first_step_s` (the ratio is printed; at most 1 is the
    goal of issue #25). torch stamps the failure in whole seconds, so X runs 0-1 s high;
    `restart_said_to_cost_s`, the bench's own clock from the launcher's restart line to the cost line, is
    the cross-check (≤ 0.1 s low: the agent notices a dead worker within its monitor interval).
  Every variant: sft, LoRA, template chatml, cutoff_len 1024, preprocessing_num_workers 2, batch 2,
  max_steps 1, save_strategy no (runtime_restart: the three keys above).
  A warm variant (`*_warm`, `runtime_restart`) reads the `cache_dir` its tool's cold start made in the same
  round (`cache-<tool>-<round>`), or round 0's when the plan has no cold start of that tool. One that is
  still empty is first primed by one untimed start of its tool (`primed_s` in its row), so
  `--variants lf_warm,runtime_restart` works on a fresh `--work` folder.
* measures `first_step_s`: from just before the process is started to the end of its first optimizer
  step (a TrainerCallback's on_step_end, written to a file; the wrapper only adds that callback and then
  calls the tool's own CLI entry point with the same argv), and `wall_s` for the whole process; counts the
  datasets cache files (`*.arrow`) each start added to its `cache_dir` (0: everything was read from cache).
* prints medians and ratios and writes bench/results-datapath.json (`--out`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LF_VENV = Path(os.environ.get("LF_VENV", "/work/lfvenv"))
VARIANTS = ("runtime_cold", "lf_cold", "runtime_warm", "lf_warm", "runtime_restart")
# runtime_restart: the fault after this step; checkpoint-(FAULT_STEP - 1) is the one resumed from
FAULT_STEP = 2
RESTART_COST = re.compile(r"restart cost: ([0-9.]+) s from the failure to step (\d+)")

# A wrapper run by each tool's own python: adds one TrainerCallback that writes the time of the first
# optimizer step, then hands the argv to the tool's CLI entry point unchanged.
WRAPPER = r"""
import json, sys, time

MARKS = {"python": time.time()}
MARK = sys.argv.pop(1)
TOOL = sys.argv.pop(1)
if TOOL == "runtime":  # what `xgen-runtime train` does before anything imports peft (runtime/cli.py)
    from runtime.config import load_config
    from runtime.perf.lean_imports import hide_unused_bitsandbytes, hide_unused_deepspeed

    hide_unused_bitsandbytes(load_config(sys.argv[2]))
    hide_unused_deepspeed(load_config(sys.argv[2]))
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


def restart_keys(keys: dict) -> dict:
    """runtime_restart: a checkpoint at every step, the fault after step FAULT_STEP, one step after it."""
    return {**keys, "max_steps": FAULT_STEP + 1, "save_strategy": "steps", "save_steps": 1}


def count_arrow(cache: Path) -> int:
    return sum(1 for _ in cache.rglob("*.arrow")) if cache.exists() else 0


def _env(work: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("PYTHONPATH", None)
    env["TMPDIR"] = str(work)
    return env


def _tool_argv(tool: str, work: Path, mark: Path, config: Path) -> list[str]:
    """The tool's own python running the first-step wrapper, which then calls the tool's CLI."""
    wrapper = work / "first_step.py"
    wrapper.write_text(WRAPPER)
    python = str(LF_VENV / "bin" / "python") if tool == "lf" else sys.executable
    return [python, str(wrapper), str(mark), tool, "train", str(config)]


def prime(tool: str, work: Path, model_dir: Path, data_dir: Path, cache: Path, timeout: int) -> float:
    """One untimed start of `tool` that fills an empty `cache` (a warm variant's round on a fresh --work)."""
    out = work / f"out-prime-{tool}"
    shutil.rmtree(out, ignore_errors=True)
    config = work / f"prime-{tool}.yaml"
    config.write_text(json.dumps(train_keys(model_dir, data_dir, out, cache)))
    log = work / f"prime-{cache.name}.log"
    print(f"priming {cache} (one untimed {tool} start; log {log})", flush=True)
    start = time.time()
    with open(log, "w") as handle:
        argv = _tool_argv(tool, work, work / "prime.first-step", config)
        code = subprocess.run(argv, stdout=handle, stderr=subprocess.STDOUT, env=_env(work), timeout=timeout)
    if code.returncode != 0 or not count_arrow(cache):
        raise RuntimeError(f"priming {cache} exited {code.returncode}; log {log}:\n{log.read_text()[-3000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return round(time.time() - start, 2)


def run_variant(
    variant: str, work: Path, model_dir: Path, data_dir: Path, round_: int, timeout: int, plan: list[str]
) -> dict:
    tool, state = variant.split("_")
    # Each round's cold start makes that round's cache; with no cold start in the plan every round reads
    # round 0's (primed once).
    cache = work / f"cache-{tool}-{round_ if f'{tool}_cold' in plan else 0}"
    if state == "cold" and cache.exists():
        shutil.rmtree(cache)
    primed = None
    if state != "cold" and not count_arrow(cache):
        primed = prime(tool, work, model_dir, data_dir, cache, timeout)
    if state == "restart":
        return {**run_restart(work, model_dir, data_dir, cache, round_, timeout), "primed_s": primed}
    out = work / f"out-{variant}-{round_}"
    shutil.rmtree(out, ignore_errors=True)
    config = work / f"{variant}-{round_}.yaml"
    config.write_text(json.dumps(train_keys(model_dir, data_dir, out, cache)))  # JSON is YAML
    mark = work / f"{variant}-{round_}.first-step"
    mark.unlink(missing_ok=True)
    argv = _tool_argv(tool, work, mark, config)
    before = count_arrow(cache)
    log = work / f"{variant}-{round_}.log"
    cpu_before = _children_cpu()
    start = time.time()
    with open(log, "w") as handle:
        code = subprocess.run(
            argv, stdout=handle, stderr=subprocess.STDOUT, env=_env(work), timeout=timeout
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
        "primed_s": primed,
    }


# Lines of `runtime launch` and its worker whose arrival time (seconds after the launch started) is kept
# in runtime_restart's phases_s, the restart's timeline as the console shows it: the first attempt's step 1,
# the launcher's restart line (within the agent's 0.1 s monitor interval of the fault), then the resumed
# worker's start line (imports done, process group up), `resuming from` (data and model ready) and the
# restart cost (the first step after the resume done).
BEFORE_RESTART = {
    "first_attempt_step_1": "xgen-runtime: step 1/",
    "restart_said": "xgen-runtime: restart 1/1:",
}
AFTER_RESTART = {
    "resumed_start_line": "xgen-runtime: world_size=",
    "resuming_from": "resuming from ",
    "restart_cost_said": "restart cost: ",
}


def run_restart(work: Path, model_dir: Path, data_dir: Path, cache: Path, round_: int, timeout: int) -> dict:
    """runtime_restart: a worker SIGKILLed after step FAULT_STEP under `runtime launch --max-restarts 1`; the
    runtime's own `restart cost` line, and the arrival time of the lines that mark the restart's phases."""
    variant = "runtime_restart"
    out = work / f"out-{variant}-{round_}"
    shutil.rmtree(out, ignore_errors=True)
    config = work / f"{variant}-{round_}.yaml"
    config.write_text(json.dumps(restart_keys(train_keys(model_dir, data_dir, out, cache))))
    argv = [sys.executable, "-m", "runtime", "launch", "--standalone", "--nproc-per-node", "1"]
    argv += ["--max-restarts", "1", "-m", "runtime", "train", str(config)]
    env = {**_env(work), "XGEN_FAULT_KILL_AT_STEP": str(FAULT_STEP)}
    before = count_arrow(cache)
    log = work / f"{variant}-{round_}.log"
    phases: dict[str, float] = {}
    cpu_before = _children_cpu()
    start = time.time()
    with open(log, "w") as handle:
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, start_new_session=True
        )

        def kill_all() -> None:  # the launcher and its worker
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

        watchdog = threading.Timer(timeout, kill_all)  # a hung launch ends the read loop below
        watchdog.start()
        try:
            for line in proc.stdout:  # type: ignore[union-attr]
                now = round(time.time() - start, 2)
                handle.write(f"[{now:8.2f}] {line}")
                markers = AFTER_RESTART if "restart_said" in phases else BEFORE_RESTART
                for name, marker in markers.items():
                    if marker in line:
                        phases.setdefault(name, now)
            code = proc.wait()
        finally:
            watchdog.cancel()
            kill_all()
    wall = time.time() - start
    cpu = _children_cpu() - cpu_before
    text = log.read_text()
    found = RESTART_COST.search(text)
    resumed = f"resuming from {out / f'checkpoint-{FAULT_STEP - 1}'}" in text
    if code != 0 or not found or not resumed:
        raise RuntimeError(f"{variant} round {round_} exited {code}; log {log}:\n{text[-3000:]}")
    return {
        "variant": variant,
        "round": round_,
        # the runtime's figure: from the failure to the end of the first optimizer step after the resume
        "restart_cost_s": float(found.group(1)),
        "resumed_step": int(found.group(2)),
        # the bench's own clock for the same span, from the launcher's restart line to the cost line (both
        # said within milliseconds of the fault being noticed and of the step's end): a cross-check
        "restart_said_to_cost_s": round(phases["restart_cost_said"] - phases["restart_said"], 2),
        "phases_s": phases,
        "wall_s": round(wall, 2),
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
    ratios: tool vs tool at the same cache state, cold vs warm per tool (above 1: the first is slower);
    runtime_restart's restart_cost_s over lf_warm's first_step_s, of the medians and per round (at most 1:
    a restart costs no more than LLaMA-Factory's warm start)."""
    out: dict = {}
    for field in ("first_step_s", "cpu_s"):
        medians = {}
        for variant in VARIANTS:
            values = [r[field] for r in rows if r["variant"] == variant and r.get(field) is not None]
            if values:
                medians[variant] = round(statistics.median(values), 2)
        pairs = [("lf_cold", "runtime_cold"), ("lf_warm", "runtime_warm")]
        pairs += [("runtime_cold", "runtime_warm"), ("lf_cold", "lf_warm")]
        out[f"median_{field}"] = medians
        out[f"ratios_{field}"] = {
            f"{a} / {b}": round(medians[a] / medians[b], 2) for a, b in pairs if a in medians and b in medians
        }
    costs = [r["restart_cost_s"] for r in rows if r["variant"] == "runtime_restart"]
    if costs:
        out["median_restart_cost_s"] = round(statistics.median(costs), 2)
        lf_warm = out["median_first_step_s"].get("lf_warm")
        if lf_warm:
            out["ratio_restart_cost / lf_warm_first_step"] = round(out["median_restart_cost_s"] / lf_warm, 2)
        lf_by_round = {r["round"]: r["first_step_s"] for r in rows if r["variant"] == "lf_warm"}
        out["ratio_restart_cost / lf_warm_first_step, per round"] = {
            r["round"]: round(r["restart_cost_s"] / lf_by_round[r["round"]], 2)
            for r in rows
            if r["variant"] == "runtime_restart" and r["round"] in lf_by_round
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repeats of the variants")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results-datapath.json"))
    parser.add_argument("--work", help="keep the generated files here (default: a temporary folder)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per process")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="comma list; runtime_warm,lf_warm with an earlier run's --work re-measures warm starts; "
        "lf_warm,runtime_restart the restart cost against LLaMA-Factory's warm start",
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
        "runtime_restart": {
            "keys": restart_keys(train_keys(model_dir, data_dir, Path("OUT"), Path("CACHE"))),
            "env": {"XGEN_FAULT_KILL_AT_STEP": str(FAULT_STEP)},
        },
    }
    plan = [v for v in VARIANTS if v in args.variants.split(",")]
    for round_ in range(args.rounds):
        for variant in plan:
            row = run_variant(variant, work, model_dir, data_dir, round_, args.timeout, plan)
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
