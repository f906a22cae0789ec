"""LoRA fused into its base Linear: no full-size elementwise passes for the adapter.

The plain `LoRALinear` computes `base(x) + lora_B(lora_A(x)) * scale`: on a (tokens x features) activation that
is a scale multiply and an add of two full-size tensors in the forward, their backward, and autograd's add of
the base and adapter input gradients. `fuse_lora(model)` gives each single-adapter `LoRALinear` a forward that is
one autograd Function:

    forward:   out = base(x);  h = x Aᵀ;  out += scale · h Bᵀ      (addmm_ into the base output)
    backward:  gh = scale · g B;  dB = scale · gᵀ h;  dA = ghᵀ x;  dx = base_grad(g) + gh A  (addmm_ into dx)

so the adapter adds two thin matmuls each way and nothing else. The base is a plain `nn.Linear` or an fp8
`Fp8TrainLinear` (`wantune.perf.fp8`: its fp8 forward and input gradient). Layers with several adapters, adapter
dropout or a trainable base weight take the plain path. Profiled on an H100 (8 blocks of the 14B
expert, 41f 768x768, fp8-all), the full-size bf16 adds and scale multiplies were 0.16 s of a 1.40 s step.

Legend: M rows (batch x tokens), I in_features, O out_features, R rank.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn

from wantune.lora.network import LoRALinear
from wantune.perf.fp8 import Fp8TrainLinear, fp8_grad_input_sum, fp8_linear_forward, fp8_linear_grad_input


def _base_forward(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, Fp8TrainLinear):
        return fp8_linear_forward(x, layer.weight, layer.weight_scale, layer.bias)
    bias = None if layer.bias is None else layer.bias.to(x.dtype)
    return F.linear(x, layer.weight.to(x.dtype), bias)


def grad_input(layers, grads, gh_MR: torch.Tensor, a_RI: torch.Tensor) -> torch.Tensor:
    """dx = Σ_j g_j W_j + gh A for frozen bases of one input (one layer, or q, k and v) and their adapters
    (gh = scale · g B, side by side for several). fp8 bases with fp8 input gradients: the bases' part is one fp8
    matmul, [g_1 s_1 | g_2 s_2 | ...] quantised per row times [W_1; W_2; ...] (`fp8_grad_input_sum`); bf16
    bases accumulate in the matmul (`addmm_`); fp8 bases with bf16 input gradients add into the first. The
    adapters' gh A then adds in with `addmm_`. (In the fp8 matmul too, as [.. | gh s_A] x [..; A], it cost more
    than it saved on an H100: a contraction of 5,152 instead of 5,120 ran 25% slower; docs/performance.md.)"""
    first = layers[0]
    if isinstance(first, Fp8TrainLinear) and all(layer.fp8_backward for layer in layers):
        total = fp8_grad_input_sum(grads, tuple(layer.weight for layer in layers),
                                   tuple(layer.weight_scale for layer in layers))
    elif isinstance(first, Fp8TrainLinear):
        total = fp8_linear_grad_input(grads[0], first.weight, first.weight_scale, False)
        for layer, g in zip(layers[1:], grads[1:]):
            total += fp8_linear_grad_input(g, layer.weight, layer.weight_scale, False)
    else:
        total = grads[0] @ first.weight.to(grads[0].dtype)
        for layer, g in zip(layers[1:], grads[1:]):
            total.view(-1, total.shape[-1]).addmm_(g.reshape(-1, g.shape[-1]), layer.weight.to(g.dtype))
    total.view(-1, total.shape[-1]).addmm_(gh_MR, a_RI)
    return total


class _FusedLoRAFn(torch.autograd.Function):
    """out = base(x) + scale · (x Aᵀ) Bᵀ for a frozen base; gradients for x, A and B."""

    @staticmethod
    def forward(ctx, x, a_RI, b_OR, layer, scale):
        ctx.layer, ctx.scale = layer, scale
        x_MI = x.reshape(-1, x.shape[-1])
        h_MR = x_MI @ a_RI.t()
        out = _base_forward(layer, x)
        out.view(-1, out.shape[-1]).addmm_(h_MR, b_OR.t(), alpha=scale)
        ctx.save_for_backward(x, h_MR, a_RI, b_OR)
        return out

    @staticmethod
    def backward(ctx, g):
        x, h_MR, a_RI, b_OR = ctx.saved_tensors
        scale = ctx.scale
        g_MO = g.reshape(-1, g.shape[-1])
        gh_MR = (g_MO @ b_OR).mul_(scale)
        grad_a = gh_MR.t() @ x.reshape(-1, x.shape[-1]) if ctx.needs_input_grad[1] else None
        grad_b = (g_MO.t() @ h_MR).mul_(scale) if ctx.needs_input_grad[2] else None
        grad_x = grad_input((ctx.layer,), (g,), gh_MR, a_RI) if ctx.needs_input_grad[0] else None
        return grad_x, grad_a, grad_b, None, None


def _fused_forward(self, x: torch.Tensor) -> torch.Tensor:
    adapters = list(self.adapters.values())
    if len(adapters) != 1 or not isinstance(adapters[0].dropout, nn.Identity) or self.weight.requires_grad:
        return LoRALinear.forward(self, x)
    adapter = adapters[0]
    a_RI, b_OR, kind = adapter.lora_A.weight, adapter.lora_B.weight, x.device.type
    if torch.is_autocast_enabled(kind):  # what autocast does to a Linear: every operand in its dtype
        dtype = torch.get_autocast_dtype(kind)
        with torch.autocast(kind, enabled=False):
            return _FusedLoRAFn.apply(x.to(dtype), a_RI.to(dtype), b_OR.to(dtype), self, adapter.scale)
    if not x.dtype == a_RI.dtype == b_OR.dtype:
        return LoRALinear.forward(self, x)
    return _FusedLoRAFn.apply(x, a_RI, b_OR, self, adapter.scale)


def is_fused(module: nn.Module) -> bool:
    return "forward" in vars(module) and getattr(module.forward, "__func__", None) is _fused_forward


def fuse_lora(model: nn.Module, enabled: bool = True) -> int:
    """Switch every `LoRALinear` under `model` to the fused forward (or back, `enabled=False`); returns how many
    changed. The forward is set on the instance, so it stays through `quantize_linears_fp8`'s class change;
    parameters and state-dict keys are unchanged."""
    count = 0
    for module in model.modules():
        if not isinstance(module, LoRALinear) or is_fused(module) == enabled:
            continue
        if enabled:
            module.forward = types.MethodType(_fused_forward, module)
        else:
            del module.forward
        count += 1
    return count
