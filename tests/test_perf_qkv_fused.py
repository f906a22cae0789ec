"""q, k, v in one Function (`wantune.perf.qkv_fused`) against the three layers run separately: same outputs and
gradients of x and of every adapter, on plain and fp8 bases, in fp32 and under bf16 autocast, and inside the
fused block forward of a tiny model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from wantune.lora.network import apply_lora
from wantune.models.variants import TINY, get_variant
from wantune.perf import numerics, qkv_fused
from wantune.perf.ac_policy import wrap_blocks
from wantune.perf.compile import install_fast_blocks
from wantune.perf.fp8 import quantize_linears_fp8, set_fp8_backward
from wantune.perf.lora_fused import fuse_lora
from wantune.perf.setup import TrainSetup, prepare_plain, reset_blocks


class _Attn(nn.Module):
    def __init__(self, dim=48):
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(dim, dim) for _ in range(3))


class _Model(nn.Module):
    """One block holding `self_attn.{q,k,v}` (the LoRA target paths)."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.ModuleDict({"self_attn": _Attn()})])

    @property
    def attn(self):
        return self.blocks[0]["self_attn"]


def _model(fp8=False, fp8_backward=False):
    torch.manual_seed(0)
    model = _Model()
    network = apply_lora(model, rank=4, alpha=8.0, targets=["self_attn.q", "self_attn.k", "self_attn.v"])
    with torch.no_grad():
        for p in network.parameters():
            p.normal_(0, 0.2)
    if fp8:
        quantize_linears_fp8(model)
        set_fp8_backward(model, fp8_backward)
    fuse_lora(model)
    return model, network


def _run(model, network, x, together: bool, autocast: bool):
    x = x.clone().requires_grad_(True)
    attn = model.attn
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        outs = qkv_fused.qkv(attn, x) if together else (attn.q(x), attn.k(x), attn.v(x))
        weights = torch.linspace(-1, 1, 48)
        loss = sum(((i + 1) * o.float() * weights).sum() for i, o in enumerate(outs))
    loss.backward()
    return [o.detach().float() for o in outs], [x.grad] + [p.grad for _, p in network.named_parameters()]


@pytest.mark.parametrize("fp8,fp8_backward", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("autocast", [False, True])
def test_one_function_matches_three_layers(fp8, fp8_backward, autocast, monkeypatch):
    calls = []
    apply = qkv_fused._QKVFn.apply
    monkeypatch.setattr(qkv_fused._QKVFn, "apply", lambda *a: calls.append(1) or apply(*a))
    x = torch.randn(2, 24, 48)
    model, network = _model(fp8, fp8_backward)
    outs, grads = _run(model, network, x, together=False, autocast=autocast)
    assert not calls
    outs2, grads2 = _run(model, network, x, together=True, autocast=autocast)
    assert calls  # the fused Function ran
    tol = dict(rtol=2e-2, atol=2e-2) if autocast else dict(rtol=1e-5, atol=1e-5)
    for a, b in zip(outs, outs2):
        torch.testing.assert_close(b, a, **tol)
    assert len(grads) == len(grads2) == 7
    for a, b in zip(grads, grads2):
        torch.testing.assert_close(b.float(), a.float(), **tol)


def test_layers_that_cannot_fuse_run_separately(monkeypatch):
    model, network = _model()
    fuse_lora(model.attn.k, enabled=False)  # one plain adapter: the three run as they are
    monkeypatch.setattr(qkv_fused._QKVFn, "apply", lambda *a: pytest.fail("fused"))
    x = torch.randn(2, 8, 48)
    q, k, v = qkv_fused.qkv(model.attn, x)
    torch.testing.assert_close(k, model.attn.k(x))


def test_tiny_model_with_fused_blocks_trains_as_the_plain_path(monkeypatch):
    calls = []
    apply = qkv_fused._QKVFn.apply
    monkeypatch.setattr(qkv_fused._QKVFn, "apply", lambda *a: calls.append(1) or apply(*a))
    variant = get_variant("wan2.2-i2v-a14b", **{**TINY, "num_layers": 2})
    cfg = SimpleNamespace(rank=4, block_swap=0, seed=0, batch=1, frames=5, height=64, width=64)
    setup = TrainSetup.build(variant, cfg, torch.device("cpu"), "bf16")
    with torch.no_grad():
        for p in setup.network.parameters():
            p.normal_(0, 0.05)
    prepare_plain(setup)
    plain = setup.loss_and_grads()
    fuse_lora(setup.model)
    reset_blocks(setup.model)
    install_fast_blocks(setup.model, compile=False)
    wrap_blocks(setup.model, save_attention=True, min_kv_tokens=1)
    report = numerics.summarise(*plain, *setup.loss_and_grads())
    assert len(calls) == 2 * variant.num_layers  # forward and checkpoint recompute of each block
    assert report["loss_rel_diff"] < 1e-3 and report["grad_cos"] > 0.9999, report
