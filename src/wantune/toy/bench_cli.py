"""`wantune bench learn`: does a LoRA trained by wantune teach the toy model a concept (issue 5)?

`register_learn(bench_subparsers)` is called by `wantune.perf.cli` (which owns `wantune bench`). The recipe
is `wantune.toy.learn`; it needs a pre-trained toy base model under `--base` (`python -m wantune.toy.pretrain`).
"""

from __future__ import annotations

import argparse

DEFAULT_TASKS = ("character", "style", "motion")


def register_learn(bench_subparsers) -> None:
    p = bench_subparsers.add_parser(
        "learn", help="train a toy LoRA per concept and measure adherence with/without it",
        description="Build a LoRA dataset of a concept in the toy world, train a LoRA with wantune train, "
                    "generate clips with and without it and judge them (docs/toy.md).")
    p.add_argument("--concept", action="append", default=[], metavar="SPEC",
                   help="concept spec (.toml/.json) or built-in name; repeatable (default: character, style, "
                        "motion)")
    p.add_argument("--base", help="folder of the pre-trained toy base model (default: the shipped one)")
    p.add_argument("--out", default="runs/bench_learn", help="where datasets, LoRAs and clips go")
    recipe = p.add_argument_group(
        "recipe", "unset: the concept's [recipe] table, else the default shown (docs/toy.md)")
    recipe.add_argument("--clips", type=int, help="training clips per concept (128)")
    recipe.add_argument("--steps", type=int, help="LoRA training steps (1200)")
    recipe.add_argument("--rank", type=int, help="LoRA rank, alpha = rank (16)")
    recipe.add_argument("--lr", type=float, help="LoRA learning rate, AdamW (1e-3)")
    recipe.add_argument("--batch-size", type=int, help="clips per training step (8)")
    recipe.add_argument("--dop-multiplier", type=float, help="weight of the DOP preservation loss (1.0)")
    recipe.add_argument("--temporal-weight", type=float,
                        help="weight of the frame-difference loss that weighs motion (0: off)")
    recipe.add_argument("--prior-clips", type=int,
                        help="base-world clips without the trigger added as a regularisation dataset (32)")
    recipe.add_argument("--prior-target", choices=("data", "base"),
                        help="train the prior clips towards their latents (data, the default) or the base model's "
                             "prediction (base)")
    recipe.add_argument("--mask-min-weight", type=float,
                        help="masked loss: weight the background this much against the object (0-1; off unless "
                             "given)")
    recipe.add_argument("--ema-decay", type=float,
                        help="keep an EMA of the LoRA weights and judge those (e.g. 0.995; 0: off, the default)")
    recipe.add_argument("--strength", type=float,
                        help="LoRA strength for the clips generated with it, concept and base-world prompts (1.0)")
    p.add_argument("--dop", choices=("both", "on", "off"), default="both",
                   help="train the LoRA with DOP, without it, or both (default)")
    p.add_argument("--set", dest="train_set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the LoRA training config, as `wantune train --set` (repeatable), "
                        "e.g. regularisation.ema_decay=0.99")
    p.add_argument("--eval-clips", type=int, default=16, help="generated clips per prompt set")
    p.add_argument("--eval-seed", type=int, default=5000,
                   help="seed of the judged prompts (5000; 6000 and 7000 give the held-out sets of docs/toy.md)")
    p.add_argument("--sample-steps", type=int, help="sampling steps (default: the toy variant's)")
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=_learn)


def _learn(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from wantune.errors import UserError
    from wantune.toy.learn import (RECIPE_FIELDS, LearnSettings, check_base, learn_concept, require_trigger,
                                   settings_for)
    from wantune.toy.spec import load_concept

    specs = [load_concept(c) for c in (args.concept or DEFAULT_TASKS)]
    for spec in specs:
        require_trigger(spec)
    from wantune.toy.base import BASE_DIR

    base = Path(args.base) if args.base else BASE_DIR
    check_base(base)
    defaults = LearnSettings(prior_clips=32, eval_clips=args.eval_clips, eval_seed=args.eval_seed,
                             sample_steps=args.sample_steps, seed=args.seed, device=args.device,
                             dop_runs={"both": (False, True), "on": (True,), "off": (False,)}[args.dop],
                             train_set=tuple(args.train_set))
    flags = {k: getattr(args, k) for k in RECIPE_FIELDS}
    runs = [(spec, settings_for(spec, defaults, flags)) for spec in specs]
    for spec, settings in runs:  # every concept's settings are checked before the first one trains
        try:
            settings.check()
        except UserError as err:
            raise UserError(f"concept '{spec.name}' (flag or its [recipe]): {err}") from None
    import contextlib
    import sys

    # with --json, stdout carries the JSON only; training messages go to stderr
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        results = [learn_concept(spec, base, Path(args.out), settings) for spec, settings in runs]
    if args.json:
        print(json.dumps({"base": str(base), "results": results}))
        return 0
    for r in results:
        for key in (k for k in ("no_dop", "dop") if k in r):
            print(f"{r['concept']:10s} {key:6s} with_lora={r[key]['adherence_with_lora']:.3f} "
                  f"without_lora={r['adherence_without_lora']:.3f} preservation_drop={r[key]['preservation_drop']:.3f} "
                  f"loss {r[key]['first_loss']:.3f}->{r[key]['last_loss']:.3f}")
    return 0
