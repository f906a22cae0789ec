"""Pieces of the step: gradient checkpointing, diagnostics in plain words, data loader resume, LoRA+ wiring."""

import torch

from wantune.lora import apply_lora
from wantune.models.transformer import WanModel
from wantune.models.variants import TINY, get_variant
from wantune.perf.checkpointing import apply_gradient_checkpointing, remove_gradient_checkpointing
from wantune.train.config import SyntheticData
from wantune.train.diagnostics import Diagnostics
from wantune.train.sources import SampleLoader, synthetic_samples


def _grads(model, network):
    torch.manual_seed(1)
    x, ctx = torch.randn(2, 16, 2, 4, 4), torch.randn(2, 3, 32)
    model(x, torch.tensor([300.0, 800.0]), ctx).square().mean().backward()
    grads = {n: p.grad.clone() for n, p in network.named_parameters()}
    for p in network.parameters():
        p.grad = None
    return grads


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = WanModel(get_variant("wan2.1-t2v-1.3b", **TINY))
    network = apply_lora(model, 4, 4.0)
    for adapter in network.adapters.values():
        torch.nn.init.normal_(adapter.lora_B.weight, std=0.1)
    plain = _grads(model, network)
    assert apply_gradient_checkpointing(model) == len(model.blocks)
    checkpointed = _grads(model, network)
    assert plain.keys() == checkpointed.keys()
    assert all(torch.allclose(plain[k], checkpointed[k], atol=1e-6, rtol=1e-5) for k in plain)
    remove_gradient_checkpointing(model)
    assert "forward" not in vars(model.blocks[0])


def test_loader_resumes_at_the_same_batch_and_epoch_order():
    samples = synthetic_samples(SyntheticData(samples=5), get_variant("wan2.1-t2v-1.3b", **TINY))
    loader = SampleLoader(samples, batch_size=2, seed=3, caption_dropout=0.3)
    seen = [loader.next_batch()["sample_id"] for _ in range(3)]
    assert loader.batches_per_epoch == 2 and loader.completed_epochs == 1
    state = loader.state_dict()
    after = [loader.next_batch() for _ in range(4)]
    again = SampleLoader(samples, batch_size=2, seed=3, caption_dropout=0.3)
    again.load_state_dict(state)
    replay = [again.next_batch() for _ in range(4)]
    assert [b["sample_id"] for b in after] == [b["sample_id"] for b in replay]
    assert all(torch.equal(c1, c2) for a, b in zip(after, replay) for c1, c2 in zip(a["context"], b["context"]))
    ids = [i for b in seen[:2] for i in b]
    assert len(set(ids)) == 4  # an epoch draws distinct samples


def test_diagnostics_speak_plainly():
    diag = Diagnostics(lr=1e-6, flat_window=20)
    messages = []
    for step in range(1, 21):
        messages += diag.on_step(step, 0.5 + 0.001 * (step % 3), None)
    assert len(messages) == 1 and "flat" in messages[0] and "learning rate too low (1e-06)" in messages[0]
    falling = Diagnostics(lr=1e-3, flat_window=20)  # fell, then levels off with noise: converging, not flat
    noisy = [1.0 / (1 + s / 10) + 0.05 * ((s * 7919) % 11 - 5) / 5 for s in range(200)]
    assert [m for s, x in enumerate(noisy) for m in falling.on_step(s + 1, x, None)] == []

    skip = diag.on_step(21, float("nan"), "loss is nan (sample a.mp4)")
    assert "step 21" in skip[0] and "skipped" in skip[0] and "halve it" in skip[0]

    diag = Diagnostics(lr=1e-4)
    diag.losses = [0.01] * 20
    assert diag.on_validation(100, 0.20, 0.01, "step_000100") == []
    assert diag.on_validation(200, 0.21, 0.01, "step_000200") == []
    warning = diag.on_validation(300, 0.30, 0.01, "step_000300")
    assert "overfitting" in warning[0] and "Best checkpoint so far: step_000100" in warning[0]


def test_diagnostics_lora_with_no_effect():
    torch.manual_seed(0)
    network = apply_lora(WanModel(get_variant("wan2.1-t2v-1.3b", **TINY)), 4, 4.0)
    message = Diagnostics(lr=1e-7).on_lora(50, network)
    assert "no effect" in message[0] and "Raise the learning rate (1e-07)" in message[0]
    torch.nn.init.normal_(next(iter(network.adapters.values())).lora_B.weight)
    assert Diagnostics(lr=1e-4).on_lora(50, network) == []


def test_built_unit_has_loraplus_groups_and_only_lora_trainable():
    from wantune import config as typed
    from wantune.train.config import TrainConfig
    from wantune.train.experts import build_models, build_unit, run_variant

    cfg = typed.load(TrainConfig, {"model": {"tiny": True, "dtype": "fp32"}, "data": {"synthetic": {}},
                                   "network": {"rank": 4, "loraplus_lr_ratio": 8.0, "include": [r"blocks\.1\."]},
                                   "optimizer": {"lr": 1e-4}})
    variant = run_variant(cfg)
    model = build_models(cfg, variant)["model"]
    unit = build_unit("model", model, cfg, variant, 10, torch.device("cpu"))
    down, up = unit.optimizer.param_groups
    assert down["lr"] == 1e-4 and abs(up["lr"] - 8e-4) < 1e-12
    b_ids = {id(a.lora_B.weight) for a in unit.network.adapters.values()}
    assert {id(p) for p in up["params"]} == b_ids
    assert all(path.startswith("blocks.1.") for path in unit.network.adapters)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


def test_spike_skips_the_step_and_leaves_weights_untouched():
    from wantune import config as typed
    from wantune.train.config import TrainConfig
    from wantune.train.experts import build_models, build_unit, run_variant
    from wantune.train.loop import StepContext, train_step

    cfg = typed.load(TrainConfig, {"model": {"tiny": True, "dtype": "fp32"}, "data": {"synthetic": {}},
                                   "training": {"steps": 5, "mixed_precision": "no", "spike_factor": 10.0}})
    variant = run_variant(cfg)
    unit = build_unit("model", build_models(cfg, variant)["model"], cfg, variant, 5, torch.device("cpu"))
    batch = SampleLoader(synthetic_samples(cfg.data.synthetic, variant), 2).next_batch()
    ctx = StepContext(cfg, torch.device("cpu"), torch.Generator().manual_seed(0))
    ctx.recent.extend([1e-4] * 10)
    before = unit.trainable_state()
    result = train_step(unit, [batch], ctx)
    assert result.skipped.startswith("loss spike") and result.grad_norm is None
    assert all(torch.equal(before[n], p.detach()) for n, p in unit.named_params)
    ctx.recent.clear()
    assert train_step(unit, [batch], ctx).skipped is None
    assert any(not torch.equal(before[n], p.detach()) for n, p in unit.named_params)
