"""`wantune bench speed` without the rest of the CLI (for GPU boxes that lack the data/video dependencies).

    python benchmarks/speed.py --variant wan2.2-i2v-a14b --frames 81 --height 480 --width 832 --reference
takes the same flags as `wantune bench speed`; see docs/performance.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from wantune.errors import UserError  # noqa: E402
from wantune.perf.cli import register  # noqa: E402


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="speed.py")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "speed", *argv])
    try:
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
