"""The fused LoRA forward/backward (`wantune.perf.lora_fused`) against the plain LoRALinear: same outputs and
gradients for x, A and B, on a plain Linear and on the fp8 base (both input-gradient modes), and on a whole tiny
model under selective checkpointing."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from wantune.lora.network import LoRALinear, apply_lora
from wantune.models.variants import TINY, get_variant
from wantune.perf import numerics, qkv_fused
from wantune.perf.ac_policy import wrap_blocks
from wantune.perf.compile import install_fast_blocks
from wantune.perf.fp8 import quantize_linears_fp8, set_fp8_backward
from wantune.perf.lora_fused import fuse_lora, is_fused
from wantune.perf.setup import TrainSetup, prepare_plain, reset_blocks


class _OneLinear(nn.Module):
    """The smallest model with a Wan block Linear path (`blocks.0.ffn.0`)."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.ModuleDict({"ffn": nn.Sequential(nn.Linear(48, 40))})])

    def __getitem__(self, index):
        return self.blocks[0]["ffn"][0]

    def forward(self, x):
        return self[0](x)


def _layer(seed=0, fp8=False, fp8_backward=False, dtype=torch.float32, rank=4):
    torch.manual_seed(seed)
    model = _OneLinear().to(dtype)
    network = apply_lora(model, rank=rank, alpha=8.0, targets=["ffn.0"], dtype=dtype)
    with torch.no_grad():
        for p in network.parameters():
            p.normal_(0, 0.2)  # B non-zero, so the adapter path counts
    if fp8:
        quantize_linears_fp8(model)
        set_fp8_backward(model, fp8_backward)
    return model, network


def _run(model, network, x):
    x = x.clone().requires_grad_(True)
    out = model(x)
    (out * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).sum().backward()
    grads = [x.grad] + [p.grad for _, p in network.named_parameters()]
    return out.detach(), grads


@pytest.mark.parametrize("fp8,fp8_backward", [(False, False), (True, False), (True, True)])
def test_fused_layer_matches_plain(fp8, fp8_backward):
    x = torch.randn(2, 24, 48)
    model, network = _layer(fp8=fp8, fp8_backward=fp8_backward)
    out_plain, grads_plain = _run(model, network, x)
    for p in network.parameters():
        p.grad = None
    if fp8:  # fused before the fp8 class change too: the instance forward stays
        model, network = _layer()
        fuse_lora(model)
        quantize_linears_fp8(model)
        set_fp8_backward(model, fp8_backward)
        assert is_fused(model[0])
        torch.testing.assert_close(_run(model, network, x)[0], out_plain, rtol=1e-5, atol=1e-5)
        model, network = _layer(fp8=fp8, fp8_backward=fp8_backward)
    assert fuse_lora(model) == 1 and is_fused(model[0]) and fuse_lora(model) == 0
    out_fused, grads_fused = _run(model, network, x)
    assert type(model(x).grad_fn).__name__ == "_FusedLoRAFnBackward"
    torch.testing.assert_close(out_fused, out_plain, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads_fused, grads_plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    keys = set(model.state_dict())
    assert fuse_lora(model, enabled=False) == 1 and not is_fused(model[0])
    assert isinstance(model[0], LoRALinear) and set(model.state_dict()) == keys


def test_fused_path_skips_the_elementwise_passes():
    """The point of fusing: no full-size multiply or add for the adapter (aten ops of one forward+backward)."""
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(2, 24, 48)
    counts = {}
    for fused in (False, True):
        model, network = _layer()
        fuse_lora(model, fused)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            _run(model, network, x)
        counts[fused] = {e.key: e.count for e in prof.key_averages()}
    elementwise = ("aten::mul", "aten::add")
    assert sum(counts[False].get(k, 0) for k in elementwise) >= 3
    assert sum(counts[True].get(k, 0) for k in elementwise) < sum(counts[False].get(k, 0) for k in elementwise)


def test_two_adapters_or_dropout_take_the_plain_path():
    x = torch.randn(3, 48)
    model, network = _layer()
    model[0].adapters["other"] = type(network.adapters["blocks.0.ffn.0"])(48, 40, 2, 1.0)
    expected = model(x)
    fuse_lora(model)
    assert type(model(x).grad_fn).__name__ != "_FusedLoRAFnBackward"
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("fast_blocks", [False, True])
def test_tiny_model_fused_with_selective_checkpointing_matches_plain(fast_blocks, monkeypatch):
    """With the fused block forward too, q, k and v run as one Function (`wantune.perf.qkv_fused`)."""
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
    assert fuse_lora(setup.model) > 0
    if fast_blocks:
        reset_blocks(setup.model)
        install_fast_blocks(setup.model, compile=False)
    wrap_blocks(setup.model, save_attention=True, min_kv_tokens=1)
    fused = setup.loss_and_grads()
    assert len(calls) == (2 * variant.num_layers if fast_blocks else 0)  # forward and recompute of each block
    report = numerics.summarise(*plain, *fused)
    assert report["loss_rel_diff"] < 1e-3 and report["grad_cos"] > 0.9999, report
