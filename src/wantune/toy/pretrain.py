"""Pre-train the toy Wan base transformer on the base world with wantune's own full fine-tuning path.

    python -m wantune.toy.pretrain --out toy_run [--clips 2048] [--set training.steps=4000 ...]

1. `base/`: the toy parts (`wantune.toy.base.build_base`); a trained toy VAE (`--vae FILE`, from
   `wantune.toy.train_vae`) replaces the fresh one.
2. `data/`: `--clips` clips of the base world (examples/concepts/base.toml), `dataset.toml` pointing at them.
3. `wantune cache` then `wantune train` with examples/toy_base.toml (copied into the work folder).
4. The trained transformer is written to `base/transformer.safetensors`: `base/` is then the toy base model.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from wantune.errors import UserError

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "toy_base.toml"

DATASET_TOML = """variant = "toy-t2v"

[[datasets]]
path = "data"
kind = "videos"
resolution = [64, 64]
enable_bucket = false
target_frames = [17]
frame_extraction = "head"
"""


def prepare(out: Path, clips: int, seed: int, vae: Path | None) -> Path:
    """Write base/, data/, dataset.toml and train.toml into `out`; returns the train config path."""
    from wantune.toy.base import build_base
    from wantune.toy.spec import load_concept
    from wantune.toy.world import write_dataset

    if not EXAMPLE.is_file():
        raise UserError(f"{EXAMPLE}: the toy pre-training config is missing from the checkout")
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "base" / "transformer.safetensors").is_file():
        build_base(out / "base", seed=seed)
    if vae is not None:
        if not vae.is_file():
            raise UserError(f"{vae}: no such VAE file; pass the vae.safetensors written by wantune.toy.train_vae")
        shutil.copyfile(vae, out / "base" / "vae.safetensors")
    if not (out / "data" / "videos").is_dir():
        write_dataset(load_concept("base"), out / "data", clips, seed)
    (out / "dataset.toml").write_text(DATASET_TOML)
    shutil.copyfile(EXAMPLE, out / "train.toml")
    return out / "train.toml"


def pretrain(out: Path, clips: int = 2048, seed: int = 0, vae: Path | None = None,
             overrides: list[str] | None = None, device: str | None = None, use_ema: bool = False) -> Path:
    """Run the whole recipe; returns the trained toy base folder (out/base). Run again on the same folder, it
    continues from the last trained transformer (data and cache are reused). `use_ema`: keep the EMA weights
    (`regularisation.ema_decay` > 0) rather than the last ones."""
    from wantune.cache.run import CacheJob, run_cache
    from wantune.train.config import load_train_config
    from wantune.train.recipe import main as train_main

    config = prepare(out, clips, seed, vae)
    job = CacheJob.from_args(argparse.Namespace(
        config=str(config), vae=None, text_encoder=None, tokenizer=None, clip=None, cache_dir=None, variant=None,
        device=device, dtype="fp32"))
    print(run_cache(job, progress=False).summary())
    cfg = load_train_config(config, [*(overrides or []), *([f'training.device="{device}"'] if device else [])])
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
    parser.add_argument("--use-ema", action="store_true", help="keep the EMA weights (needs regularisation.ema_decay)")
    args = parser.parse_args(argv)
    print(pretrain(args.out, args.clips, args.seed, args.vae, args.overrides, args.device, args.use_ema))


if __name__ == "__main__":
    main()
