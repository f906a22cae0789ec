"""One LoRA recipe on the toy base, judged at two strengths (the CPU recipe experiments in toy_learn.json).

    OMP_NUM_THREADS=1 python benchmarks/toy_recipe_cpu.py CONCEPT OUT [--steps 1200] [--clips 32] [--prior-clips 32]
        [--lr 1e-3] [--strengths 1.0,1.3] [--set KEY=VALUE ...]

Trains the LoRA without DOP exactly as `wantune bench learn --dop off` does (same renders, seeds and config), then
generates the concept's 16 evaluation prompts (seed 5000) with it at each strength and prints one JSON line per
strength: adherence and the pass rate of each attribute. The clips are kept under OUT/gen<strength>/.
"""

import argparse
import json
import time
from pathlib import Path

from wantune.toy.base import BASE_DIR
from wantune.toy.evaluate import adherence
from wantune.toy.learn import EVAL_SEED, LearnSettings, check_train_set, train_lora
from wantune.toy.spec import concept_to_dict, load_concept

parser = argparse.ArgumentParser()
parser.add_argument("concept")
parser.add_argument("out", type=Path)
parser.add_argument("--steps", type=int, default=1200)
parser.add_argument("--clips", type=int, default=32)
parser.add_argument("--prior-clips", type=int, default=32)
parser.add_argument("--lr", type=float, default=1e-3)
parser.add_argument("--strengths", default="1.0,1.3")
parser.add_argument("--set", dest="train_set", action="append", default=[])
args = parser.parse_args()
spec = load_concept(args.concept)
settings = LearnSettings(steps=args.steps, clips=args.clips, prior_clips=args.prior_clips, lr=args.lr, device="cpu",
                         train_set=tuple(args.train_set))
settings.check()
check_train_set(spec, BASE_DIR, settings)
start = time.time()
lora, losses = train_lora(spec, BASE_DIR, args.out, settings, False)
(args.out / "concept.json").write_text(json.dumps(concept_to_dict(spec)))
for strength in map(float, args.strengths.split(",")):
    r = adherence(BASE_DIR, str(args.out / "concept.json"), 16, EVAL_SEED, out=args.out / f"gen{strength}",
                  loras=[(str(lora), strength)], device="cpu")
    print(json.dumps({"concept": spec.name, "size": list(spec.size), "strength": strength, **losses,
                      "adherence_with_lora": r["adherence"], "passed": r["passed"],
                      "seconds": round(time.time() - start, 1)}), flush=True)
