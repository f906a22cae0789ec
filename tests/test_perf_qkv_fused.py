"""q, k, v in one Function (`wantune.perf.qkv_fused`) against the three layers run separately: same outputs and
gradients of x and of every adapter, on plain and fp8 bases, in fp32 and under bf16 autocast (inside the fused
block forward of a tiny model: tests/test_perf_lora_fused.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wantune.lora.network import apply_lora
from wantune.perf import qkv_fused
from wantune.perf.fp8 import quantize_linears_fp8, set_fp8_backward
from wantune.perf.lora_fused import fuse_lora


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


def _model(fp8=False, fp8_backward=False, rank=4):
    torch.manual_seed(0)
    model = _Model()
    network = apply_lora(model, rank=rank, alpha=8.0, targets=["self_attn.q", "self_attn.k", "self_attn.v"])
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


@pytest.mark.parametrize("fp8,fp8_backward,rank", [(False, False, 4), (True, False, 4), (True, True, 4),
                                                   (True, True, 16)])
@pytest.mark.parametrize("autocast", [False, True])
def test_one_function_matches_three_layers(fp8, fp8_backward, rank, autocast, monkeypatch):
    calls = []
    apply = qkv_fused._QKVFn.apply
    monkeypatch.setattr(qkv_fused._QKVFn, "apply", lambda *a: calls.append(1) or apply(*a))
    x = torch.randn(2, 24, 48)
    model, network = _model(fp8, fp8_backward, rank)
    outs, grads = _run(model, network, x, together=False, autocast=autocast)
    assert not calls
    outs2, grads2 = _run(model, network, x, together=True, autocast=autocast)
    assert calls  # the fused Function ran
    tol = dict(rtol=2e-2, atol=2e-2) if autocast else dict(rtol=1e-5, atol=1e-5)
    for a, b in zip(outs, outs2):
        torch.testing.assert_close(b, a, **tol)
    assert len(grads) == len(grads2) == 7
    if fp8_backward:  # x's gradient is one fp8 matmul over [g_q | g_k | g_v (| gh)]: one scale per row for all
        exact = _run(*_model(fp8=True, rank=rank), x, together=False, autocast=autocast)[1][0]
        separate, together = (_rel_error(g[0], exact) for g in (grads, grads2))
        assert together < 0.06 and together < 1.5 * separate + 0.01, (together, separate)
        grads, grads2 = grads[1:], grads2[1:]
    for a, b in zip(grads, grads2):
        torch.testing.assert_close(b.float(), a.float(), **tol)


def _rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_layers_that_cannot_fuse_run_separately(monkeypatch):
    model, network = _model()
    fuse_lora(model.attn.k, enabled=False)  # one plain adapter: the three run as they are
    monkeypatch.setattr(qkv_fused._QKVFn, "apply", lambda *a: pytest.fail("fused"))
    x = torch.randn(2, 8, 48)
    q, k, v = qkv_fused.qkv(model.attn, x)
    torch.testing.assert_close(k, model.attn.k(x))
