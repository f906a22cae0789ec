"""Prompt adherence of a toy model: generate a concept's captions with wantune generate, judge each clip.

    python -m wantune.toy.evaluate --base toy_base --concept base --clips 32 [--lora FILE[:STRENGTH]] [--details]

Prompt i is the caption of clip i of the concept under `--seed`; the clip generated from it is judged against
that clip's own attributes (its shape, colour, motion and background), so adherence is the fraction of
generated clips that show what their prompt says.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from wantune.toy.base import folder_variant
from wantune.toy.judge import ADHERENCE_ATTRS


def model_spec(base: Path, loras: list[tuple[str, float]] = (), variant: str | None = None):
    """The wantune generate ModelSpec of a toy base folder (plus LoRAs); `variant` defaults to toy.json's, else
    the shipped toy variant."""
    from wantune.sample.pipeline import ModelSpec

    return ModelSpec(model=str(base / "transformer.safetensors"), vae=str(base / "vae.safetensors"),
                     text_encoder=str(base / "text_encoder.safetensors"), tokenizer=str(base / "tokenizer"),
                     variant=variant or folder_variant(base), loras=list(loras))


def adherence(base: Path, concept: str, clips: int = 32, seed: int = 1000, out: Path | None = None,
              loras: list[tuple[str, float]] = (), guidance: float | None = None, steps: int | None = None,
              device: str | None = None, details: bool = False, shift: float | None = None) -> dict:
    """Generate `clips` prompts of `concept` with the toy model and judge them; returns the summary (with
    `details`, also each clip's judgement under "clips": prompt, seed, scores, what the judge measured)."""
    import tempfile

    from wantune.sample.pipeline import RunSettings, generate
    from wantune.sample.prompts import PromptSpec
    from wantune.toy.judge import judge_video
    from wantune.toy.perturb import instance_spec
    from wantune.toy.spec import load_concept
    from wantune.toy.world import sample_instance

    spec = load_concept(concept)
    instances = [sample_instance(spec, seed, i) for i in range(clips)]
    requests = [PromptSpec(inst.caption, width=spec.width, height=spec.height, frames=spec.frames, seed=seed + i,
                           guidance=guidance, steps=steps, shift=shift, negative_prompt="")
                for i, inst in enumerate(instances)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(out) if out else Path(tmp)
        paths = generate(model_spec(Path(base), loras), requests, folder / "clip.mp4",
                         RunSettings(device=device, dtype="fp32", progress=False))
        verdicts = [judge_video(p, instance_spec(spec, dataclasses.asdict(inst))) for p, inst in zip(paths, instances)]
    per_attr = {a: round(sum(v.passed[a] for v in verdicts) / len(verdicts), 4)
                for a in ADHERENCE_ATTRS}
    summary = {"concept": spec.name, "clips": clips,
               "adherence": round(sum(v.adherence for v in verdicts) / clips, 4),
               "passed": per_attr, "adherence_by_option": by_option(instances, verdicts),
               "prompts": [i.caption for i in instances[:4]]}
    if details:
        summary["clips"] = [{"prompt": inst.caption, "seed": seed + i, **v.to_dict()}
                            for i, (inst, v) in enumerate(zip(instances, verdicts))]
    return summary


def by_option(instances, verdicts) -> dict:
    """{attribute: {option: adherence of the clips drawn with it}} for each attribute the prompts vary (which
    shape, colour, motion or background the failures sit on)."""
    out = {}
    for attr in ADHERENCE_ATTRS:
        groups: dict[str, list[float]] = {}
        for inst, verdict in zip(instances, verdicts):
            groups.setdefault(getattr(inst, attr), []).append(verdict.adherence)
        if len(groups) > 1:
            out[attr] = {k: round(sum(v) / len(v), 4) for k, v in sorted(groups.items())}
    return out


def _lora(item: str) -> tuple[str, float]:
    path, _, strength = item.partition(":")
    return path, float(strength) if strength else 1.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="toy base model folder")
    parser.add_argument("--concept", default="base", help="concept spec or built-in name")
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--lora", action="append", default=[], metavar="FILE[:STRENGTH]")
    parser.add_argument("--guidance", type=float)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--shift", type=float, help="flow shift (default: the variant's)")
    parser.add_argument("--device")
    parser.add_argument("--out", type=Path, help="keep the generated clips here")
    parser.add_argument("--details", action="store_true",
                        help="also print each clip's judgement (scores, matched options, what was measured)")
    args = parser.parse_args(argv)
    result = adherence(args.base, args.concept, args.clips, args.seed, args.out, [_lora(x) for x in args.lora],
                       args.guidance, args.steps, args.device, args.details, args.shift)
    print(json.dumps(result))


if __name__ == "__main__":
    from wantune.errors import run_script

    run_script(main)
