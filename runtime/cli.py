"""`xgen-runtime train|export CFG`, `xgen-runtime make-tiny DIR`.

A bad config is one line `xgen-runtime: error: <key>: <message>` and exit status 2, before
torch or any model is loaded; the config module is torch-free so that check is instant.
"""

from __future__ import annotations

import argparse
import sys

from runtime.config import ConfigError, load_config
from runtime.secrets import check_test_assert_env, load_secret_env_file, redact

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xgen-runtime", description="xgen's trainer (LLaMA-Factory keys).")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train with a config (xgen YAML with train:, or a flat one)")
    train.add_argument("config")
    export = sub.add_parser("export", help="merge a LoRA adapter into its base model")
    export.add_argument("config")
    tiny = sub.add_parser("make-tiny", help="write a tiny model (DIR/model) and datasets (DIR/data)")
    tiny.add_argument("dir")
    tiny.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "make-tiny":
            from runtime.tiny import build_tiny

            if not sys.stdout.isatty():
                import transformers

                transformers.utils.logging.disable_progress_bar()

            paths = build_tiny(args.dir, seed=args.seed)
            print(f"xgen-runtime: wrote {paths.model} and {paths.data}")
            return 0
        load_secret_env_file()  # before anything reads the environment (DeepSpeed multi-node only)
        cfg = load_config(args.config)
        if args.command == "export":
            from runtime.export import export

            print(f"xgen-runtime: exported merged model to {export(cfg)}")
            return 0
        from runtime.train import train

        check_test_assert_env()
        return train(cfg)
    except ConfigError as exc:
        print(redact(f"xgen-runtime: error: {exc}"), file=sys.stderr, flush=True)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
