"""Wan 2.2 A14B: each expert trains its own LoRA on its own σ range; an expert left out of range is unchanged."""

import json

import torch

from wantune import config as typed
from wantune.lora import load_lora
from wantune.train.config import TrainConfig
from wantune.train.experts import build_models, build_unit, run_variant
from wantune.train.recipe import main


def _cfg(tmp_path, variant="wan2.2-t2v-a14b", **tables) -> TrainConfig:
    base = {"model": {"variant": variant, "tiny": True, "dtype": "fp32"},
            "data": {"synthetic": {"samples": 4}}, "network": {"rank": 4, "alpha": 4.0},
            "optimizer": {"lr": 1e-2}, "timesteps": {"sampling": "uniform"},
            "saving": {"output_dir": str(tmp_path), "name": "pair"},
            "logging": {"tensorboard": False, "progress_bar": False},
            "training": {"steps": 8, "batch_size": 2, "mixed_precision": "no"}}
    for key, value in tables.items():
        base[key] = {**base.get(key, {}), **value}
    return typed.load(TrainConfig, base)


def _records(tmp_path):
    return [json.loads(line) for line in (tmp_path / "pair" / "metrics.jsonl").read_text().splitlines()]


def test_both_experts_write_two_loras_each_trained_on_its_range(tmp_path):
    files = main(_cfg(tmp_path, experts={"train": "both", "switch_every": 2}))
    assert sorted(f.name for f in files) == ["wan2.2_t2v_pair_v1_high.safetensors",
                                             "wan2.2_t2v_pair_v1_low.safetensors"]
    records = _records(tmp_path)
    assert [r["expert"] for r in records] == ["high", "high", "low", "low"] * 2
    assert all(r["sigma_mean"] >= 0.875 for r in records if r["expert"] == "high")
    assert all(r["sigma_mean"] < 0.875 for r in records if r["expert"] == "low")
    for f in files:
        lora = load_lora(f)
        assert lora.metadata["wantune.expert"] in f.name
        assert any(b.abs().max() > 0 for _, b in lora.modules.values())
    high, low = (load_lora(f) for f in sorted(files))
    path = next(iter(high.modules))
    assert not torch.equal(high.modules[path][1], low.modules[path][1])


def test_expert_with_no_timestep_in_range_is_left_unchanged(tmp_path):
    cfg = _cfg(tmp_path, experts={"train": "both"}, timesteps={"max_timestep": 500})
    files = {f.name: f for f in main(cfg)}
    records = _records(tmp_path)
    assert {r["expert"] for r in records} == {"low"} and all(r["sigma_mean"] <= 0.5 for r in records)
    variant = run_variant(cfg)
    fresh = build_unit("high", build_models(cfg, variant)["high"], cfg, variant, 8, torch.device("cpu"))
    saved = load_lora(files["wan2.2_t2v_pair_v1_high.safetensors"])
    initial = fresh.network.lora_weights()
    assert saved.modules.keys() == initial.keys()
    for path, (a, b) in saved.modules.items():
        assert torch.equal(a, initial[path][0]) and not b.any()
    low = load_lora(files["wan2.2_t2v_pair_v1_low.safetensors"])
    assert any(b.abs().max() > 0 for _, b in low.modules.values())
    assert "expert high: no allowed timestep falls in its range" in (tmp_path / "pair" / "train.log").read_text()


def test_i2v_expert_uses_boundary_0_9_and_image_conditioning(tmp_path):
    cfg = _cfg(tmp_path, variant="wan2.2-i2v-a14b", experts={"train": "high"}, training={"steps": 3})
    files = main(cfg)
    assert [f.name for f in files] == ["wan2.2_i2v_pair_v1_high.safetensors"]
    assert all(r["sigma_mean"] >= 0.9 for r in _records(tmp_path))
