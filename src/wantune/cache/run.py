"""The cache recipe: resolve the config, load the encoders, encode what is missing, record the encoders."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from wantune.cache.encode import CacheReport, cache_latents, cache_masks, cache_texts, captions_to_cache
from wantune.cache.store import CacheStore
from wantune.config import read_toml
from wantune.errors import UserError

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


@dataclass
class CacheJob:
    """Everything a cache run needs, resolved from the config and the flags."""

    dataset_config: Path
    cache_dir: Path
    vae: Path
    text_encoder: Path | None
    tokenizer: Path | None
    clip: Path | None
    variant: str | None
    device: str
    dtype: str
    dop: tuple[str, str] | None = None
    """(trigger, class word) when the training config turns DOP on: its class prompts are cached too."""

    @classmethod
    def from_args(cls, args) -> CacheJob:
        path = Path(args.config)
        data = read_toml(path)
        model, section = data.get("model", {}), data.get("data", {})
        base = path.parent

        def pick(flag, key, table=model):
            value = flag if flag is not None else table.get(key)
            return None if value is None else (Path(value) if Path(value).is_absolute() or flag else base / value)

        dataset = path if "datasets" in data else pick(None, "dataset_config", section)
        if dataset is None:
            raise UserError(f"{path}: no [[datasets]] and no [data] dataset_config; point it at a dataset TOML")
        vae = pick(args.vae, "vae")
        if vae is None:
            raise UserError(f"{path}: no VAE given; pass --vae PATH or set [model] vae")
        device = _check_device(args.device) if args.device else _default_device()
        dop = data.get("regularisation", {}).get("dop", {})
        return cls(dataset, pick(args.cache_dir, "cache_dir", section) or base / "cache", vae,
                   pick(args.text_encoder, "text_encoder"), pick(args.tokenizer, "tokenizer"), pick(args.clip, "clip"),
                   args.variant or model.get("variant"), device, args.dtype,
                   (dop.get("trigger", ""), dop.get("class_word", "")) if dop.get("enabled") else None)


def _check_device(name: str) -> str:
    """`name` when torch knows it as a device this machine has; else a one-line error."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r}: not a device; use cuda, cuda:N or cpu") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
    return name


def _default_device() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return "cpu"


def rank_and_world() -> tuple[int, int]:
    """This process's share under torchrun (RANK/WORLD_SIZE), else (0, 1)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def run_cache(job: CacheJob, progress: bool = True) -> CacheReport:
    import torch

    from wantune.data.config import load_dataset_config
    from wantune.data.samples import enumerate_samples, require_samples
    from wantune.models.variants import get_variant

    cfg = load_dataset_config(job.dataset_config, variant=job.variant)
    variant = get_variant(cfg.variant)
    samples, skipped = enumerate_samples(cfg)
    require_samples(samples, skipped)
    for s in skipped:
        print(f"skipped {s.path}: {s.reason}")
    dtype = getattr(torch, DTYPES[job.dtype])
    rank, world = rank_and_world()
    store, report = CacheStore(job.cache_dir), CacheReport()
    vae, clip = _load_image_encoders(job, variant, dtype)
    cache_latents(samples, variant, store, vae, clip, rank, world, progress, report)
    cache_masks(samples, variant, store, rank, world, report)
    info = {"variant": variant.name, "model_type": variant.model_type, "vae": vae.identity,
            "vae_stride": list(variant.vae_stride),
            "clip": getattr(clip, "identity", "") if variant.has_image_embedding else ""}
    del vae, clip
    texts = captions_to_cache(samples, _dop_prompts(samples, job.dop))
    if job.text_encoder is None or job.tokenizer is None:
        raise UserError(f"{job.dataset_config}: no text encoder given; pass --text-encoder PATH and "
                        f"--tokenizer DIR (or set them in [model])")
    from wantune.models.text_encoder import load_text_encoder

    encoder = load_text_encoder(job.text_encoder, job.tokenizer, dtype=dtype, device=job.device)
    cache_texts(texts, store, encoder, rank, world, progress=progress, report=report)
    info["text_encoder"] = encoder.identity
    if rank == 0:
        store.write_info(info)
    return report


def _load_image_encoders(job: CacheJob, variant, dtype):
    from wantune.models.vae import load_vae

    vae = load_vae(job.vae, version=variant.vae, dtype=dtype, device=job.device)
    clip = None
    if variant.has_image_embedding:
        if job.clip is None:
            raise UserError(f"{job.dataset_config}: {variant.name} needs CLIP vision features; pass --clip PATH "
                            f"(clip_vision_h.safetensors) or set [model] clip")
        from wantune.models.clip import load_clip

        clip = load_clip(job.clip, dtype=dtype, device=job.device)
    return vae, clip


def _dop_prompts(samples, dop: tuple[str, str] | None) -> list[str]:
    """DOP preservation prompts: each caption with the trigger replaced by the class word."""
    if dop is None or not dop[0]:
        return []
    return [s.caption.replace(dop[0], dop[1]) for s in samples]
