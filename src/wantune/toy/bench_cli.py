"""`wantune bench learn`: does a LoRA trained by wantune teach the toy model a concept (issue 5)?

`register_learn(bench_subparsers)` is called by `wantune.perf.cli` (which owns `wantune bench`). The run
needs the pre-trained toy base model (tokenizer, UMT5, VAE, transformer under `--base`); until its weights
are shipped, the command checks its inputs, renders the LoRA dataset and stops with a one-line error saying
what is missing.
"""

from __future__ import annotations

import argparse

DEFAULT_TASKS = ("character", "style", "motion")
BASE_FILES = ("tokenizer/spiece.model", "text_encoder.safetensors", "vae.safetensors", "transformer.safetensors")


def register_learn(bench_subparsers) -> None:
    p = bench_subparsers.add_parser(
        "learn", help="train a toy LoRA per concept and measure adherence with/without it",
        description="Build a LoRA dataset of a concept in the toy world, train a LoRA with wantune train, "
                    "generate clips with and without it and judge them (docs/toy.md).")
    p.add_argument("--concept", action="append", default=[], metavar="SPEC",
                   help="concept spec (.toml/.json) or built-in name; repeatable (default: character, style, "
                        "motion)")
    p.add_argument("--base", default="toy_base", help="folder of the pre-trained toy base model")
    p.add_argument("--out", default="runs/bench_learn", help="where datasets, LoRAs and clips go")
    p.add_argument("--clips", type=int, default=32, help="training clips per concept")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=_learn)


def _learn(args: argparse.Namespace) -> int:
    from pathlib import Path

    from wantune.errors import UserError
    from wantune.toy.spec import load_concept
    from wantune.toy.world import write_dataset

    specs = [load_concept(c) for c in (args.concept or DEFAULT_TASKS)]
    for spec in specs:
        if not spec.trigger:
            raise UserError(f"concept '{spec.name}': has no trigger word; a LoRA concept needs `trigger = \"...\"`")
    base = Path(args.base)
    missing = [name for name in BASE_FILES if not (base / name).is_file()]
    for spec in specs:
        write_dataset(spec, Path(args.out) / spec.name / "data", args.clips, args.seed)
    if missing:
        raise UserError(f"{base}: the pre-trained toy base model is missing ({', '.join(missing)}); "
                        f"bench learn needs it (not shipped yet, see docs/toy.md)")
    raise UserError("bench learn: training and generation on the toy base model are not wired up yet; the "
                    f"datasets are in {args.out}")
