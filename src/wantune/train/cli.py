"""`wantune train CONFIG.toml [--set key=value ...] [--resume latest|PATH]`."""

from __future__ import annotations

import argparse
import os


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a LoRA or fine-tune a Wan model from a TOML config",
                              description="Train a LoRA (or the full transformer) on a Wan 2.1/2.2 model. "
                                          "See docs/training.md and examples/train_*.toml.")
    p.add_argument("config", help="training config (TOML)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set optimizer.lr=5e-5 (repeatable)")
    p.add_argument("--resume", metavar="latest|PATH", default=None,
                   help="continue from the run's newest checkpoint (latest) or a checkpoint folder")
    p.add_argument("--check", action="store_true", help="load and validate the config, print it, and exit")
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from wantune import config as typed
    from wantune.train.config import load_train_config

    cfg = load_train_config(args.config, args.overrides)
    if args.check:
        print(typed.dumps(cfg), end="")
        return 0
    from wantune.train.recipe import main

    files = main(cfg, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":  # torchrun: rank 0 speaks
        for path in files:
            print(path)
    return 0
