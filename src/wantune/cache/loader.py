"""Training batches straight from the cache: no VAE or text encoder in memory.

`cached_entries(dataset_cfg, store)` finds every sample of a dataset config in the cache by its keys
(and fails in one line when some are missing). `CachedLoader` groups entries by shape (bucket and frame
count) so a batch stacks, reshuffles per epoch from (seed, epoch), shards batches across ranks, reads
the next batch on a background thread while the current one trains, and resumes exactly from
`state_dict()`. Its batches are the training loop's interface: `latents_BCFHW`, `context` (list of
(L_i, D)), `cond_BCFHW`, `clip_BKD`, `mask_B1FHW` (loss masks; None when no sample has one), `weight_B`,
`sample_id`.

Legend: B batch, C channels, F latent frames, H/W latent height/width, L text tokens, D text dim, K CLIP tokens.
"""

from __future__ import annotations

import random
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from wantune.cache.keys import cond_kind, flips_of, latent_key, mask_key, text_key
from wantune.cache.store import CacheStore
from wantune.errors import UserError


@dataclass(frozen=True)
class CacheEntry:
    """Where one sample's tensors live in the cache."""

    sample_id: str
    latent_keys: tuple[str, ...]
    """One per flip variant (the first is unflipped)."""
    text_key: str
    empty_text_key: str | None
    """The empty caption, for caption dropout (None: no dropout)."""
    caption_dropout: float
    weight: float
    shape: tuple[int, int, int]
    """(frames, width, height): entries of one shape batch together."""
    repeats: int = 1
    is_regularization: bool = False
    mask_keys: tuple[str, ...] = ()
    """The loss mask of each flip variant (empty: no mask)."""


def cached_entries(samples, store: CacheStore) -> list[CacheEntry]:
    """The cache entries of these samples; a one-line error when any is not cached yet."""
    info = store.read_info()
    entries, missing = [], []
    for s in samples:
        keys = tuple(latent_key(s.sample_id, f, cond_kind(info["model_type"], s.control_frames),
                                info["vae"], info.get("clip", "")) for f in flips_of(s))
        tkey = text_key(s.caption, info["text_encoder"])
        empty = text_key("", info["text_encoder"]) if s.caption_dropout > 0 else None
        masks = tuple(mask_key(s.sample_id, s.mask_id, f, tuple(info.get("vae_stride", ()))) for f in flips_of(s)
                      ) if s.mask_path is not None else ()
        needed = [("latents", k) for k in keys] + [("text", tkey)] + ([("text", empty)] if empty else [])
        needed += [("masks", k) for k in masks]
        if not all(store.has(kind, k) for kind, k in needed):
            missing.append(s)
            continue
        entries.append(CacheEntry(s.sample_id, keys, tkey, empty, s.caption_dropout, s.weight,
                                  (s.num_frames, *s.bucket), s.repeats, s.is_regularization, masks))
    if missing:
        raise UserError(f"{store.root}: {len(missing)} of {len(samples)} samples are not cached (first: "
                        f"{missing[0].path}); run `wantune cache CONFIG` again")
    return entries


class MemoryStore:
    """A CacheStore whose `load` keeps what it read (one dict of tensors per key); everything else passes
    through. The tensors are shared between batches: `collate` stacks them into new ones."""

    def __init__(self, store: CacheStore):
        self._store, self._kept = store, {}
        self._lock = threading.Lock()

    def __getattr__(self, name):
        return getattr(self._store, name)

    def load(self, kind: str, key: str) -> dict:
        with self._lock:
            if (kind, key) in self._kept:
                return self._kept[kind, key]
        tensors = self._store.load(kind, key)
        with self._lock:
            self._kept[kind, key] = tensors
        return tensors


def load_entry(store: CacheStore, entry: CacheEntry, flip: int = 0, drop_caption: bool = False) -> dict:
    """One sample dict (`latents_CFHW`, `context_LD`, `cond_CFHW`, `clip_KD`, `mask_1FHW`, `weight`, `sample_id`,
    `regularization`)."""
    tensors = store.load("latents", entry.latent_keys[flip])
    text = store.load("text", entry.empty_text_key if drop_caption else entry.text_key)
    mask = store.load("masks", entry.mask_keys[flip])["mask"] if entry.mask_keys else None
    return {"latents_CFHW": tensors["latents"], "context_LD": text["context"], "cond_CFHW": tensors.get("cond"),
            "clip_KD": tensors.get("clip"), "mask_1FHW": mask, "weight": entry.weight, "sample_id": entry.sample_id,
            "regularization": entry.is_regularization}


