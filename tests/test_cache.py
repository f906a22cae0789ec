"""The cache on real encoded files: keys by identity, reuse and exact invalidation, resume, the loader."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import FIXTURES
from tests.test_data_helpers import numbered_video, solid_image
from wantune.cache.loader import CachedLoader, cached_entries
from wantune.cache.store import CacheStore
from wantune.cli import main

VAE = FIXTURES / "wan21_vae_tiny.safetensors"
UMT5 = FIXTURES / "umt5_tiny_official.pth"
TOKENIZER = FIXTURES / "tokenizer_tiny"


def _dataset(root: Path, variant: str = "wan2.1-t2v-1.3b", resolution=(32, 32), extra: str = "") -> Path:
    videos = root / "clips"
    numbered_video(videos / "a.mp4", 20, 16)
    numbered_video(videos / "b.mp4", 24, 16)
    solid_image(videos / "c.png", 40, 40, value=90)
    for name, caption in (("a", "a red circle"), ("b", "a blue square"), ("c", "a grey card")):
        (videos / f"{name}.txt").write_text(caption)
    cfg = root / "data.toml"
    cfg.write_text(f'[model]\nvariant = "{variant}"\n\n[[datasets]]\npath = "clips"\n'
                   f'resolution = [{resolution[0]}, {resolution[1]}]\ntarget_frames = [5]\n'
                   f'frame_extraction = "head"\n{extra}')
    return cfg


def _cache(cfg: Path, capsys, *extra: str) -> str:
    code = main(["cache", str(cfg), "--vae", str(VAE), "--text-encoder", str(UMT5), "--tokenizer",
                 str(TOKENIZER), "--cache-dir", str(cfg.parent / "cache"), "--dtype", "fp32", "--no-progress",
                 *extra])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def _counts(out: str) -> tuple[int, int, int, int]:
    import re

    m = re.search(r"(\d+) latents encoded, (\d+) reused; (\d+) captions encoded, (\d+) reused", out)
    return tuple(int(x) for x in m.groups())


def _entries(cfg: Path):
    from wantune.data.config import load_dataset_config
    from wantune.data.samples import enumerate_samples

    samples, _ = enumerate_samples(load_dataset_config(cfg))
    store = CacheStore(cfg.parent / "cache")
    return samples, store, cached_entries(samples, store)


def test_cache_reuse_and_exact_invalidation(tmp_path, capsys):
    cfg = _dataset(tmp_path)
    assert _counts(_cache(cfg, capsys)) == (3, 0, 3, 0)
    assert _counts(_cache(cfg, capsys)) == (0, 3, 0, 3)
    # an edited caption re-encodes its text only
    (tmp_path / "clips" / "a.txt").write_text("a green circle")
    assert _counts(_cache(cfg, capsys)) == (0, 3, 1, 2)
    # a changed source re-encodes that file's latents only
    numbered_video(tmp_path / "clips" / "b.mp4", 24, 16, height=40)
    assert _counts(_cache(cfg, capsys)) == (1, 2, 0, 3)
    # another encoder dtype is another encoder identity: everything again
    assert _counts(_cache(cfg, capsys, "--dtype", "bf16")) == (3, 0, 3, 0)
    assert not list((tmp_path / "cache").rglob(".tmp-*")), "temporary files left behind"


def test_bucket_change_invalidates_latents_not_text(tmp_path, capsys):
    from wantune.data.config import load_dataset_config
    from wantune.data.samples import enumerate_samples

    cfg = _dataset(tmp_path)
    _cache(cfg, capsys)
    before = {s.path: s.bucket for s in enumerate_samples(load_dataset_config(cfg))[0]}
    _dataset(tmp_path, resolution=(48, 32))
    after = {s.path: s.bucket for s in enumerate_samples(load_dataset_config(cfg))[0]}
    changed = sum(before[p] != after[p] for p in after)
    assert changed >= 2
    assert _counts(_cache(cfg, capsys)) == (changed, 3 - changed, 0, 3)


def test_interrupted_run_resumes(tmp_path, capsys):
    cfg = _dataset(tmp_path)
    _cache(cfg, capsys)
    files = sorted((tmp_path / "cache" / "latents").rglob("*.safetensors"))
    files[0].unlink()  # as if the run had stopped before this item
    assert _counts(_cache(cfg, capsys)) == (1, 2, 0, 3)


def test_entries_pair_latents_with_their_own_caption(tmp_path, capsys):
    from wantune.data.samples import load_sample_pixels
    from wantune.models.text_encoder import load_text_encoder
    from wantune.models.vae import load_vae

    cfg = _dataset(tmp_path)
    _cache(cfg, capsys)
    samples, store, entries = _entries(cfg)
    by_id = {s.sample_id: s for s in samples}
    vae = load_vae(VAE, dtype=torch.float32)
    encoder = load_text_encoder(UMT5, TOKENIZER, dtype=torch.float32, device="cpu")
    loader = CachedLoader(store, entries, batch_size=1, shuffle=True, seed=3, prefetch=True)
    seen = set()
    for _ in range(2 * loader.batches_per_epoch):
        batch = loader.next_batch()
        sample = by_id[batch["sample_id"][0]]
        seen.add(sample.sample_id)
        expected = vae.encode(load_sample_pixels(sample)[None])
        torch.testing.assert_close(batch["latents_BCFHW"], expected)
        torch.testing.assert_close(batch["context"][0], encoder.encode([sample.caption])[0].float())
    assert seen == set(by_id)


def test_loader_resumes_exactly_and_shards(tmp_path, capsys):
    cfg = _dataset(tmp_path)
    _cache(cfg, capsys)
    _, store, entries = _entries(cfg)
    ref = CachedLoader(store, entries, batch_size=1, seed=7)
    ids = [ref.next_batch()["sample_id"] for _ in range(7)]
    first = CachedLoader(store, entries, batch_size=1, seed=7)
    for _ in range(4):
        first.next_batch()
    resumed = CachedLoader(store, entries, batch_size=1, seed=7)
    resumed.load_state_dict(first.state_dict())
    assert [resumed.next_batch()["sample_id"] for _ in range(3)] == ids[4:]
    # two epochs differ in order but cover the same samples
    assert sorted(map(tuple, ids[:3])) == sorted(map(tuple, ids[3:6]))
    shards = [CachedLoader(store, entries, batch_size=1, seed=7, rank=r, world=2, prefetch=False) for r in (0, 1)]
    got = [tuple(s.next_batch()["sample_id"]) for s in shards]
    assert got[0] != got[1]


def test_memory_store_gives_the_same_batches_and_reads_each_file_once(tmp_path, capsys):
    from wantune.cache.loader import MemoryStore

    cfg = _dataset(tmp_path)
    _cache(cfg, capsys)
    _, store, entries = _entries(cfg)
    reads = []
    disk_load = store.load
    store.load = lambda kind, key: reads.append((kind, key)) or disk_load(kind, key)
    plain = CachedLoader(CacheStore(store.root), entries, batch_size=1, seed=5, prefetch=False)
    kept = CachedLoader(MemoryStore(store), entries, batch_size=1, seed=5, prefetch=True)
    for _ in range(3 * plain.batches_per_epoch):
        a, b = plain.next_batch(), kept.next_batch()
        assert a["sample_id"] == b["sample_id"]
        torch.testing.assert_close(a["latents_BCFHW"], b["latents_BCFHW"], rtol=0, atol=0)
        torch.testing.assert_close(a["context"][0], b["context"][0], rtol=0, atol=0)
    assert len(reads) == len(set(reads)) > 0  # three epochs, one read per file


def test_batches_group_by_shape(tmp_path, capsys):
    cfg = _dataset(tmp_path, extra="num_repeats = 2\n")
    _cache(cfg, capsys)
    _, store, entries = _entries(cfg)
    loader = CachedLoader(store, entries, batch_size=2, seed=1)
    for _ in range(loader.batches_per_epoch):
        batch = loader.next_batch()  # stacks, so all samples of a batch share frames and bucket
        assert batch["latents_BCFHW"].shape[0] in (1, 2)


def test_i2v_conditioning_is_cached(tmp_path, capsys):
    cfg = _dataset(tmp_path, variant="wan2.2-i2v-a14b")
    _cache(cfg, capsys)
    _, store, entries = _entries(cfg)
    batch = CachedLoader(store, entries, batch_size=1, shuffle=False).next_batch()
    cond = batch["cond_BCFHW"]
    assert cond.shape[1] == 20 and cond.shape[2:] == batch["latents_BCFHW"].shape[2:]
    assert torch.all(cond[:, :4, 0] == 1) and torch.all(cond[:, :4, 1:] == 0)


def test_missing_cache_is_one_line(tmp_path, capsys):
    cfg = _dataset(tmp_path)
    from wantune.errors import UserError

    with pytest.raises(UserError, match="run `wantune cache CONFIG` first"):
        _entries(cfg)
    code = main(["cache", str(tmp_path / "nope.toml"), "--vae", str(VAE)])
    assert code == 2 and "config file not found" in capsys.readouterr().err


def test_ranks_cache_disjoint_shares_that_cover_everything(tmp_path, capsys, monkeypatch):
    cfg = _dataset(tmp_path)
    got = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        got.append(_counts(_cache(cfg, capsys)))
    assert got[0][0] + got[1][0] == 3 and got[0][0] > 0 and got[1][0] > 0
    assert got[0][2] + got[1][2] == 3
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert _counts(_cache(cfg, capsys)) == (0, 3, 0, 3)


def test_training_config_caches_dop_class_prompts(tmp_path, capsys):
    from wantune.cache.keys import text_key

    _dataset(tmp_path)
    (tmp_path / "clips" / "a.txt").write_text("frung, a red circle")
    train = tmp_path / "train.toml"
    train.write_text('[model]\nvariant = "wan2.1-t2v-1.3b"\n\n[data]\ndataset_config = "data.toml"\n\n'
                     '[regularisation.dop]\nenabled = true\ntrigger = "frung"\nclass_word = "shape"\n')
    assert _counts(_cache(train, capsys))[2] == 4  # three captions and one class prompt
    info = CacheStore(tmp_path / "cache").read_info()
    assert CacheStore(tmp_path / "cache").has("text", text_key("shape, a red circle", info["text_encoder"]))
