"""Fill a cache: VAE latents (+ I2V conditioning, CLIP features) per sample, UMT5 embeddings per caption.

Each entry is looked up by its key first, so a re-run encodes only what changed (an edited caption
re-encodes its text alone) and an interrupted run resumes where it stopped. On several processes
(torchrun) each rank encodes its share of the samples and captions.

Legend: C channels, F frames, H/W height/width, L text tokens, D text dim, K CLIP tokens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from wantune.cache.keys import cond_kind, flips_of, latent_key, mask_key, text_key
from wantune.cache.store import CacheStore


BATCH_PIXELS = 1 << 22
"""Clips are batched for the VAE only while the batch holds at most this many pixels (frames x H x W), so a
full-size clip is still encoded alone (its memory plan is per clip)."""


@dataclass
class CacheReport:
    """What a cache run did."""

    latents_encoded: int = 0
    latents_reused: int = 0
    masks_made: int = 0
    masks_reused: int = 0
    texts_encoded: int = 0
    texts_reused: int = 0
    seconds: float = 0.0
    failed: list[tuple[str, str]] = field(default_factory=list)
    """(path, reason) of samples that could not be encoded (they are left out, nothing else is lost)."""

    def summary(self) -> str:
        rate = (self.latents_encoded + self.texts_encoded) / self.seconds if self.seconds else 0.0
        lines = [f"cache: {self.latents_encoded} latents encoded, {self.latents_reused} reused; "
                 f"{self.texts_encoded} captions encoded, {self.texts_reused} reused; "
                 f"{self.seconds:.1f} s ({rate:.2f} items/s)"]
        if self.masks_made or self.masks_reused:
            lines[0] += f"; {self.masks_made} loss masks made, {self.masks_reused} reused"
        lines += [f"skipped {path}: {reason}" for path, reason in self.failed]
        return "\n".join(lines)


def shard(items: list, rank: int, world: int) -> list:
    """This rank's share of a list (every world-th item from rank)."""
    return items[rank::world]


def _flip(pixels_CFHW: torch.Tensor, flip: tuple[bool, bool]) -> torch.Tensor:
    dims = [d for d, on in ((3, flip[0]), (2, flip[1])) if on]
    return pixels_CFHW.flip(dims) if dims else pixels_CFHW


def encode_sample(sample, flip, variant, vae, clip=None) -> dict[str, torch.Tensor]:
    """The cache entry of one sample: `latents` (C, F', h, w), with `cond` (4+C, F', h, w) and `clip`
    (K, 1280) when the variant conditions on images."""
    from wantune.data.samples import load_control_pixels, load_sample_pixels
    from wantune.sample.conditioning import clip_features, image_condition

    pixels_CFHW = _flip(load_sample_pixels(sample), flip)
    entry = {"latents": vae.encode(pixels_CFHW[None])[0].float()}
    if cond_kind(variant.model_type, sample.control_frames) != "none":
        control_CKHW = _flip(load_control_pixels(sample), flip)
        first = control_CKHW[:, 0]
        last = control_CKHW[:, -1] if variant.model_type == "flf2v" and control_CKHW.shape[1] > 1 else None
        entry["cond"] = image_condition(vae, first, last, pixels_CFHW.shape[1])[0]
        if clip is not None and variant.has_image_embedding:
            entry["clip"] = clip_features(clip, first, last)[0]
    return entry


