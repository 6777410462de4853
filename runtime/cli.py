"""`xgen-runtime train|export|check CFG`, `xgen-runtime make-tiny DIR`, `xgen-runtime llama-pro SRC DST`.

A bad config is one line `xgen-runtime: error: <key>: <message>` per problem and exit status 2,
before torch or any model is loaded; the config module is torch-free so that check is instant.
`check` (what the scripts run on every node before launching) also reads the datasets, torch-free.
"""

from __future__ import annotations

import argparse
import sys

from runtime.commands.check import error_lines
from runtime.config import ConfigError, load_config
from runtime.contract.say import note, say
from runtime.contract.secrets import load_secret_env_file, redact
from runtime.scaffolding.testing import check_test_assert_env

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xgen-runtime", description="xgen's trainer (LLaMA-Factory keys).")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train with a config (xgen YAML with train:, or a flat one)")
    train.add_argument("config")
    export = sub.add_parser("export", help="merge a LoRA adapter into its base model, or re-save a model")
    export.add_argument("config")
    check = sub.add_parser(
        "check", help="validate a config on this node: keys, model paths, datasets and columns (no torch)"
    )
    check.add_argument("config")
    check.add_argument(
        "--visible-only",
        action="store_true",
        help="what is not visible from here (a model, dataset_dir, a DeepSpeed JSON) is a note, "
        "not an error (xgen check)",
    )
    check.add_argument(
        "--download",
        action="store_true",
        help="download the hub datasets into the datasets cache (cache_dir, else HF_HOME's), as rank 0 of "
        "a run would; run it where there is network, on a cache the nodes mount",
    )
    tiny = sub.add_parser("make-tiny", help="write a tiny model (DIR/model) and datasets (DIR/data)")
    tiny.add_argument("dir")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--text-only", action="store_true", help="skip the tiny Qwen-VL models and images")
    pro = sub.add_parser("llama-pro", help="LLaMA-Pro: expand SRC by N zero-output blocks into DST")
    pro.add_argument("src")
    pro.add_argument("dst")
    pro.add_argument("--num-expand", type=int, required=True)
    sub.add_parser(
        "launch",
        help="torch.distributed.run with the same arguments; restarts and endings said in one line",
        add_help=False,
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    own_process = argv is None  # `xgen-runtime` / `python -m runtime`, not an in-process caller (tests)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["launch"]:  # every argument after it is torch.distributed.run's own
        from runtime.commands.launch import launch

        return launch(argv[1:])
    args = _parser().parse_args(argv)
    try:
        if args.command == "make-tiny":
            from runtime.commands.make_tiny import main_make_tiny

            if not sys.stdout.isatty():
                import transformers

                transformers.utils.logging.disable_progress_bar()

            return main_make_tiny([args.dir, "--seed", str(args.seed)] + ["--text-only"] * args.text_only)
        if args.command == "llama-pro":
            from runtime.commands.llama_pro import expand_blocks

            out = expand_blocks(args.src, args.dst, args.num_expand)
            say(f"wrote {out}; train it with use_llama_pro: true, freeze_trainable_layers: {args.num_expand}")
            return 0
        load_secret_env_file()  # before anything reads the environment (DeepSpeed multi-node only)
        cfg = load_config(args.config, visible_only=getattr(args, "visible_only", False))
        if args.command == "check":
            return _check(cfg, args.config, args.visible_only, args.download)
        if args.command == "export":
            from runtime.commands.export import export

            say(f"exported model to {export(cfg)}")
            return 0
        check_test_assert_env()
        return _train_recorded(cfg, own_process=own_process)
    except ConfigError as exc:
        _print_errors([redact(line) for line in error_lines(exc)])
        return EXIT_CONFIG


def _train_recorded(cfg, *, own_process: bool = False) -> int:
    """Train under torch.distributed.elastic's `record`: an exception on any rank is written to the
    error file torch.distributed.run gives each worker, so its summary shows the first failing rank's
    real traceback instead of "To enable traceback see …" (imported here: check/export stay torch-free)."""
    from runtime.perf.lean_imports import hide_unused_bitsandbytes, hide_unused_deepspeed

    hide_unused_bitsandbytes(cfg)  # before torch: nothing may have imported it yet
    if own_process:  # a process of its own: every start and restart (lean_imports says why only there)
        hide_unused_deepspeed(cfg)
    from torch.distributed.elastic.multiprocessing.errors import record

    from runtime.train import train

    return record(train)(cfg)


def _print_errors(lines: list[str]) -> None:
    for line in lines:
        print(f"xgen-runtime: error: {line}", file=sys.stderr, flush=True)


def _check(cfg, path: str, visible_only: bool, download: bool = False) -> int:
    from runtime.commands.check import check
    from runtime.config.files import read_yaml

    prefix = "train." if "train" in read_yaml(path) else ""
    report = check(cfg, prefix=prefix, visible_only=visible_only, download=download)
    for message in report.notes:
        note(message)
    if report.problems:
        _print_errors(report.problems)
        return EXIT_CONFIG
    plural = "" if report.datasets == 1 else "s"
    unread = f"; {report.unread} from a hub, not read: see the note" if report.unread else ""
    say(f"check: ok ({report.datasets} dataset{plural} read, columns present{unread})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
