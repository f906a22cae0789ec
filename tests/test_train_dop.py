"""Differential Output Preservation: training a trigger with DOP keeps the class prompt's outputs closer to the
base model's than the same run without DOP (measured on fixed noise), and the LoRA-off pass is the base model.
Base-model prior targets: regularisation samples trained towards the base model's prediction keep their prompt's
outputs closer to the base than the same samples trained towards their own latents."""

import contextlib

import torch

from wantune import config as typed
from wantune.lora import apply_lora, load_lora, merge_lora
from wantune.models.transformer import WanModel
from wantune.models.variants import TINY, get_variant
from wantune.train.config import TrainConfig
from wantune.train.experts import build_models, run_variant
from wantune.train.recipe import main
from wantune.train.regularise import lora_disabled
from wantune.train.objective import make_inputs
from wantune.train.regularise import base_prior_target, dop_loss
from wantune.train.sources import save_samples, synthetic_samples


def _cfg(tmp_path, name, dop: bool) -> TrainConfig:
    return typed.load(TrainConfig, {
        "model": {"tiny": True, "dtype": "fp32"}, "data": {"synthetic": {"samples": 8}},
        "network": {"rank": 8, "alpha": 8.0}, "optimizer": {"lr": 2e-2}, "timesteps": {"sampling": "uniform"},
        "regularisation": {"dop": {"enabled": dop, "trigger": "sks", "class_word": "thing", "multiplier": 1.0}},
        "saving": {"output_dir": str(tmp_path), "name": name},
        "logging": {"tensorboard": False, "progress_bar": False},
        "training": {"steps": 25, "batch_size": 4, "mixed_precision": "no"}})


@torch.no_grad()
def _class_prompt_drift(cfg: TrainConfig, lora_file, sample: dict | None = None, prompt: str = "context_dop_LD") -> float:
    """Mean squared difference between LoRA-merged and base outputs on the class prompt (or `prompt` of
    `sample`), fixed inputs."""
    variant = run_variant(cfg)
    base = build_models(cfg, variant)["model"]
    tuned = build_models(cfg, variant)["model"]
    merge_lora(tuned, load_lora(lora_file), 1.0)
    sample = sample or synthetic_samples(cfg.data.synthetic, variant)[0]
    g = torch.Generator().manual_seed(5)
    x = torch.randn((8, *sample["latents_CFHW"].shape), generator=g)
    t = torch.linspace(50, 950, 8)
    context = sample[prompt][None].expand(8, -1, -1)
    return float(((tuned(x, t, context) - base(x, t, context)) ** 2).mean())


def test_dop_pulls_class_outputs_towards_the_base_model(tmp_path):
    plain_cfg, dop_cfg = _cfg(tmp_path, "plain", False), _cfg(tmp_path, "dop", True)
    plain = _class_prompt_drift(plain_cfg, main(plain_cfg)[0])
    preserved = _class_prompt_drift(dop_cfg, main(dop_cfg)[0])
    assert plain > 0 and preserved < 0.5 * plain, (plain, preserved)


def test_lora_disabled_gives_the_exact_base_output():
    torch.manual_seed(0)
    model = WanModel(get_variant("wan2.1-t2v-1.3b", **TINY))
    x, t, ctx = torch.randn(1, 16, 1, 4, 4), torch.tensor([500.0]), torch.randn(1, 3, 32)
    base = model(x, t, ctx)
    network = apply_lora(model, 4, 4.0)
    for adapter in network.adapters.values():
        torch.nn.init.normal_(adapter.lora_B.weight)
    assert not torch.allclose(model(x, t, ctx), base)
    with lora_disabled(network):
        assert torch.equal(model(x, t, ctx), base)
    assert not torch.allclose(model(x, t, ctx), base)


def _prior_cfg(tmp_path, target: str) -> TrainConfig:
    cfg = _cfg(tmp_path, f"prior_{target}", False)
    data = {"synthetic": None, "latents_file": str(tmp_path / "trigger.safetensors"),
            "regularisation_file": str(tmp_path / "prior.safetensors")}
    return typed.load(TrainConfig, {**typed.to_dict(cfg), "data": data,
                                    "regularisation": {"prior_target": target}})


def test_base_prior_target_keeps_the_regularisation_prompts_outputs(tmp_path):
    """Trigger samples (prompt 0) plus regularisation samples (prompt 1): with prior_target = "base" the LoRA
    leaves prompt 1's outputs much closer to the base model's than with "data"."""
    samples = synthetic_samples(_cfg(tmp_path, "x", False).data.synthetic, run_variant(_cfg(tmp_path, "x", False)))
    save_samples(tmp_path / "trigger.safetensors", samples[0::2])
    save_samples(tmp_path / "prior.safetensors", samples[1::2])
    drift = {target: _class_prompt_drift(cfg, main(cfg)[0], samples[1], "context_LD")
             for target in ("data", "base") for cfg in [_prior_cfg(tmp_path, target)]}
    assert drift["data"] > 0 and drift["base"] < 0.25 * drift["data"], drift


