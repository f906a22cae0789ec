"""`wantune toy render | judge | concepts`: the toy world from the command line."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("toy", help="the toy Wan world: render and judge clips, the demo on the shipped toy model",
                              description="Procedural toy-world clips with exact ground truth (docs/toy.md).")
    sp = p.add_subparsers(dest="toy_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: p.print_help() or 2)

    render = sp.add_parser("render", help="render a concept's clips as a dataset (videos/, captions/, truth/)")
    render.add_argument("--concept", required=True, help="concept spec (.toml/.json) or built-in name")
    render.add_argument("--out", required=True, help="output dataset folder")
    render.add_argument("--clips", type=int, default=16, help="number of clips (default 16)")
    render.add_argument("--seed", type=int, default=0, help="seed; the same seed gives the same clips")
    render.set_defaults(func=_render)

    judge = sp.add_parser("judge", help="score videos against a concept spec by measurement")
    judge.add_argument("--concept", required=True, help="concept spec (.toml/.json) or built-in name")
    judge.add_argument("videos", nargs="+", help="video files (or folders of .mp4 files)")
    judge.add_argument("--json", action="store_true", help="print one JSON object per video")
    judge.set_defaults(func=_judge)

    concepts = sp.add_parser("concepts", help="list the built-in concept specs")
    concepts.set_defaults(func=_concepts)

    from wantune.toy.demo import register as register_demo

    register_demo(sp)


def _render(args: argparse.Namespace) -> int:
    from wantune.toy.spec import load_concept
    from wantune.toy.world import write_dataset

    spec = load_concept(args.concept)
    paths = write_dataset(spec, args.out, args.clips, args.seed)
    print(f"{len(paths)} clips of '{spec.name}' in {args.out} (videos/, captions/, truth/)")
    return 0


def _videos(items: list[str]) -> list:
    from pathlib import Path

    from wantune.errors import UserError

    out = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in [*path.glob("*.mp4"), *path.glob("videos/*.mp4")])
            if not found:
                raise UserError(f"{path}: no .mp4 files in the folder or its videos/ subfolder")
            out += found
        else:
            out.append(path)
    return out


def _judge(args: argparse.Namespace) -> int:
    import json

    from wantune.toy.judge import ADHERENCE_ATTRS, judge_video
    from wantune.toy.spec import load_concept

    spec = load_concept(args.concept)
    paths = _videos(args.videos)
    passed = 0
    for path in paths:
        verdict = judge_video(path, spec)
        passed += int(verdict.adherence)
        if args.json:
            print(json.dumps({"video": str(path), **verdict.to_dict()}))
            continue
        parts = "  ".join(f"{a}={verdict.scores[a]:.2f}{'' if verdict.passed[a] else '!'}"
                          for a in (*ADHERENCE_ATTRS, "size"))
        print(f"{path}: adherence={verdict.adherence:.0f}  {parts}")
    if not args.json and len(paths) > 1:
        print(f"adherence {passed}/{len(paths)} = {passed / len(paths):.3f}")
    return 0


def _concepts(args: argparse.Namespace) -> int:
    from wantune.toy.spec import CONCEPTS_DIR, builtin_concepts, load_concept

    for name in builtin_concepts():
        spec = load_concept(name)
        trigger = f" (trigger '{spec.trigger}')" if spec.trigger else ""
        print(f"{name}{trigger}: {spec.description}  [{CONCEPTS_DIR / (name + '.toml')}]")
    return 0
