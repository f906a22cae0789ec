"""Fused elementwise work of the Wan block: modulated LayerNorm, q/k RMSNorm + RoPE, gated residuals.

`install_fast_blocks(model, compile=True)` gives every `WanBlock` a forward that computes exactly what
`WanBlock.forward` computes (same dtypes, same roundings), with the elementwise chains gathered into a few
functions that `torch.compile` fuses into single kernels: the float32 LayerNorm x (1 + scale) + shift, the
float32 q/k RMSNorm followed by the float32 RoPE rotation, the cross-attention's q/k RMSNorm, and the float32
gated residual adds. With
`compile=False` the same functions run eagerly (the CPU test path). Install it before `ac_policy.wrap_blocks`.

Legend: B batch, L tokens, S context tokens, D model dim, N heads, Dh head dim, T timestep tokens.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from wantune.models.attention import attention
from wantune.perf.qkv_fused import qkv


def modulated_norm(x_BLD: torch.Tensor, shift_BTD: torch.Tensor, scale_BTD: torch.Tensor, eps: float,
                   dtype: torch.dtype) -> torch.Tensor:
    """LayerNorm(x) * (1 + scale) + shift in float32, cast to the compute dtype."""
    normed = F.layer_norm(x_BLD.float(), (x_BLD.shape[-1],), eps=eps)
    return (normed * (1 + scale_BTD) + shift_BTD).to(dtype)


def affine_norm(x_BLD: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                dtype: torch.dtype) -> torch.Tensor:
    """norm3: affine LayerNorm in float32, cast to the compute dtype."""
    return F.layer_norm(x_BLD.float(), (x_BLD.shape[-1],), weight.float(), bias.float(), eps).to(dtype)


def rms_rope(x_BLD: torch.Tensor, weight: torch.Tensor, eps: float, heads: int, cos_LP: torch.Tensor,
             sin_LP: torch.Tensor) -> torch.Tensor:
    """q/k RMSNorm over D (float32, rounded to x's dtype as WanRMSNorm does), then RoPE -> (B, L, N, Dh)."""
    x32 = x_BLD.float()
    normed = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x_BLD.dtype)
    real, imag = normed.float().unflatten(2, (heads, -1)).unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos_LP[:, None, :], sin_LP[:, None, :]
    rotated = torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1)
    return rotated.flatten(-2).to(x_BLD.dtype)


def rms_norm(x_BLD: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """q/k RMSNorm over D in float32, rounded to x's dtype (WanRMSNorm; the cross-attention's q and k)."""
    x32 = x_BLD.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x_BLD.dtype)


def rope_only(x_BLD: torch.Tensor, heads: int, cos_LP: torch.Tensor, sin_LP: torch.Tensor) -> torch.Tensor:
    """RoPE without q/k norm (variants with qk_norm off)."""
    real, imag = x_BLD.float().unflatten(2, (heads, -1)).unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos_LP[:, None, :], sin_LP[:, None, :]
    return torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1).flatten(-2).to(x_BLD.dtype)


def gated_residual(x_BLD: torch.Tensor, y_BLD: torch.Tensor, gate_BTD: torch.Tensor) -> torch.Tensor:
    """x + y.float() * gate (float32 residual stream)."""
    return x_BLD + y_BLD.float() * gate_BTD


def residual(x_BLD: torch.Tensor, y_BLD: torch.Tensor) -> torch.Tensor:
    return x_BLD + y_BLD.float()


_FUSED = ("modulated_norm", "affine_norm", "rms_rope", "rms_norm", "rope_only", "gated_residual", "residual")


@functools.cache
def kernels(compiled: bool) -> dict:
    """The fused functions by name, torch.compile'd (static shapes) or plain."""
    table = {name: globals()[name] for name in _FUSED}
    if compiled:
        table = {name: torch.compile(fn, dynamic=False) for name, fn in table.items()}
    return table


def fast_block_forward(block: nn.Module, k: dict, x_BLD, e_BT6D, context_BSD, rope, context_img_BKD=None):
    """`WanBlock.forward` with fused elementwise kernels; same inputs, same result."""
    dtype, eps = context_BSD.dtype, block.norm1.eps
    shift1, scale1, gate1, shift2, scale2, gate2 = (block.modulation.float()[None] + e_BT6D).unbind(2)
    h_BLD = k["modulated_norm"](x_BLD, shift1, scale1, eps, dtype)
    x_BLD = k["gated_residual"](x_BLD, _self_attention(block.self_attn, k, h_BLD, rope), gate1)
    norm3 = block.norm3
    h_BLD = k["affine_norm"](x_BLD, norm3.weight, norm3.bias, norm3.eps, dtype) \
        if isinstance(norm3, nn.LayerNorm) else x_BLD.to(dtype)
    x_BLD = k["residual"](x_BLD, _cross_attention(block.cross_attn, k, h_BLD, context_BSD, context_img_BKD))
    h_BLD = k["modulated_norm"](x_BLD, shift2, scale2, eps, dtype)
    return k["gated_residual"](x_BLD, block.ffn(h_BLD), gate2)


def _self_attention(attn: nn.Module, k: dict, x_BLD: torch.Tensor, rope) -> torch.Tensor:
    cos_LP, sin_LP = rope
    heads = attn.num_heads
    q, key, v = qkv(attn, x_BLD)  # one Function for the three when they are fused LoRA layers
    if isinstance(attn.norm_q, nn.Identity):
        q = k["rope_only"](q, heads, cos_LP, sin_LP)
        key = k["rope_only"](key, heads, cos_LP, sin_LP)
    else:
        q = k["rms_rope"](q, attn.norm_q.weight, attn.norm_q.eps, heads, cos_LP, sin_LP)
        key = k["rms_rope"](key, attn.norm_k.weight, attn.norm_k.eps, heads, cos_LP, sin_LP)
    v = v.unflatten(2, (heads, -1))
    return attn.o(attention(q, key, v).flatten(2))


def _cross_attention(attn: nn.Module, k: dict, x_BLD: torch.Tensor, context_BSD: torch.Tensor,
                     context_img_BKD: torch.Tensor | None) -> torch.Tensor:
    """`WanCrossAttention.forward` with its q/k RMSNorms fused (eager they are float32 casts, a pow, a mean and
    three multiplies over the full video-token activation)."""
    heads = (attn.num_heads, -1)

    def norm(module: nn.Module, t: torch.Tensor) -> torch.Tensor:
        return t if isinstance(module, nn.Identity) else k["rms_norm"](t, module.weight, module.eps)

    q = norm(attn.norm_q, attn.q(x_BLD)).unflatten(2, heads)
    key = norm(attn.norm_k, attn.k(context_BSD)).unflatten(2, heads)
    out = attention(q, key, attn.v(context_BSD).unflatten(2, heads))
    if context_img_BKD is not None:
        key_img = norm(attn.norm_k_img, attn.k_img(context_img_BKD)).unflatten(2, heads)
        out = out + attention(q, key_img, attn.v_img(context_img_BKD).unflatten(2, heads))
    return attn.o(out.flatten(2))


def install_fast_blocks(model: nn.Module, compile: bool = True) -> int:
    """Give every block the fused forward; returns the number of blocks."""
    table = kernels(compile)
    for block in model.blocks:
        block.forward = functools.partial(fast_block_forward, block, table)
    return len(model.blocks)
