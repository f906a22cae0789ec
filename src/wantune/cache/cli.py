"""`wantune cache CONFIG`: encode a run's VAE latents and UMT5 embeddings into its cache folder."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "cache", help="encode VAE latents and text embeddings of a dataset into the cache",
        description="Encode every sample's latents (and I2V conditioning) and every caption's UMT5 embedding. "
                    "Entries are keyed by source, window, bucket and encoder: re-runs only encode what changed.")
    p.add_argument("config", help="a dataset TOML ([[datasets]]) or a training TOML ([data] dataset_config)")
    p.add_argument("--vae", help="VAE weights (default: [model] vae of the config)")
    p.add_argument("--text-encoder", help="UMT5 weights (default: [model] text_encoder)")
    p.add_argument("--tokenizer", help="tokenizer folder (default: [model] tokenizer)")
    p.add_argument("--clip", help="CLIP vision weights, Wan 2.1 I2V/FLF2V (default: [model] clip)")
    p.add_argument("--cache-dir", help="cache folder (default: [data] cache_dir, else <config dir>/cache)")
    p.add_argument("--variant", help="model variant (default: from the config)")
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="encoder dtype")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from wantune.cache.run import CacheJob, run_cache

    job = CacheJob.from_args(args)
    report = run_cache(job, progress=not args.no_progress)
    print(report.summary())
    return 0