def _lora_model_and_inputs():
    """A tiny model with a LoRA that changes its output, and noisy inputs of three samples at σ 0.2, 0.5, 0.9."""
    torch.manual_seed(0)
    model = WanModel(get_variant("wan2.1-t2v-1.3b", **TINY))
    network = apply_lora(model, 4, 4.0)
    for adapter in network.adapters.values():
        torch.nn.init.normal_(adapter.lora_B.weight)
    latents = torch.randn(3, 16, 1, 4, 4)
    inputs = make_inputs(latents, torch.randn_like(latents), torch.tensor([0.2, 0.5, 0.9]))
    return model, network, latents, inputs


def test_base_prior_target_replaces_only_regularisation_rows():
    model, network, _, inputs = _lora_model_and_inputs()
    context = torch.randn(3, 3, 32)
    batch = {"regularization_B": torch.tensor([False, True, False]), "cond_BCFHW": None, "clip_BKD": None}
    target = base_prior_target(model, network, batch, inputs, context, torch.no_grad)
    with lora_disabled(network), torch.no_grad():
        base = model(inputs.x_BCFHW, inputs.t, context)
    assert torch.equal(target[0], inputs.target_BCFHW[0]) and torch.equal(target[2], inputs.target_BCFHW[2])
    assert torch.allclose(target[1], base[1], atol=1e-6) and not torch.allclose(target[1], inputs.target_BCFHW[1])
    batch["regularization_B"] = torch.tensor([False, False, False])
    assert base_prior_target(model, network, batch, inputs, context, torch.no_grad) is inputs.target_BCFHW


def test_dop_loss_over_kept_rows_equals_the_loss_of_those_rows_alone():
    model, network, latents, inputs = _lora_model_and_inputs()
    batch = {"context_dop": [torch.randn(3, 32) for _ in range(3)], "cond_BCFHW": None, "clip_BKD": None}
    kept = dop_loss(model, network, batch, inputs, contextlib.nullcontext, torch.tensor([True, False, True]))
    alone = make_inputs(latents[[0, 2]], inputs.target_BCFHW[[0, 2]] + latents[[0, 2]], torch.tensor([0.2, 0.9]))
    expected = dop_loss(model, network, {**batch, "context_dop": batch["context_dop"][0::2]}, alone,
                        contextlib.nullcontext)
    assert kept is not None and torch.allclose(kept, expected, atol=1e-6)
    assert not torch.allclose(kept, dop_loss(model, network, batch, inputs, contextlib.nullcontext), atol=1e-6)
    assert dop_loss(model, network, batch, inputs, contextlib.nullcontext, torch.tensor([False] * 3)) is None


def _temporal_cfg(tmp_path, name, weight: float) -> TrainConfig:
    return typed.load(TrainConfig, {
        "model": {"tiny": True, "dtype": "fp32"}, "data": {"synthetic": {"samples": 8, "frames": 4}},
        "network": {"rank": 8, "alpha": 8.0}, "optimizer": {"lr": 2e-2}, "timesteps": {"sampling": "uniform"},
        "regularisation": {"temporal_weight": weight}, "saving": {"output_dir": str(tmp_path), "name": name},
        "logging": {"tensorboard": False, "progress_bar": False},
        "training": {"steps": 30, "batch_size": 4, "mixed_precision": "no"}})


@torch.no_grad()
def _frame_change_error(cfg: TrainConfig, lora_file) -> float:
    """Mean temporal (frame-difference) error of the LoRA-merged model on the training samples, fixed noise."""
    from wantune.train.objective import temporal_mse_B

    variant = run_variant(cfg)
    model = build_models(cfg, variant)["model"]
    merge_lora(model, load_lora(lora_file), 1.0)
    samples = synthetic_samples(cfg.data.synthetic, variant)
    latents = torch.stack([s["latents_CFHW"] for s in samples])
    g = torch.Generator().manual_seed(5)
    inputs = make_inputs(latents, torch.randn(latents.shape, generator=g), torch.linspace(0.1, 0.9, len(samples)))
    context = torch.stack([s["context_LD"] for s in samples])
    pred = model(inputs.x_BCFHW, inputs.t, context)
    return float(temporal_mse_B(pred, inputs.target_BCFHW, None).mean())


def test_temporal_loss_is_added_and_trains_the_frame_changes(tmp_path):
    import json

    plain_cfg, temporal_cfg = _temporal_cfg(tmp_path, "plain", 0.0), _temporal_cfg(tmp_path, "temporal", 2.0)
    plain, temporal = main(plain_cfg)[0], main(temporal_cfg)[0]
    records = [json.loads(x) for x in (tmp_path / "temporal" / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if "loss" in r]
    for r in records:  # the step's loss is the flow loss plus the weighted temporal loss
        assert abs(r["loss"] - (r["loss/flow"] + 2.0 * r["loss/temporal"])) < 1e-4 * r["loss"]
    first, last = (sum(r["loss/temporal"] for r in part) / 5 for part in (records[:5], records[-5:]))
    assert last < 0.95 * first, (first, last)
    assert "loss/temporal" not in (tmp_path / "plain" / "metrics.jsonl").read_text()
    # same data, seed and steps: the run that also weighed frame changes predicts them better
    assert _frame_change_error(temporal_cfg, temporal) < _frame_change_error(plain_cfg, plain)
