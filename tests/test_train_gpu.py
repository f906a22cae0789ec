"""GPU-only checks (skipped on CPU): the waiting A14B expert is offloaded to pinned CPU memory, bf16 training
on CUDA, 8-bit AdamW."""

import json

import pytest
import torch

from wantune import config as typed
from wantune.train.config import TrainConfig
from wantune.train.experts import ExpertSchedule, build_models, build_unit, run_variant
from wantune.train.recipe import main

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _cfg(tmp_path, **tables) -> TrainConfig:
    base = {"model": {"variant": "wan2.2-t2v-a14b", "tiny": True, "dtype": "bf16"},
            "data": {"synthetic": {"samples": 4}}, "network": {"rank": 4, "alpha": 4.0},
            "optimizer": {"lr": 1e-2}, "experts": {"train": "both", "offload_inactive": True},
            "saving": {"output_dir": str(tmp_path), "name": "gpu"},
            "logging": {"tensorboard": False, "progress_bar": False},
            "training": {"steps": 4, "batch_size": 2, "mixed_precision": "bf16", "device": "cuda"}}
    for key, value in tables.items():
        base[key] = {**base.get(key, {}), **value}
    return typed.load(TrainConfig, base)


def test_inactive_expert_waits_in_pinned_cpu_memory(tmp_path):
    cfg = _cfg(tmp_path)
    variant, device = run_variant(cfg), torch.device("cuda")
    units = [build_unit(n, m, cfg, variant, 4, device, on_device=False) for n, m in build_models(cfg, variant).items()]
    schedule = ExpertSchedule(units, 1, True, device)
    for step, active in ((0, "high"), (1, "low"), (2, "high")):
        unit = schedule.unit_for(step)
        assert unit.name == active
        other = next(u for u in units if u is not unit)
        assert all(p.is_cuda for p in unit.model.parameters())
        assert all(not p.is_cuda and p.is_pinned() for p in other.model.parameters())


def test_a14b_both_with_offload_trains_on_cuda(tmp_path):
    files = main(_cfg(tmp_path))
    assert len(files) == 2
    assert "pinned CPU memory" in (tmp_path / "gpu" / "train.log").read_text()
    records = [json.loads(line) for line in (tmp_path / "gpu" / "metrics.jsonl").read_text().splitlines()]
    assert [r["expert"] for r in records] == ["high", "low", "high", "low"]
    assert all("grad_norm" in r for r in records)


def test_adamw8bit_on_cuda(tmp_path):
    pytest.importorskip("bitsandbytes")
    files = main(_cfg(tmp_path, model={"variant": "wan2.1-t2v-1.3b"}, optimizer={"name": "adamw8bit"},
                      experts={"offload_inactive": False}))
    assert len(files) == 1