def collate(samples: list[dict]) -> dict:
    """Sample dicts of one shape -> the training loop's batch dict (optional parts None unless all have them)."""
    def stacked(key):
        values = [s.get(key) for s in samples]
        return None if any(v is None for v in values) else torch.stack(values)

    dop = [s.get("context_dop_LD") for s in samples]
    masks = [s.get("mask_1FHW") for s in samples]
    if all(m is None for m in masks):
        mask = None
    else:  # a sample without a mask counts everywhere
        shape = next(m for m in masks if m is not None).shape
        mask = torch.stack([m.float() if m is not None else torch.ones(shape) for m in masks])
    return {"latents_BCFHW": torch.stack([s["latents_CFHW"] for s in samples]).float(),
            "context": [s["context_LD"] for s in samples], "cond_BCFHW": stacked("cond_CFHW"),
            "clip_BKD": stacked("clip_KD"), "mask_B1FHW": mask,
            "context_dop": None if any(d is None for d in dop) else dop,
            "weight_B": torch.tensor([float(s.get("weight", 1.0)) for s in samples]),
            "regularization_B": torch.tensor([bool(s.get("regularization", False)) for s in samples]),
            "sample_id": [s["sample_id"] for s in samples]}


class CachedLoader:
    """Endless, resumable, shape-bucketed batches from the cache."""

    def __init__(self, store: CacheStore, entries: list[CacheEntry], batch_size: int, shuffle: bool = True,
                 seed: int = 0, rank: int = 0, world: int = 1, prefetch: bool = True):
        if not entries:
            raise UserError(f"{store.root}: no cached samples to train on")
        self.store, self.entries, self.batch_size = store, entries, batch_size
        self.shuffle, self.seed, self.rank, self.world = shuffle, seed, rank, world
        self.epoch, self.position = 0, 0
        self._plans: dict[int, list[list[int]]] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1) if prefetch else None
        self._pending: tuple[tuple[int, int], Future] | None = None

    def plan(self, epoch: int) -> list[list[int]]:
        """This rank's batches of an epoch: lists of entry indices, all of one shape."""
        with self._lock:
            if epoch not in self._plans:
                self._plans = {e: p for e, p in self._plans.items() if e >= epoch - 1}
                self._plans[epoch] = self._make_plan(epoch)
            return self._plans[epoch]

    def _make_plan(self, epoch: int) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + epoch)
        groups: dict[tuple, list[int]] = {}
        for i, entry in enumerate(self.entries):
            groups.setdefault(entry.shape, []).extend([i] * entry.repeats)
        batches = []
        for shape in sorted(groups):
            items = groups[shape]
            if self.shuffle:
                rng.shuffle(items)
            batches += [items[j:j + self.batch_size] for j in range(0, len(items), self.batch_size)]
        if self.shuffle:
            rng.shuffle(batches)
        per_rank = max(1, len(batches) // self.world)
        return (batches[self.rank::self.world] + batches)[:per_rank]

    @property
    def batches_per_epoch(self) -> int:
        return len(self.plan(self.epoch))

    def _load(self, epoch: int, position: int) -> dict:
        indices = self.plan(epoch)[position]
        samples = []
        for slot, index in enumerate(indices):
            entry = self.entries[index]
            rng = random.Random(((self.seed * 7919 + epoch) * 100_003 + position) * 1009 + slot)
            flip = rng.randrange(len(entry.latent_keys))
            drop = entry.empty_text_key is not None and rng.random() < entry.caption_dropout
            samples.append(load_entry(self.store, entry, flip, drop))
        return collate(samples)

    def _advance(self, epoch: int, position: int) -> tuple[int, int]:
        position += 1
        return (epoch + 1, 0) if position >= len(self.plan(epoch)) else (epoch, position)

    def next_batch(self) -> dict:
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        here = (self.epoch, self.position)
        if self._pending and self._pending[0] == here:
            batch = self._pending[1].result()
        else:
            batch = self._load(*here)
        self.epoch, self.position = self._advance(*here)
        if self._pool is not None:
            nxt = (self.epoch, self.position)
            self._pending = (nxt, self._pool.submit(self._load, *nxt))
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._pending = None
