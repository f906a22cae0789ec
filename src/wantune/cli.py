"""The `wantune` command. Each role registers its own sub-commands; this file only dispatches.

A command module exposes `register(subparsers)` that adds parsers with `set_defaults(func=handler)`;
handlers take the parsed args and return an exit code (or None). Heavy imports (torch, diffusers)
belong inside handlers so that `wantune --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from wantune import __version__
from wantune.errors import UserError

COMMAND_MODULES = (
    "wantune.models.cli",      # model inspect
    "wantune.lora.cli",        # lora inspect | convert | merge
    "wantune.sample.cli",      # generate
    "wantune.data.cli",        # dataset check | prep, caption
    "wantune.cache.cli",       # cache
    "wantune.train.cli",       # train
    "wantune.toy.cli",         # toy ..., bench learn
    "wantune.perf.cli",        # bench speed
    "wantune.registry.cli",    # library
    "wantune.server.cli",      # serve
)


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one `error: ...` line (exit 2) like every other bad input."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (`{self.prog} -h` lists the arguments)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="wantune", description="Fine-tune Wan 2.1 / 2.2 video models and put the result to work.")
    parser.add_argument("--version", action="version", version=f"wantune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `wantune ... | head`: the reader left; say nothing more
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return int(code or 0)


if __name__ == "__main__":
    raise SystemExit(main())
