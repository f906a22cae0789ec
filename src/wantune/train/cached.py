"""Training from a cached dataset (`data.dataset_config` + `wantune cache`): no VAE or text encoder loaded.

The dataset's samples are found in the cache by their keys (`wantune.cache.loader`); a seeded share is
held out for validation (`validation.split`); DOP looks up the cached embedding of each caption with the
trigger replaced by the class word.
"""

from __future__ import annotations

import math
import random

from wantune.dist import env as dist
from wantune.errors import UserError
from wantune.models.variants import WanVariant


class DopContexts:
    """Wraps a loader so each batch carries `context_dop`: the cached class-prompt embeddings."""

    def __init__(self, loader, store, keys: dict[str, str]):
        self.loader, self.store, self.keys = loader, store, keys

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def next_batch(self) -> dict:
        batch = self.loader.next_batch()
        batch["context_dop"] = [self.store.load("text", self.keys[s])["context"] for s in batch["sample_id"]]
        return batch


def build_cached(cfg, variant: WanVariant, rank: int = 0, world: int = 1):
    """(train loader, validation sample dicts, number of training samples) from the dataset's cache.

    The loader gives rank `rank` of `world` its own share of the batches (`CachedLoader` shards them).
    """
    from wantune.cache.keys import text_key
    from wantune.cache.loader import CachedLoader, MemoryStore, cached_entries, load_entry
    from wantune.cache.store import CacheStore
    from wantune.data.config import load_dataset_config
    from wantune.data.samples import enumerate_samples, require_samples
    from wantune.train.regularise import replace_trigger

    dataset = load_dataset_config(cfg.data.dataset_config, variant=cfg.model.variant)
    samples, skipped = enumerate_samples(dataset)
    require_samples(samples, skipped)
    cache_dir = cfg.data.cache_dir or cfg.data.dataset_config.parent / "cache"
    store = CacheStore(cache_dir)
    if not (cache_dir / "cache_info.json").is_file():
        raise UserError(f"data.cache_dir = {cache_dir}: no cache there; run `wantune cache CONFIG` first")
    info = store.read_info()
    if info.get("variant") and info["model_type"] != variant.model_type:
        raise UserError(f"{cache_dir}: cached for {info['variant']}, but this run trains {variant.name}; "
                        "cache the dataset for this model")
    entries = cached_entries(samples, store)
    held = _held_out(len(entries), cfg.validation.split, cfg.training.seed)
    train = [e for i, e in enumerate(entries) if i not in held]
    validation = [load_entry(store, e) for i, e in enumerate(entries) if i in held]
    loader = CachedLoader(MemoryStore(store) if cfg.data.cache_in_memory else store, train, cfg.training.batch_size,
                          cfg.data.shuffle, cfg.training.seed, rank, world)
    if cfg.regularisation.dop.enabled:
        dop = cfg.regularisation.dop
        keys = {s.sample_id: text_key(replace_trigger(s.caption, dop.trigger, dop.class_word), info["text_encoder"])
                for s in samples}
        prompts = {replace_trigger(s.caption, dop.trigger, dop.class_word) for s in samples
                   if not store.has("text", keys[s.sample_id])}
        if prompts and dist.is_main():
            _cache_prompts(cfg, store, info, sorted(prompts))
        dist.barrier()  # the other ranks read what rank 0 cached
        loader = DopContexts(loader, store, keys)
        for sample in validation:
            sample["context_dop_LD"] = store.load("text", keys[sample["sample_id"]])["context"]
    largest = max(((e.shape[0], e.shape[2], e.shape[1]) for e in train), key=math.prod, default=None)
    return loader, validation, len(train), largest


def _held_out(count: int, fraction: float, seed: int) -> set[int]:
    if fraction <= 0:
        return set()
    n_val = max(1, round(fraction * count))
    if n_val >= count:
        raise UserError(f"validation.split = {fraction}: leaves no training samples out of {count}")
    order = list(range(count))
    random.Random(seed).shuffle(order)
    return set(order[:n_val])


def _cache_prompts(cfg, store, info: dict, prompts: list[str]) -> None:
    """Encode the DOP class prompts the cache lacks with the very encoder the cache was built with."""
    import torch

    from wantune.cache.encode import cache_texts

    where = f"{store.root}: {len(prompts)} DOP class prompts are not cached"
    if cfg.model.text_encoder is None or cfg.model.tokenizer is None:
        raise UserError(f"{where}; set model.text_encoder and model.tokenizer so the run can encode them")
    from wantune.models.text_encoder import load_text_encoder

    dtype = getattr(torch, info["text_encoder"].rsplit(":", 1)[-1], torch.bfloat16)
    encoder = load_text_encoder(cfg.model.text_encoder, cfg.model.tokenizer, dtype=dtype)
    if encoder.identity != info["text_encoder"]:
        raise UserError(f"{where}, and model.text_encoder is not the encoder the cache was built with; "
                        "point it at the same files")
    cache_texts(prompts, store, encoder, progress=False)
    del encoder