def cache_latents(samples, variant, store: CacheStore, vae, clip=None, rank: int = 0, world: int = 1,
                  progress: bool = True, report: CacheReport | None = None, batch_size: int = 32) -> CacheReport:
    """Encode every (sample, flip) of this rank's share that the store does not hold yet. Consecutive samples
    of one shape without image conditioning are encoded `batch_size` at a time (one VAE call: the per-call
    cost dominates for small clips); image-conditioned samples go one by one."""
    from tqdm import tqdm

    from wantune.data.samples import load_sample_pixels
    from wantune.errors import UserError

    report = report or CacheReport()
    clip_id = getattr(clip, "identity", "") if variant.has_image_embedding else ""
    todo = [(s, f) for s in shard(samples, rank, world) for f in flips_of(s)]
    start = time.perf_counter()
    pending: list[tuple] = []  # (sample, flip, key, pixels_CFHW) waiting for one batched encode

    def save(sample, flip, key, entry):
        store.save("latents", key, entry, {"sample_id": sample.sample_id, "path": sample.path,
                                           "frames": list(sample.frame_indices), "bucket": list(sample.bucket),
                                           "flip": list(flip)})
        report.latents_encoded += 1

    def flush():
        if not pending:
            return
        try:
            latents_BCFHW = vae.encode(torch.stack([p[3] for p in pending])).float()
        except UserError as exc:
            report.failed.extend((str(p[0].path), str(exc)) for p in pending)
        else:
            for (sample, flip, key, _), latents in zip(pending, latents_BCFHW):
                save(sample, flip, key, {"latents": latents.clone()})
        pending.clear()

    work = []
    for sample, flip in todo:
        kind = cond_kind(variant.model_type, sample.control_frames)
        key = latent_key(sample.sample_id, flip, kind, vae.identity, clip_id)
        if store.has("latents", key):
            report.latents_reused += 1
        else:
            work.append((sample, flip, kind, key))

    def pixels(item):  # decoded on worker threads, ahead of the encoder
        sample, flip, kind, _ = item
        return _flip(load_sample_pixels(sample), flip) if kind == "none" and batch_size > 1 else None

    bar = tqdm(total=len(work), desc="latents", unit="item", disable=not progress, dynamic_ncols=True)
    for (sample, flip, kind, key), decoded in _prefetched(work, pixels):
        bar.update(1)
        try:
            if kind == "none" and batch_size > 1:
                pixels_CFHW = decoded.result()
                if pending and pending[0][3].shape != pixels_CFHW.shape:
                    flush()
                pending.append((sample, flip, key, pixels_CFHW))
                if len(pending) >= min(batch_size, max(1, BATCH_PIXELS // pixels_CFHW[0].numel())):
                    flush()
                continue
            entry = encode_sample(sample, flip, variant, vae, clip)
        except UserError as exc:
            report.failed.append((str(sample.path), str(exc)))
            continue
        save(sample, flip, key, entry)
    flush()
    report.seconds += time.perf_counter() - start
    return report


def cache_masks(samples, variant, store: CacheStore, rank: int = 0, world: int = 1,
                report: CacheReport | None = None) -> CacheReport:
    """Pool the loss mask of every (sample, flip) of this rank's share that has one onto the latent grid and
    store it under its mask key (a few numbers per latent position; no encoder)."""
    from wantune.data.masks import latent_mask, load_mask
    from wantune.errors import UserError

    report = report or CacheReport()
    start = time.perf_counter()
    for sample in shard([s for s in samples if s.mask_path is not None], rank, world):
        keys = {flip: mask_key(sample.sample_id, sample.mask_id, flip, variant.vae_stride) for flip in flips_of(sample)}
        todo = {flip: key for flip, key in keys.items() if not store.has("masks", key)}
        report.masks_reused += len(keys) - len(todo)
        if not todo:
            continue
        try:
            mask_1FHW = latent_mask(load_mask(sample), variant.vae_stride)
        except UserError as exc:
            report.failed.append((str(sample.mask_path), str(exc)))
            continue
        for flip, key in todo.items():
            store.save("masks", key, {"mask": _flip(mask_1FHW, flip).contiguous()},
                       {"sample_id": sample.sample_id, "mask": str(sample.mask_path), "flip": list(flip)})
            report.masks_made += 1
    report.seconds += time.perf_counter() - start
    return report


def _prefetched(items: list, load, ahead: int = 8, workers: int = 4):
    """(item, Future of load(item)) in order, with up to `ahead` loads running on `workers` threads."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        window, rest = deque(), iter(items)
        for item in rest:
            window.append((item, pool.submit(load, item)))
            if len(window) >= ahead:
                break
        while window:
            item, future = window.popleft()
            following = next(rest, None)
            if following is not None:
                window.append((following, pool.submit(load, following)))
            yield item, future


def cache_texts(captions: list[str], store: CacheStore, text_encoder, rank: int = 0, world: int = 1,
                batch_size: int = 8, progress: bool = True, report: CacheReport | None = None) -> CacheReport:
    """Encode every distinct caption of this rank's share that the store does not hold yet."""
    from tqdm import tqdm

    report = report or CacheReport()
    unique = shard(sorted(set(captions)), rank, world)
    todo = [c for c in unique if not store.has("text", text_key(c, text_encoder.identity))]
    report.texts_reused += len(unique) - len(todo)
    start = time.perf_counter()
    bar = tqdm(total=len(todo), desc="text", unit="caption", disable=not progress, dynamic_ncols=True)
    for i in range(0, len(todo), batch_size):
        chunk = todo[i:i + batch_size]
        for caption, context_LD in zip(chunk, text_encoder.encode(chunk)):
            store.save("text", text_key(caption, text_encoder.identity), {"context": context_LD.float()},
                       {"caption": caption})
        report.texts_encoded += len(chunk)
        bar.update(len(chunk))
    bar.close()
    report.seconds += time.perf_counter() - start
    return report


def captions_to_cache(samples, dop_prompts: list[str] = ()) -> list[str]:
    """Every text a run may need: each caption, the empty caption (dropout), and any extra prompts."""
    texts = {s.caption for s in samples}
    if any(s.caption_dropout > 0 for s in samples):
        texts.add("")
    texts.update(dop_prompts)
    return sorted(texts)
