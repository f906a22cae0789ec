"""fp8 rowwise training path on the CPU: quantisation, the layer against a plain Linear, a tiny model's loss/grads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wantune.lora import apply_lora
from wantune.models.variants import TINY, get_variant
from wantune.perf import numerics
from wantune.perf.fp8 import FP8, Fp8TrainLinear, quantize_linears_fp8, quantize_rowwise
from wantune.perf.setup import TrainSetup, prepare_plain


def test_rowwise_quantisation_round_trip():
    torch.manual_seed(0)
    x = torch.randn(64, 256) * torch.logspace(-3, 2, 64)[:, None]  # rows of very different scales
    values, scale = quantize_rowwise(x)
    assert values.dtype == FP8 and scale.shape == (64, 1)
    back = values.float() * scale
    rel = ((back - x).norm(dim=1) / x.norm(dim=1)).max()
    assert rel < 0.04  # e4m3: 3 mantissa bits, per-row scale keeps every row in range


def _ffn_model() -> nn.Module:
    holder = nn.Module()
    block = nn.Module()
    block.ffn = nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 256))
    holder.blocks = nn.ModuleList([block])
    return holder


def test_fp8_linear_with_lora_matches_plain_linear():
    torch.manual_seed(0)
    model, plain = _ffn_model(), _ffn_model()
    plain.load_state_dict(model.state_dict())
    networks = [apply_lora(m, rank=4, alpha=4, targets=["ffn.0", "ffn.2"]) for m in (model, plain)]
    for a, b in zip(networks[0].parameters(), networks[1].parameters()):
        with torch.no_grad():
            a.normal_(std=0.1)
            b.copy_(a)
    assert quantize_linears_fp8(model) == 2
    layer = model.blocks[0].ffn[0]
    assert isinstance(layer, Fp8TrainLinear) and layer.weight.dtype == FP8 and not layer.weight.requires_grad
    assert layer.adapters["lora"].lora_A.weight.dtype == torch.float32
    x = torch.randn(2, 33, 256, requires_grad=True)  # 66 rows: not a multiple of 16
    x_ref = x.detach().clone().requires_grad_(True)
    out, ref = model.blocks[0].ffn(x), plain.blocks[0].ffn(x_ref)
    assert (out - ref).norm() / ref.norm() < 0.05
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad)
    assert (x.grad - x_ref.grad).norm() / x_ref.grad.norm() < 0.05
    for a, b in zip(networks[0].parameters(), networks[1].parameters()):
        assert a.grad is not None and (a.grad - b.grad).norm() / b.grad.norm() < 0.05


def _tiny_setup_and_bf16_grads():
    from types import SimpleNamespace

    variant = get_variant("wan2.2-i2v-a14b", **TINY)
    cfg = SimpleNamespace(rank=4, block_swap=0, seed=0, batch=1, frames=5, height=64, width=64)
    setup = TrainSetup.build(variant, cfg, torch.device("cpu"), "bf16")
    prepare_plain(setup)
    return setup, *setup.loss_and_grads()


def test_tiny_model_fp8_loss_and_lora_grads_close_to_bf16():
    setup, loss_bf16, grads_bf16 = _tiny_setup_and_bf16_grads()
    setup.to_fp8()
    lora_dtypes = {p.dtype for p in setup.network.parameters()}
    assert lora_dtypes == {torch.bfloat16}
    assert all(isinstance(m, Fp8TrainLinear) for name, m in setup.model.blocks.named_modules()
               if name.endswith(("self_attn.q", "ffn.0", "ffn.2")))
    loss_fp8, grads_fp8 = setup.loss_and_grads()
    report = numerics.summarise(loss_bf16, grads_bf16, loss_fp8, grads_fp8)
    assert report["loss_rel_diff"] < 0.01
    assert report["grad_cos"] > 0.99
    assert 0 < report["grad_rel_l2"] < 0.1  # not identical: fp8 really is in the path


def test_fp8_input_gradient_folds_the_weight_scales_into_the_gradient():
    """fp8_backward: grad_x from the e4m3 gradient (weight row scales folded in) and the stored fp8 weight, against
    the exact grad @ dequant(W) of the bf16-backward path; the quantised gradient really is in the path."""
    from wantune.perf.fp8 import quantize_grad, set_fp8_backward

    torch.manual_seed(0)
    model = _ffn_model()
    with torch.no_grad():  # rows of very different magnitude: the per-row weight scales must reach the result
        model.blocks[0].ffn[2].weight.mul_(torch.logspace(-2, 1, 256)[:, None])
    quantize_linears_fp8(model)
    layer = model.blocks[0].ffn[2]
    x = torch.randn(3, 37, 512)
    grad = torch.randn(3, 37, 256) * torch.logspace(-3, 1, 37)[None, :, None]
    grads = {}
    for fp8 in (False, True):
        assert set_fp8_backward(model, fp8) == 2
        xi = x.clone().requires_grad_(True)
        layer(xi).backward(grad)
        grads[fp8] = xi.grad
    exact, approx = grads[False], grads[True]
    assert approx.shape == exact.shape and not torch.equal(approx, exact)
    rel_rows = (approx - exact).flatten(0, 1).norm(dim=1) / exact.flatten(0, 1).norm(dim=1)
    assert rel_rows.max() < 0.06  # e4m3 per row: every token row close, small and large alike
    gq, g_scale = quantize_grad(grad.reshape(-1, 256), layer.weight_scale)
    by_hand = (gq.float() * g_scale) @ layer.weight.float()
    assert torch.allclose(approx.reshape(-1, 512), by_hand, rtol=1e-5, atol=1e-6)


def test_tiny_model_fp8_backward_loss_and_lora_grads_close_to_bf16():
    from wantune.perf.fp8 import set_fp8_backward

    setup, loss_bf16, grads_bf16 = _tiny_setup_and_bf16_grads()
    setup.to_fp8()
    loss_fwd, grads_fwd = setup.loss_and_grads()
    assert set_fp8_backward(setup.model) > 0
    loss_all, grads_all = setup.loss_and_grads()
    assert loss_all == loss_fwd  # the forward is unchanged
    report = numerics.summarise(loss_bf16, grads_bf16, loss_all, grads_all)
    assert report["grad_cos"] > 0.99 and report["grad_rel_l2"] < 0.1
    assert numerics.summarise(loss_fwd, grads_fwd, loss_all, grads_all)["grad_rel_l2"] > 0  # fp8 grads in use


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                    reason="needs fp8 tensor cores (CUDA, compute capability >= 8.9)")
def test_bias_in_the_scaled_mm_epilogue_matches_a_separate_add():
    from wantune.perf.fp8 import fp8_matmul

    torch.manual_seed(0)
    x = torch.randn(64, 256, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(128, 256, device="cuda", dtype=torch.bfloat16)
    bias = torch.randn(128, device="cuda", dtype=torch.bfloat16)
    (xq, xs), (wq, ws) = quantize_rowwise(x), quantize_rowwise(w)
    fused = fp8_matmul(xq, xs, wq, ws.view(-1), torch.bfloat16, bias)
    separate = fp8_matmul(xq, xs, wq, ws.view(-1), torch.bfloat16) + bias
    torch.testing.assert_close(fused, separate, rtol=2e-2, atol=2e-2)
