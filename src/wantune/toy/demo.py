"""`wantune toy demo`: the main job end to end on the shipped toy base model, on any CPU in minutes.

1. render the built-in "motion" concept (a counter-clockwise orbit called "orbix") as a small dataset;
2. `wantune cache` + `wantune train` a LoRA on the shipped toy Wan model (`wantune.toy.base.BASE_DIR`);
3. generate the same prompts without and with the LoRA (before/ and after/ videos) and judge them;
4. write the loss plot (loss.svg) and print where everything is.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from wantune.toy.learn import LearnSettings

SVG_W, SVG_H, PAD = 640, 320, 48


def loss_svg(losses: list[float], title: str) -> str:
    """A line plot of per-step losses (raw, faint) and their 20-step moving average, as standalone SVG."""
    n = len(losses)
    smooth = [sum(losses[max(0, i - 19):i + 1]) / len(losses[max(0, i - 19):i + 1]) for i in range(n)]
    lo, hi = min(losses), max(losses)
    hi = hi if hi > lo else lo + 1.0

    def points(values):
        return " ".join(f"{PAD + (SVG_W - 2 * PAD) * i / max(1, n - 1):.1f},"
                        f"{SVG_H - PAD - (SVG_H - 2 * PAD) * (v - lo) / (hi - lo):.1f}" for i, v in enumerate(values))

    ticks = "".join(
        f'<text x="{PAD - 6}" y="{SVG_H - PAD - (SVG_H - 2 * PAD) * k / 4 + 4:.1f}" text-anchor="end" '
        f'font-size="11">{lo + (hi - lo) * k / 4:.3f}</text>' for k in range(5))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{SVG_W}" height="{SVG_H}" font-family="sans-serif">'
            f'<rect width="100%" height="100%" fill="white"/>'
            f'<text x="{SVG_W / 2}" y="24" text-anchor="middle" font-size="14">{title}</text>'
            f'<line x1="{PAD}" y1="{SVG_H - PAD}" x2="{SVG_W - PAD}" y2="{SVG_H - PAD}" stroke="black"/>'
            f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{SVG_H - PAD}" stroke="black"/>{ticks}'
            f'<text x="{SVG_W / 2}" y="{SVG_H - 12}" text-anchor="middle" font-size="11">step (1..{n})</text>'
            f'<polyline points="{points(losses)}" fill="none" stroke="#9bb7e0" stroke-width="1"/>'
            f'<polyline points="{points(smooth)}" fill="none" stroke="#1f4e9c" stroke-width="2"/></svg>\n')


def run_demo(out: Path, base: Path, settings: LearnSettings, concept: str = "motion", clips: int = 4) -> dict:
    """Train the concept's LoRA on the toy base, write before/after clips and the loss plot; returns a summary."""
    from wantune.toy.evaluate import adherence
    from wantune.toy.learn import check_base, require_trigger, train_lora
    from wantune.toy.spec import load_concept

    start = time.time()
    spec = load_concept(concept)
    require_trigger(spec)
    check_base(base)
    lora, _ = train_lora(spec, base, out, settings, dop=False)
    rows = [json.loads(line) for line in (lora.parent / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    (out / "loss.svg").write_text(loss_svg(losses, f"{spec.name} LoRA: training loss"))
    judged = {}
    for name, loras in (("before", []), ("after", [(str(lora), 1.0)])):
        judged[name] = adherence(base, concept, clips, seed=5000, out=out / name, loras=loras, device=settings.device)
    return {"lora": str(lora), "loss_plot": str(out / "loss.svg"), "before": str(out / "before"),
            "after": str(out / "after"), "prompts": judged["after"]["prompts"],
            "adherence_before": judged["before"]["adherence"], "adherence_after": judged["after"]["adherence"],
            "first_loss": round(sum(losses[:20]) / len(losses[:20]), 4),
            "last_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4), "seconds": round(time.time() - start, 1)}


def register(toy_subparsers) -> None:
    p = toy_subparsers.add_parser(
        "demo", help="train a motion LoRA on the shipped toy Wan model; before/after videos, loss plot, LoRA",
        description="The main job on the embedded toy model, on any CPU in a few minutes (docs/toy.md).")
    p.add_argument("--out", type=Path, default=Path("runs/toy_demo"), help="work and output folder")
    p.add_argument("--concept", default="motion", help="concept spec or built-in name with a trigger word")
    p.add_argument("--base", type=Path, help="toy base model folder (default: the shipped one)")
    p.add_argument("--steps", type=int, default=600, help="LoRA training steps")
    p.add_argument("--clips", type=int, default=32, help="training clips")
    p.add_argument("--eval-clips", type=int, default=4, help="prompts generated before and after")
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from wantune.toy.base import BASE_DIR

    settings = LearnSettings(clips=args.clips, steps=args.steps, device=args.device)
    result = run_demo(args.out, args.base or BASE_DIR, settings, args.concept, args.eval_clips)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"LoRA:        {result['lora']}\nloss plot:   {result['loss_plot']} "
          f"(loss {result['first_loss']:.3f} -> {result['last_loss']:.3f})\n"
          f"before:      {result['before']}/ (adherence {result['adherence_before']:.2f})\n"
          f"after:       {result['after']}/ (adherence {result['adherence_after']:.2f})\n"
          f"prompts:     {result['prompts'][0]!r} ...\ntook {result['seconds']:.0f} s")
    return 0
