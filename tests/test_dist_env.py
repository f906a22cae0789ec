"""The single-process face of wantune.dist, strategy choice, the `[distributed]` config and rank sharding of
the in-memory loader (the ranks' shares of a step are exactly one process's larger batch)."""

import pytest
import torch

from wantune.dist import env as dist
from wantune.dist.parallel import resolve_strategy
from wantune.errors import UserError
from wantune.models.variants import get_variant
from wantune.train.config import SyntheticData, load_train_config
from wantune.train.experts import TINY_TRAIN
from wantune.train.sources import SampleLoader, synthetic_samples


def test_without_torchrun_nothing_is_initialised(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    env = dist.setup("cpu")
    assert (env.rank, env.world, env.is_main, env.enabled, env.device) == (0, 1, True, False, torch.device("cpu"))
    assert not torch.distributed.is_initialized()
    assert dist.all_reduce_mean(2.5) == 2.5 and dist.gather_objects("x") == ["x"] and dist.broadcast_object(3) == 3


def test_bad_torchrun_environment_is_a_user_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(UserError, match="RANK/WORLD_SIZE/LOCAL_RANK"):
        dist.setup("cpu")


def test_strategy_auto_is_ddp_for_lora_and_fsdp_for_full():
    assert resolve_strategy("auto", "lora", 1) == resolve_strategy("fsdp", "full", 1) == "none"
    assert resolve_strategy("auto", "lora", 4) == "ddp"
    assert resolve_strategy("auto", "full", 4) == "fsdp"
    assert resolve_strategy("ddp", "full", 2) == "ddp"
    with pytest.raises(UserError, match="network.type = full only"):
        resolve_strategy("fsdp", "lora", 2)


def test_distributed_config_is_checked(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text('[model]\ntiny = true\n[data.synthetic]\nsamples = 4\n[distributed]\nstrategy = "fsdp"\n')
    with pytest.raises(UserError, match="distributed.strategy = fsdp"):
        load_train_config(path)
    assert load_train_config(path, ["network.type=full"]).distributed.strategy == "fsdp"
    with pytest.raises(UserError, match="distributed.strategy"):
        load_train_config(path, ["distributed.strategy=zero3"])


def test_rank_shares_together_are_the_single_process_batches():
    samples = synthetic_samples(SyntheticData(samples=10), get_variant("wan2.1-t2v-1.3b", **TINY_TRAIN))
    single = SampleLoader(samples, batch_size=4, seed=5, caption_dropout=0.5)
    ranks = [SampleLoader(samples, batch_size=2, seed=5, caption_dropout=0.5, rank=r, world=2) for r in range(2)]
    assert single.batches_per_epoch == ranks[0].batches_per_epoch == 2
    for _ in range(5):  # across epochs: same reshuffle, same caption dropout
        want = single.next_batch()
        got = [loader.next_batch() for loader in ranks]
        assert got[0]["sample_id"] + got[1]["sample_id"] == want["sample_id"]
        assert torch.equal(torch.cat([g["latents_BCFHW"] for g in got]), want["latents_BCFHW"])
        assert all(torch.equal(a, b) for a, b in zip(got[0]["context"] + got[1]["context"], want["context"],
                                                     strict=True))
    with pytest.raises(UserError, match="cannot fill a global batch"):
        SampleLoader(samples[:3], batch_size=2, rank=0, world=2)
