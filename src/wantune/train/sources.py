"""Training samples in memory and the resumable batch loader the loop draws from.

A sample is a dict: `latents_CFHW` (normalised latents), `context_LD` (text embedding, true length),
optional `cond_CFHW` (I2V: mask 4 + image latent 16), `clip_KD` (Wan 2.1 I2V CLIP features),
`context_dop_LD` (the class prompt for DOP), `weight`, `sample_id`, `regularization` (a regularisation-set
sample). The loader collates them into the batch interface of the loop: `latents_BCFHW`, `context` (list of
(L_i, D)), `cond_BCFHW`, `clip_BKD`, `context_dop`, `weight_B`, `regularization_B`, `sample_id`.

Sources: `data.latents_file` (a safetensors file of precomputed samples, written by `save_samples`) and
`data.synthetic` (a generated, learnable toy set for tests and demos: two text embeddings, each paired
with its own latent pattern).

Legend: B batch, C channels, F latent frames, H/W latent height/width, L text tokens, D text dim, K CLIP tokens.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from wantune.cache.loader import collate
from wantune.errors import UserError
from wantune.models.variants import WanVariant
from wantune.train.config import SyntheticData

_OPTIONAL = ("cond", "clip", "context_dop")


def save_samples(path: str | Path, samples: list[dict]) -> Path:
    """Write samples as `latents.N`, `context.N` (+ `cond.N`, `clip.N`, `context_dop.N`) in a safetensors file."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for i, s in enumerate(samples):
        tensors[f"latents.{i}"] = s["latents_CFHW"].clone().contiguous()
        tensors[f"context.{i}"] = s["context_LD"].clone().contiguous()
        for key, name in (("cond_CFHW", "cond"), ("clip_KD", "clip"), ("context_dop_LD", "context_dop")):
            if s.get(key) is not None:
                tensors[f"{name}.{i}"] = s[key].clone().contiguous()
    meta = {"sample_ids": json.dumps([s["sample_id"] for s in samples]),
            "weights": json.dumps([float(s.get("weight", 1.0)) for s in samples])}
    save_file(tensors, str(path), metadata=meta)
    return Path(path)


def load_samples(path: str | Path, what: str = "data.latents_file") -> list[dict]:
    """Read a samples file written by `save_samples`."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} = {path}: file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise UserError(f"{what} = {path}: not a readable safetensors file ({exc})") from None
    count = sum(1 for k in tensors if k.startswith("latents."))
    if count == 0:
        raise UserError(f"{what} = {path}: no `latents.N` tensors; write it with wantune.train.sources.save_samples")
    ids = json.loads(meta.get("sample_ids", "null")) or [f"{path.stem}:{i}" for i in range(count)]
    weights = json.loads(meta.get("weights", "null")) or [1.0] * count
    samples = []
    for i in range(count):
        if f"context.{i}" not in tensors:
            raise UserError(f"{what} = {path}: `context.{i}` missing for `latents.{i}`")
        sample = {"latents_CFHW": tensors[f"latents.{i}"], "context_LD": tensors[f"context.{i}"],
                  "sample_id": ids[i], "weight": float(weights[i])}
        for name in _OPTIONAL:
            key = {"cond": "cond_CFHW", "clip": "clip_KD", "context_dop": "context_dop_LD"}[name]
            sample[key] = tensors.get(f"{name}.{i}")
        samples.append(sample)
    return samples


def synthetic_samples(cfg: SyntheticData, variant: WanVariant) -> list[dict]:
    """A learnable toy set: prompt k (a fixed random embedding) goes with latent pattern k plus small noise.

    Sample 2i uses the "trigger" prompt, 2i+1 the other; `context_dop_LD` is a third, "class" prompt.
    I2V variants get their 20-channel conditioning built from the first latent frame.
    """
    g = torch.Generator().manual_seed(cfg.seed)
    channels = variant.out_dim
    shape = (channels, cfg.frames, cfg.height, cfg.width)
    prompts = [torch.randn(cfg.text_tokens, variant.text_dim, generator=g) for _ in range(3)]
    patterns = [torch.randn(shape, generator=g) for _ in range(2)]
    samples = []
    for i in range(cfg.samples):
        k = i % 2
        latents = patterns[k] + cfg.noise * torch.randn(shape, generator=g)
        sample = {"latents_CFHW": latents, "context_LD": prompts[k], "context_dop_LD": prompts[2],
                  "sample_id": f"synthetic:{i}", "weight": 1.0}
        if variant.needs_image:
            sample["cond_CFHW"] = image_condition(latents, variant.in_dim - channels)
        samples.append(sample)
    return samples


def image_condition(latents_CFHW: torch.Tensor, channels: int) -> torch.Tensor:
    """I2V conditioning as the official code builds it: mask (4, first frame 1) + [first frame latent, zeros]."""
    from wantune.sample.conditioning import i2v_mask

    C, F, H, W = latents_CFHW.shape
    mask = i2v_mask(4 * (F - 1) + 1, H, W)[0]
    image = torch.zeros_like(latents_CFHW)
    image[:, 0] = latents_CFHW[:, 0]
    cond = torch.cat([mask, image])
    if cond.shape[0] != channels:
        raise UserError(f"I2V conditioning has {cond.shape[0]} channels but the model expects {channels}")
    return cond


def split_samples(samples: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out `fraction` of the samples (seeded pick, at least one when fraction > 0) for validation."""
    if fraction <= 0:
        return samples, []
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, round(fraction * len(samples)))
    if n_val >= len(samples):
        raise UserError(f"validation.split = {fraction}: leaves no training samples out of {len(samples)}")
    held = set(order[:n_val])
    return [s for i, s in enumerate(samples) if i not in held], [s for i, s in enumerate(samples) if i in held]


