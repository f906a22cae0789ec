"""Cached loader throughput on this machine: samples/s from a cache of full-size Wan latents.

Writes entries shaped like real ones (81 frames 480x832 -> latents (16, 21, 60, 104) float32, text (L, 4096)),
then times `CachedLoader.next_batch` with and without the background prefetch, and while a simulated
training step sleeps (the loader must keep up with the fastest step we expect, so `wait_s` is ~0).

    python benchmarks/cached_loader.py [--samples 24] [--step-s 0.5] > benchmarks/results/cached_loader.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from wantune.cache.keys import latent_key, text_key
from wantune.cache.loader import CacheEntry, CachedLoader
from wantune.cache.store import CacheStore


def build_cache(root: Path, samples: int, latent_shape: tuple[int, ...], text_tokens: int) -> list[CacheEntry]:
    store, entries = CacheStore(root), []
    g = torch.Generator().manual_seed(0)
    for i in range(samples):
        lkey, tkey = latent_key(f"s{i}", (False, False), "none", "bench-vae"), text_key(f"c{i}", "bench-te")
        store.save("latents", lkey, {"latents": torch.randn(latent_shape, generator=g)})
        store.save("text", tkey, {"context": torch.randn(text_tokens, 4096, generator=g)})
        entries.append(CacheEntry(f"s{i}", (lkey,), tkey, None, 0.0, 1.0, (latent_shape[1], 832, 480)))
    return entries


def time_loader(store: CacheStore, entries, prefetch: bool, batches: int, step_s: float) -> dict:
    loader = CachedLoader(store, entries, batch_size=1, seed=0, prefetch=prefetch)
    loader.next_batch()  # warm-up
    waits = []
    start = time.perf_counter()
    for _ in range(batches):
        t0 = time.perf_counter()
        loader.next_batch()
        waits.append(time.perf_counter() - t0)
        if step_s:
            time.sleep(step_s)
    total = time.perf_counter() - start
    return {"prefetch": prefetch, "step_s": step_s, "batches": batches,
            "loader_samples_per_s": batches / sum(waits), "wall_samples_per_s": batches / total,
            "median_wait_s": statistics.median(waits), "max_wait_s": max(waits)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=24)
    parser.add_argument("--step-s", type=float, default=0.5, help="simulated training step time")
    args = parser.parse_args()
    shape = (16, 21, 60, 104)
    with tempfile.TemporaryDirectory() as tmp:
        entries = build_cache(Path(tmp), args.samples, shape, 120)
        store = CacheStore(tmp)
        runs = [time_loader(store, entries, False, args.samples, 0.0),
                time_loader(store, entries, True, args.samples, 0.0),
                time_loader(store, entries, True, args.samples, args.step_s)]
    print(json.dumps({"benchmark": "cached_loader", "machine": platform.machine(), "cpus": os.cpu_count(),
                      "torch": torch.__version__, "latent_shape": shape,
                      "latent_mib": round(torch.Size(shape).numel() * 4 / 2**20, 2), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
