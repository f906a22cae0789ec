"""The self-attention's q, k and v projections of one input in one autograd Function.

q, k and v read the same normalised activation x. As three fused-LoRA layers (`wantune.perf.lora_fused`) that
is three fp8 quantisations of x, three thin `x Aᵀ` reads of it in the forward (and again in the checkpoint
recompute), and in the backward three `ghᵀ x` reads, three adapter `addmm_`s into three input gradients and
autograd's two full-size adds of those. Here:

    forward:   xq = quantise(x) once;  out_j = base_j(xq);  h = x [A_q; A_k; A_v]ᵀ;  out_j += s_j · h_j B_jᵀ
    backward:  gh_j = s_j · g_j B_j;  dB_j = s_j · g_jᵀ h_j;  [dA_q; dA_k; dA_v] = [gh]ᵀ x;
               dx = base_grad_q(g_q);  dx += base_grad_k(g_k);  dx += base_grad_v(g_v);  dx += [gh] [A]

so x is quantised and read once per pass for all three; the bf16 base gradients accumulate in the matmul
(`addmm_`); with fp8 input gradients the three are one fp8 matmul, [g_q | g_k | g_v] quantised per row times
[W_q; W_k; W_v] (`fp8.fp8_grad_input_sum`: no adds, one contraction over 3 O). Results equal the three fused
layers' (CPU: same values up to the rounding order of the sums; with fp8 input gradients, up to the one
quantisation scale per row shared by the three). It applies when all three are fused single-adapter LoRA layers
with frozen bases of one kind (plain or fp8); otherwise the three layers run as they are.

Legend: M rows (batch x tokens), I in_features, O out_features, R rank.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wantune.perf.fp8 import Fp8TrainLinear, fp8_linear_quantized, quantize_input
from wantune.perf.lora_fused import grad_input, is_fused


def _adapter(layer: nn.Module):
    """(A, B, scale) of a fused single-adapter layer with a frozen base, or None."""
    if not is_fused(layer) or layer.weight.requires_grad or len(layer.adapters) != 1:
        return None
    adapter = next(iter(layer.adapters.values()))
    if not isinstance(adapter.dropout, nn.Identity):
        return None
    return adapter.lora_A.weight, adapter.lora_B.weight, adapter.scale


def qkv(attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q, k, v) = (attn.q(x), attn.k(x), attn.v(x)), in one Function when the layers allow it."""
    layers = (attn.q, attn.k, attn.v)
    parts = [_adapter(layer) for layer in layers]
    kinds = {isinstance(layer, Fp8TrainLinear) for layer in layers}
    if any(p is None for p in parts) or len(kinds) != 1:
        return tuple(layer(x) for layer in layers)
    kind = x.device.type
    weights = [w for a, b, _ in parts for w in (a, b)]
    scales = tuple(s for _, _, s in parts)
    if torch.is_autocast_enabled(kind):
        dtype = torch.get_autocast_dtype(kind)
        with torch.autocast(kind, enabled=False):
            return _QKVFn.apply(x.to(dtype), layers, scales, *(w.to(dtype) for w in weights))
    if any(w.dtype != x.dtype for w in weights):
        return tuple(layer(x) for layer in layers)
    return _QKVFn.apply(x, layers, scales, *weights)


def _base_forwards(layers, x: torch.Tensor) -> list[torch.Tensor]:
    """The three base outputs; fp8 bases share one quantisation of x."""
    if not isinstance(layers[0], Fp8TrainLinear):
        return [F.linear(x, layer.weight.to(x.dtype), None if layer.bias is None else layer.bias.to(x.dtype))
                for layer in layers]
    xq, x_scale = quantize_input(x)
    return [fp8_linear_quantized(xq, x_scale, x, layer.weight, layer.weight_scale, layer.bias) for layer in layers]


class _QKVFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, layers, scales, a_q, b_q, a_k, b_k, a_v, b_v):
        ctx.layers, ctx.scales = layers, scales
        a_3RI = torch.cat([a_q, a_k, a_v])
        x_MI = x.reshape(-1, x.shape[-1])
        h_M3R = x_MI @ a_3RI.t()
        rank = a_q.shape[0]
        outs = _base_forwards(layers, x)
        for j, (out, b_OR) in enumerate(zip(outs, (b_q, b_k, b_v))):
            out.view(-1, out.shape[-1]).addmm_(h_M3R[:, j * rank:(j + 1) * rank], b_OR.t(), alpha=scales[j])
        ctx.save_for_backward(x, h_M3R, a_3RI, b_q, b_k, b_v)
        return tuple(outs)

    @staticmethod
    def backward(ctx, g_q, g_k, g_v):
        x, h_M3R, a_3RI, *bs = ctx.saved_tensors
        rank, scales, layers = bs[0].shape[1], ctx.scales, ctx.layers
        x_MI = x.reshape(-1, x.shape[-1])
        grads = [g.reshape(-1, g.shape[-1]) for g in (g_q, g_k, g_v)]
        gh_M3R = torch.cat([(g @ b).mul_(s) for g, b, s in zip(grads, bs, scales)], dim=1)
        grad_a = gh_M3R.t() @ x_MI
        grad_bs = [(g.t() @ h_M3R[:, j * rank:(j + 1) * rank]).mul_(scales[j]) for j, g in enumerate(grads)]
        grad_x = grad_input(layers, (g_q, g_k, g_v), gh_M3R, a_3RI) if ctx.needs_input_grad[0] else None
        grad_as = grad_a.split(rank)
        return (grad_x, None, None, grad_as[0], grad_bs[0], grad_as[1], grad_bs[1], grad_as[2], grad_bs[2])

