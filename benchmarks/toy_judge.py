"""How often the toy judge is right on clips the generator rendered (issue 5: at least 98%).

For every clip: its own spec must pass (positive) and, for each of shape, colour, motion and background, a
spec with that one attribute clearly changed must fail (negatives). Three conditions: the rendered arrays,
the clips after an H.264 round trip through PyAV, and the round trip plus VAE-like damage (Gaussian blur
sigma 1 px, noise sigma 0.03, colour shift up to 0.03). Writes benchmarks/results/toy_judge.json.

    python benchmarks/toy_judge.py --clips 20      # 20 clips per world x 5 worlds x 3 conditions
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from wantune.toy.judge import judge
from wantune.toy.perturb import ATTRIBUTES, degrade, instance_spec, off_by_one
from wantune.toy.spec import load_concept
from wantune.toy.world import render_clip

RESULTS = Path(__file__).resolve().parent / "results" / "toy_judge.json"
CONDITIONS = ("clean", "mp4", "mp4+blur+noise")

def clip_frames(frames, condition: str, rng, workdir: Path) -> np.ndarray:
    """The clip as the judge sees it under a condition."""
    if condition == "clean":
        return frames
    from wantune.data.video import read_frames, write_video

    path = write_video(workdir / "clip.mp4", frames, 16)
    decoded = read_frames(path)
    return decoded if condition == "mp4" else degrade(decoded, rng)


def check_clip(spec, seed: int, index: int, condition: str, workdir: Path) -> dict:
    """Judge one clip against its own spec and four specs one attribute off."""
    rng = np.random.default_rng([seed, index, 7])
    frames, truth = render_clip(spec, seed, index)
    seen = clip_frames(frames, condition, rng, workdir)
    own = judge(seen, instance_spec(spec, truth))
    row = {"index": index, "positive": own.adherence == 1.0, "scores": own.scores}
    for attr in ATTRIBUTES:
        wrong = off_by_one(spec, truth, attr, rng)
        verdict = judge(seen, wrong)
        row[f"negative_{attr}"] = verdict.adherence == 0.0
        row[f"negative_{attr}_value"] = getattr(wrong, attr)[0]
    return row


def summarise(rows: list[dict]) -> dict:
    keys = ["positive"] + [f"negative_{a}" for a in ATTRIBUTES]
    right = sum(r[k] for r in rows for k in keys)
    total = len(rows) * len(keys)
    out = {"clips": len(rows), "judgements": total, "accuracy": round(right / total, 4)}
    for key in keys:
        out[f"{key}_right"] = round(sum(r[key] for r in rows) / len(rows), 4)
    return out


def run(worlds: list[str], clips: int, seed: int) -> dict:
    results, failures = {}, []
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for name in worlds:
            spec = load_concept(name)
            for condition in CONDITIONS:
                rows = [check_clip(spec, seed, i, condition, Path(tmp)) for i in range(clips)]
                results[f"{name}/{condition}"] = summarise(rows)
                keys = ["positive"] + [f"negative_{a}" for a in ATTRIBUTES]
                failures += [{"world": name, "condition": condition, "index": r["index"], "check": k,
                              "value": r.get(f"{k}_value"), "scores": r["scores"]}
                             for r in rows for k in keys if not r[k]]
                print(f"{name:10s} {condition:15s} {results[name + '/' + condition]}", file=sys.stderr)
    total = sum(v["judgements"] for v in results.values())
    right = sum(v["accuracy"] * v["judgements"] for v in results.values())
    return {"benchmark": "toy_judge", "command": f"python benchmarks/toy_judge.py --clips {clips} --seed {seed}",
            "seed": seed, "accuracy": round(right / total, 4), "judgements": total,
            "seconds": round(time.time() - start, 1), "machine": platform.processor() or platform.machine(),
            "worlds": results, "failures": failures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=20, help="clips per world and condition")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--worlds", nargs="+", default=["base", "character", "style", "motion", "wide"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    report = run(args.worlds, args.clips, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: report[k] for k in ("accuracy", "judgements", "seconds")}))


if __name__ == "__main__":
    main()
