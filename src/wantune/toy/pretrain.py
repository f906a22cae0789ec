"""Pre-train the toy Wan base transformer on the base world with wantune's own full fine-tuning path.

    python -m wantune.toy.pretrain --out toy_run [--clips 2048] [--set training.steps=4000 ...]

1. `base/`: the toy parts (`wantune.toy.base.build_base`); a trained toy VAE (`--vae FILE`, from
   `wantune.toy.train_vae`) replaces the fresh one.
2. `data/`: `--clips` clips of the base world (examples/concepts/base.toml), `dataset.toml` pointing at them;
   `--focus shape=cross:2048` adds 2,048 more base-world clips with that one option (`data_shape_cross/`), so a
   stage can weight the training towards what the model draws worst.
3. `wantune cache` then `wantune train` with examples/toy_base.toml (copied into the work folder).
4. The trained transformer is written to `base/transformer.safetensors`: `base/` is then the toy base model.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from wantune.errors import UserError

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "toy_base.toml"


def dataset_entry(path: str, regularization: bool = False) -> str:
    """One `[[datasets]]` table of toy clips (64x64, whole 17-frame clips) in a dataset TOML."""
    return (f'\n[[datasets]]\npath = "{path}"\nkind = "videos"\nresolution = [64, 64]\nenable_bucket = false\n'
            f'target_frames = [17]\nframe_extraction = "head"\n' + ("is_regularization = true\n" if regularization else ""))


DATASET_TOML = 'variant = "toy-t2v"\n' + dataset_entry("data")


def parse_focus(text: str) -> tuple[str, str, int]:
    """'shape=cross:2048' -> ('shape', 'cross', 2048): extra base-world clips drawn with that one option."""
    from wantune.toy.judge import ADHERENCE_ATTRS as ATTRIBUTES

    attr, _, rest = text.partition("=")
    value, _, count = rest.rpartition(":")
    if attr not in ATTRIBUTES or not value or not count.isdigit() or int(count) < 1:
        raise UserError(f"--focus {text}: expected ATTRIBUTE=VALUE:CLIPS with ATTRIBUTE one of "
                        f"{', '.join(ATTRIBUTES)}, e.g. shape=cross:2048")
    return attr, value, int(count)


def focus_spec(attr: str, value: str):
    """The base world with `attr` fixed to its option `value` (captions unchanged)."""
    import dataclasses

    from wantune.toy.spec import load_concept

    spec = load_concept("base")
    options = [o for o in spec.options(attr) if o.value == value]
    if not options:
        known = ", ".join(o.value for o in spec.options(attr))
        raise UserError(f"--focus {attr}={value}: not a base-world {attr} (one of: {known})")
    return dataclasses.replace(spec, name=f"base_{attr}_{focus_slug(value)}", **{attr: options})


def focus_slug(value: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in value)


def prepare(out: Path, clips: int, seed: int, vae: Path | None, variant: str | None = None, workers: int = 1,
            focus: list[str] = ()) -> Path:
    """Write base/, data/, dataset.toml and train.toml into `out`; returns the train config path. `variant`: a
    toy variant other than the shipped one gets a fresh transformer (once; later runs continue it). `focus`:
    `--focus` texts, each a further dataset of base-world clips with one option fixed."""
    from wantune.toy.base import build_base, build_transformer, folder_variant, save_parts

    focus_sets = [(attr, value, count, focus_spec(attr, value)) for attr, value, count in map(parse_focus, focus)]
    if not EXAMPLE.is_file():
        raise UserError(f"{EXAMPLE}: the toy pre-training config is missing from the checkout")
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "base" / "transformer.safetensors").is_file():
        build_base(out / "base", seed=seed)
    if variant and folder_variant(out / "base") != variant:
        save_parts(out / "base", transformer=build_transformer(seed, variant))
        info_path = out / "base" / "toy.json"
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        info_path.write_text(json.dumps({**info, "variant": variant}, indent=1) + "\n")
    if vae is not None:
        if not vae.is_file():
            raise UserError(f"{vae}: no such VAE file; pass the vae.safetensors written by wantune.toy.train_vae")
        shutil.copyfile(vae, out / "base" / "vae.safetensors")
    if not (out / "data" / "videos").is_dir():
        render(out / "data", clips, seed, workers)
    dataset = DATASET_TOML
    for k, (attr, value, count, spec) in enumerate(focus_sets, start=1):  # checked above, before any work
        folder = f"data_{attr}_{focus_slug(value)}"
        if not (out / folder / "videos").is_dir():
            render(out / folder, count, seed + k, workers, spec)
        dataset += dataset_entry(folder)
    (out / "dataset.toml").write_text(dataset)
    shutil.copyfile(EXAMPLE, out / "train.toml")
    return out / "train.toml"


def render(data: Path, clips: int, seed: int, workers: int = 1, spec=None) -> None:
    """Render `clips` clips of `spec` (default: the base world) into `data`, in `workers` processes (contiguous
    index ranges)."""
    from concurrent.futures import ProcessPoolExecutor

    from wantune.toy.spec import load_concept
    from wantune.toy.world import write_dataset

    spec = spec or load_concept("base")
    workers = max(1, min(workers, clips))
    bounds = [clips * i // workers for i in range(workers + 1)]
    if workers == 1:
        write_dataset(spec, data, clips, seed)
        return
    with ProcessPoolExecutor(workers) as pool:
        jobs = [pool.submit(write_dataset, spec, data, b - a, seed, a) for a, b in zip(bounds, bounds[1:])]
        for job in jobs:
            job.result()


def pretrain(out: Path, clips: int = 2048, seed: int = 0, vae: Path | None = None,
             overrides: list[str] | None = None, device: str | None = None, use_ema: bool = False,
             variant: str | None = None, workers: int = 1, focus: list[str] = ()) -> Path:
    """Run the whole recipe; returns the trained toy base folder (out/base). Run again on the same folder, it
    continues from the last trained transformer (data and cache are reused). `use_ema`: keep the EMA weights
    (`regularisation.ema_decay` > 0) rather than the last ones."""
    from wantune.cache.run import CacheJob, run_cache
    from wantune.train.config import load_train_config
    from wantune.train.recipe import main as train_main

    from wantune.toy.base import folder_variant

    config = prepare(out, clips, seed, vae, variant, workers, focus)
    variant = folder_variant(out / "base")
    job = CacheJob.from_args(argparse.Namespace(
        config=str(config), vae=None, text_encoder=None, tokenizer=None, clip=None, cache_dir=None, variant=None,
        device=device, dtype="fp32"))
    print(run_cache(job, progress=False).summary())
    cfg = load_train_config(config, [f'model.variant="{variant}"', *(overrides or []), *([f'training.device="{device}"'] if device else [])])
    files = train_main(cfg)
    wanted = [f for f in files if f.suffix == ".safetensors" and f.stem.endswith("_ema") == use_ema]
    trained = wanted[0] if wanted else None
    if trained is None:
        raise UserError(f"{out}: training wrote no .safetensors file ({', '.join(map(str, files))})")
    shutil.copyfile(trained, out / "base" / "transformer.safetensors")
    return out / "base"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="work folder")
    parser.add_argument("--clips", type=int, default=2048, help="base-world clips to train on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae", type=Path, help="trained toy VAE (vae.safetensors from wantune.toy.train_vae)")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of examples/toy_base.toml, e.g. training.steps=20")
    parser.add_argument("--variant", help="toy variant to pre-train (default: the shipped toy-t2v)")
    parser.add_argument("--workers", type=int, default=1, help="processes rendering the clips")
    parser.add_argument("--focus", action="append", default=[], metavar="ATTR=VALUE:CLIPS",
                        help="also train on CLIPS base-world clips with ATTR fixed to VALUE, e.g. shape=cross:2048")
    parser.add_argument("--use-ema", action="store_true", help="keep the EMA weights (needs regularisation.ema_decay)")
    args = parser.parse_args(argv)
    print(pretrain(args.out, args.clips, args.seed, args.vae, args.overrides, args.device, args.use_ema, args.variant,
                   args.workers, args.focus))


if __name__ == "__main__":
    from wantune.errors import run_script

    run_script(main)