class SampleLoader:
    """Endless batches over in-memory samples, reshuffled per epoch from (seed, epoch): resumable exactly.

    Each epoch yields `batches_per_epoch` batches (an incomplete last batch is dropped). Caption dropout
    replaces a sample's text with an empty (one zero token) embedding, decided from (seed, epoch, index).
    With `world` ranks a step draws a global batch of `batch_size × world` samples and rank r takes the
    r-th `batch_size` of them: the ranks together see exactly what one process with the larger batch sees.
    """

    def __init__(self, samples: list[dict], batch_size: int, shuffle: bool = True, seed: int = 0,
                 caption_dropout: float = 0.0, rank: int = 0, world: int = 1):
        if not samples:
            raise UserError("data: no training samples")
        if world > 1 and len(samples) < batch_size * world:
            raise UserError(f"data: {len(samples)} training samples cannot fill a global batch of "
                            f"{batch_size} x {world} ranks; lower training.batch_size or use fewer GPUs")
        self.samples, self.batch_size, self.shuffle, self.seed = samples, batch_size, shuffle, seed
        self.caption_dropout, self.rank, self.world = caption_dropout, rank, world
        self.epoch, self.position = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return max(1, len(self.samples) // (self.batch_size * self.world))

    @property
    def completed_epochs(self) -> int:
        """Epochs fully drawn so far."""
        return self.epoch + (1 if self.position >= self.batches_per_epoch else 0)

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(len(self.samples)))
        return torch.randperm(len(self.samples), generator=torch.Generator().manual_seed(
            self.seed * 100_003 + self.epoch)).tolist()

    def next_batch(self) -> dict:
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        order = self._order()
        start = (self.position * self.world + self.rank) * self.batch_size
        picked = [self._maybe_drop(order[i], i) for i in range(start, min(start + self.batch_size, len(order)))]
        self.position += 1
        return collate(picked)

    def _maybe_drop(self, index: int, slot: int) -> dict:
        sample = self.samples[index]
        if self.caption_dropout <= 0:
            return sample
        g = torch.Generator().manual_seed((self.seed * 7919 + self.epoch) * 1_000_003 + slot)
        if torch.rand(1, generator=g).item() >= self.caption_dropout:
            return sample
        return {**sample, "context_LD": torch.zeros(1, sample["context_LD"].shape[-1])}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


class RunData:
    """The training loader (in-memory or cached: `next_batch`, `state_dict`, `epoch`, `batches_per_epoch`)
    and the validation samples of a run."""

    def __init__(self, loader, validation: list[dict], num_samples: int,
                 largest_FHW: tuple[int, int, int] | None = None):
        self.loader, self.validation, self.num_samples = loader, validation, num_samples
        self.largest_FHW = largest_FHW
        """(frames, height, width) in pixels of the training clip with the most pixels (memory sizing)."""

    @property
    def completed_epochs(self) -> int:
        """Epochs fully drawn (the cached loader moves to the next epoch right after its last batch)."""
        return getattr(self.loader, "completed_epochs", self.loader.epoch)


def build_data(cfg, variant: WanVariant, rank: int = 0, world: int = 1) -> RunData:
    """Samples from the configured source, split for validation, regularisation samples mixed in.

    The training loader gives this rank its share of each step's batches (`rank` of `world`).
    """
    data = cfg.data
    if data.dataset_config is not None:
        from wantune.train.cached import build_cached

        return RunData(*build_cached(cfg, variant, rank, world))
    if data.synthetic is not None:
        samples = synthetic_samples(data.synthetic, variant)
    else:
        samples = load_samples(data.latents_file)
    train, validation = split_samples(samples, cfg.validation.split, cfg.training.seed)
    if cfg.validation.latents_file is not None:
        validation = load_samples(cfg.validation.latents_file, "validation.latents_file")
    if data.regularisation_file is not None:
        extra = load_samples(data.regularisation_file, "data.regularisation_file")
        train = train + [{**s, "weight": s["weight"] * data.regularisation_weight, "regularization": True}
                         for s in extra]
    _check_shapes(train + validation, variant)
    loader = SampleLoader(train, cfg.training.batch_size, data.shuffle, cfg.training.seed, data.caption_dropout,
                          rank, world)
    st, sh, sw = variant.vae_stride
    pixels = [((F - 1) * st + 1, H * sh, W * sw) for F, H, W in (s["latents_CFHW"].shape[1:] for s in train)]
    return RunData(loader, validation, len(train), max(pixels, key=math.prod, default=None))


def _check_shapes(samples: list[dict], variant: WanVariant) -> None:
    for s in samples:
        channels = s["latents_CFHW"].shape[0]
        if channels != variant.out_dim:
            raise UserError(f"sample {s['sample_id']}: latents have {channels} channels but {variant.name} "
                            f"uses {variant.out_dim}; cache the data with this model's VAE")
        if variant.needs_image and s.get("cond_CFHW") is None:
            raise UserError(f"sample {s['sample_id']}: {variant.name} training needs the I2V conditioning "
                            "(cond); cache the data with its first-frame images")
        if s["context_LD"].shape[-1] != variant.text_dim:
            raise UserError(f"sample {s['sample_id']}: text embedding width {s['context_LD'].shape[-1]} "
                            f"but the model expects {variant.text_dim}")

