"""The learn benchmark: does a LoRA trained by wantune teach the toy base model a concept, and what does it
cost the rest? One recipe per concept, top to bottom:

1. render `clips` clips of the concept (its trigger word in every caption) and a dataset TOML;
2. `wantune cache` them with the toy VAE and UMT5, then `wantune train` a LoRA (DOP on or off);
3. generate the concept's prompts with and without the LoRA and judge them (`adherence_with_lora`,
   `adherence_without_lora`), and the base world's prompts with and without it (`preservation_drop`).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

from wantune.errors import UserError
from wantune.toy.base import TOY_VARIANT
from wantune.toy.pretrain import DATASET_TOML, dataset_entry
from wantune.toy.spec import ConceptSpec, concept_to_dict, load_concept

EVAL_SEED = 5000
BASE_FILES = ("tokenizer/spiece.model", "text_encoder.safetensors", "vae.safetensors", "transformer.safetensors")


@dataclass
class LearnSettings:
    """How long and how big one learn run is."""

    clips: int = 128
    """Training clips of the concept."""
    steps: int = 1200
    """LoRA training steps."""
    batch_size: int = 8
    """Clips per step."""
    rank: int = 16
    """LoRA rank (alpha = rank)."""
    lr: float = 1e-3
    """AdamW learning rate."""
    eval_clips: int = 16
    """Generated clips per prompt set."""
    eval_seed: int = EVAL_SEED
    """Seed of the judged prompts and their sampling noise (5000; docs/toy.md's held-out sets use 6000 and 7000)."""
    sample_steps: int | None = None
    """Sampling steps (default: the toy variant's)."""
    dop_multiplier: float = 1.0
    """Weight of the DOP preservation loss (DOP runs)."""
    temporal_weight: float = 0.0
    """Weight of the frame-difference (motion) loss, `regularisation.temporal_weight` (0: off)."""
    prior_clips: int = 0
    """Base-world clips (captions without the trigger) added as a regularisation dataset (0: none)."""
    prior_target: str = "data"
    """What the prior clips are trained towards: "data" their latents (DreamBooth prior preservation), "base" the
    base model's own prediction (the LoRA should change nothing on them); `regularisation.prior_target`."""
    mask_min_weight: float | None = None
    """Masked loss: render each clip's object mask and train with `training.mask_min_weight` = this (the weight of
    the background against the object's 1); None: off."""
    ema_decay: float = 0.0
    """An EMA of the LoRA weights, `regularisation.ema_decay` (0: off); with it the EMA weights are judged."""
    seed: int = 0
    """Seed of the rendered clips and the run."""
    strength: float = 1.0
    """LoRA strength at which the LoRA is judged (concept and base-world prompts alike)."""
    dop_runs: tuple[bool, ...] = (False, True)
    """Which LoRAs to train: without DOP (False), with it (True), or both."""
    train_set: tuple[str, ...] = ()
    """`wantune train --set KEY=VALUE` overrides of the LoRA training config (e.g. optimizer.lr=5e-4)."""
    device: str | None = None
    """cuda or cpu (default: cuda when available)."""

    def check(self) -> None:
        """One line naming the flag for a count that cannot work (before anything is rendered or trained)."""
        for flag, value, least in (("--clips", self.clips, 1), ("--steps", self.steps, 1),
                                   ("--batch-size", self.batch_size, 1), ("--rank", self.rank, 1),
                                   ("--eval-clips", self.eval_clips, 1), ("--prior-clips", self.prior_clips, 0),
                                   ("--eval-seed", self.eval_seed, 0)):
            if value < least:
                raise UserError(f"{flag} {value}: must be >= {least}")
        if not self.strength > 0:
            raise UserError(f"--strength {self.strength}: must be > 0")
        if not self.lr > 0:
            raise UserError(f"--lr {self.lr}: must be > 0")
        if not self.dop_multiplier >= 0:
            raise UserError(f"--dop-multiplier {self.dop_multiplier}: must be >= 0")
        if not self.temporal_weight >= 0:
            raise UserError(f"--temporal-weight {self.temporal_weight}: must be >= 0")
        if self.mask_min_weight is not None and not 0 <= self.mask_min_weight <= 1:
            raise UserError(f"--mask-min-weight {self.mask_min_weight}: must be within [0, 1]")
        if not 0 <= self.ema_decay < 1:
            raise UserError(f"--ema-decay {self.ema_decay}: must be within [0, 1) (e.g. 0.995; 0: off)")


RECIPE_FIELDS = ("clips", "steps", "batch_size", "rank", "lr", "prior_clips", "prior_target", "dop_multiplier",
                 "temporal_weight", "strength", "mask_min_weight", "ema_decay")


def settings_for(spec: ConceptSpec, settings: LearnSettings, flags: dict) -> LearnSettings:
    """The settings of one concept's run: the flags given on the command line, else the concept's `[recipe]`,
    else `settings` (the bench's defaults)."""
    recipe = {k: v for k in RECIPE_FIELDS if (v := getattr(spec.recipe, k)) is not None}
    return replace(settings, **{**recipe, **{k: v for k, v in flags.items() if v is not None}})


def check_base(base: Path) -> None:
    missing = [name for name in BASE_FILES if not (base / name).is_file()]
    if missing:
        raise UserError(f"{base}: the pre-trained toy base model is missing ({', '.join(missing)}); "
                        f"make it with `python -m wantune.toy.pretrain` (docs/toy.md)")


def require_trigger(spec: ConceptSpec) -> None:
    """One line for a concept a LoRA cannot be trained on: it names no trigger word."""
    if not spec.trigger:
        raise UserError(f"concept '{spec.name}': has no trigger word; a LoRA concept needs `trigger = \"...\"`")


def train_config(spec: ConceptSpec, base: Path, settings: LearnSettings, dop: bool) -> dict:
    """The `wantune train` config (as TOML-ready data, paths relative to the work folder)."""
    cfg = {
        "model": {"variant": TOY_VARIANT, "dtype": "fp32",
                  "checkpoint": str(base / "transformer.safetensors"), "vae": str(base / "vae.safetensors"),
                  "text_encoder": str(base / "text_encoder.safetensors"), "tokenizer": str(base / "tokenizer")},
        "data": {"dataset_config": "dataset.toml", "cache_dir": "cache"},
        "network": {"type": "lora", "rank": settings.rank, "alpha": float(settings.rank)},
        "optimizer": {"name": "adamw", "lr": settings.lr},
        "timesteps": {"sampling": "shift", "discrete_flow_shift": 3.0},
        "saving": {"output_dir": "runs", "name": f"{spec.name}_{'dop' if dop else 'plain'}"},
        "logging": {"tensorboard": False, "progress_bar": False},
        "training": {"steps": settings.steps, "batch_size": settings.batch_size, "mixed_precision": "no",
                     "seed": settings.seed, **({"device": settings.device} if settings.device else {})},
    }
    if settings.prior_clips:
        cfg["regularisation"] = {"prior_target": settings.prior_target}
    if settings.temporal_weight:
        cfg.setdefault("regularisation", {})["temporal_weight"] = settings.temporal_weight
    if settings.mask_min_weight is not None:
        cfg["training"]["mask_min_weight"] = settings.mask_min_weight
    if settings.ema_decay:
        cfg.setdefault("regularisation", {})["ema_decay"] = settings.ema_decay
    if dop:
        cfg.setdefault("regularisation", {})["dop"] = {
            "enabled": True, "trigger": spec.trigger, "class_word": spec.class_word or "thing",
            "multiplier": settings.dop_multiplier}
    return cfg


def check_train_set(spec: ConceptSpec, base: Path, settings: LearnSettings) -> None:
    """A bad `--set` key or value fails here, in one line naming it, before anything is rendered or trained."""
    import tempfile

    from wantune import config as typed
    from wantune.train.config import load_train_config

    if not settings.train_set:
        return
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "train.toml"
        config.write_text(typed.dumps(train_config(spec, base.resolve(), settings, True)))
        try:
            load_train_config(config, list(settings.train_set))
        except UserError as err:
            raise UserError("--set: " + str(err).replace(f"{config}: ", "")) from None


def train_lora(spec: ConceptSpec, base: Path, work: Path, settings: LearnSettings, dop: bool) -> tuple[Path, dict]:
    """Render, cache and train one LoRA; returns (the LoRA file, {first/last loss})."""
    from wantune import config as typed
    from wantune.cache.run import CacheJob, run_cache
    from wantune.toy.world import write_dataset
    from wantune.train.config import load_train_config
    from wantune.train.recipe import main as train_main

    work.mkdir(parents=True, exist_ok=True)
    masked = settings.mask_min_weight is not None
    if not (work / "data" / "videos").is_dir() or (masked and not (work / "data" / "masks").is_dir()):
        write_dataset(spec, work / "data", settings.clips, settings.seed, masks=masked)
    dataset = DATASET_TOML + ('mask_path = "data/masks"\n' if masked else "")
    if settings.prior_clips:
        if not (work / "prior" / "videos").is_dir():
            write_dataset(load_concept("base"), work / "prior", settings.prior_clips, settings.seed + 1)
        dataset += dataset_entry("prior", regularization=True)
    (work / "dataset.toml").write_text(dataset)
    config = work / f"train_{'dop' if dop else 'plain'}.toml"
    config.write_text(typed.dumps(train_config(spec, base.resolve(), settings, dop)))
    job = CacheJob.from_args(argparse.Namespace(
        config=str(config), vae=None, text_encoder=None, tokenizer=None, clip=None, cache_dir=None, variant=None,
        device=settings.device, dtype="fp32"))
    run_cache(job, progress=False)
    files = train_main(load_train_config(config, list(settings.train_set)))
    loras = [f for f in files if f.suffix == ".safetensors"]
    lora = next((f for f in loras if f.stem.endswith("_ema")), loras[0])  # the EMA weights when kept
    losses = [json.loads(line).get("loss") for line in (lora.parent / "metrics.jsonl").read_text().splitlines()]
    losses = [x for x in losses if x is not None]
    return lora, {"first_loss": round(losses[0], 4), "last_loss": round(losses[-1], 4)}


def learn_concept(spec: ConceptSpec, base: Path, out: Path, settings: LearnSettings) -> dict:
    """The learn figures of one concept, with and without DOP."""
    from wantune.toy.evaluate import adherence

    require_trigger(spec)
    settings.check()
    check_base(base)
    check_train_set(spec, base, settings)
    start = time.time()
    spec_file = out / spec.name / "concept.json"
    spec_file.parent.mkdir(parents=True, exist_ok=True)
    spec_file.write_text(json.dumps(concept_to_dict(spec)))

    passed, prompts = {}, {}

    def judge_set(concept, loras, key):
        summary = adherence(base, str(concept), settings.eval_clips, settings.eval_seed, loras=loras,
                            steps=settings.sample_steps, device=settings.device)
        passed[key] = summary["passed"]
        prompts.setdefault(key.split("_")[0], summary["prompts"])
        return summary["adherence"]

    result = {"concept": spec.name, "trigger": spec.trigger,
              "recipe": {k: getattr(settings, k) for k in RECIPE_FIELDS},
              "eval": {"seed": settings.eval_seed, "clips": settings.eval_clips},
              "adherence_without_lora": judge_set(spec_file, [], "concept_without_lora"),
              "base_adherence": judge_set("base", [], "base_without_lora")}
    for dop in settings.dop_runs:
        lora, losses = train_lora(spec, base, out / spec.name, settings, dop)
        key = "dop" if dop else "no_dop"
        with_lora = judge_set(spec_file, [(str(lora), settings.strength)], f"concept_with_lora_{key}")
        base_with = judge_set("base", [(str(lora), settings.strength)], f"base_with_lora_{key}")
        result[key] = {"lora": str(lora), "strength": settings.strength, **losses,
                       "adherence_with_lora": with_lora,
                       "preservation_drop": round(result["base_adherence"] - base_with, 4)}
    result["passed_per_attribute"] = passed
    result["eval"]["first_prompts"] = prompts
    result["seconds"] = round(time.time() - start, 1)
    return result
