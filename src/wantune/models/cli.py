"""`wantune model inspect PATH`: what a checkpoint file or folder holds (layout, variant, dtype, size) as JSON."""

from __future__ import annotations

import json
import re


def register(subparsers) -> None:
    p = subparsers.add_parser("model", help="look into model checkpoints")
    sp = p.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    inspect = sp.add_parser(
        "inspect", help="print a checkpoint's format, variant, dtype and parameter count as JSON",
        description="Reads only tensor headers: works on full-size checkpoints in seconds.")
    inspect.add_argument("path", help="a .safetensors/.pth file, a sharded or diffusers folder, or an A14B folder")
    inspect.add_argument("--variant", metavar="NAME",
                         help="also check that the transformer fits this variant (exit 2 with the reason if not)")
    inspect.set_defaults(func=run_inspect)


def run_inspect(args) -> int:
    from wantune.models.describe import check_fits, inspect_path

    info = inspect_path(args.path)
    if args.variant:
        check_fits(args.path, args.variant)
        info["fits"] = args.variant
    print(dumps(info))
    return 0


def dumps(data: dict) -> str:
    """Indented JSON with short lists (shapes, candidates) kept on one line."""
    text = json.dumps(data, indent=2)
    return re.sub(r"\[([^\[\]{}]*)\]", lambda m: "[" + re.sub(r"\s*\n\s*", " ", m.group(1)).strip() + "]", text)
