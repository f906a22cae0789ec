"""fp8 training of frozen base weights: fp8_e4m3 storage with one scale per output row, fp8 forward matmuls.

`quantize_linears_fp8(model)` stores every frozen block Linear weight as float8_e4m3fn with a float32 scale per
output row (`weight_scale`); the LoRA adapters stay in their own dtype. Forward: the activations are quantised
per token row and multiplied with `torch._scaled_mm` (rowwise scales, bf16 out) on a GPU that has it, or by
the same quantised values dequantised to float32 elsewhere (the CPU path, identical rounding of the inputs).
Backward: the input gradient is `grad @ dequant(weight)` in the gradient's dtype (the weights get none), or,
with `fp8_backward` (`set_fp8_backward`), an fp8 matmul too: the weight's row scales lie on the contracted axis,
so they are folded into the gradient (grad * scale_O), which is quantised per row to e4m3, and multiplied with
the stored fp8 weight as is (a transposed copy made for the call, 1 byte a weight), scale 1 on its side.

Legend: M rows (batch x tokens), I in_features, O out_features.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
_ROW_MULTIPLE = 16  # _scaled_mm wants every dim of its operands divisible by 16


def quantize_rowwise(x_MI: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 values (M, I), float32 scales (M, 1)) with x ≈ values * scale, one scale per row."""
    amax_M1 = x_MI.abs().amax(dim=1, keepdim=True).float()
    scale_M1 = amax_M1.clamp(min=1e-12) / FP8_MAX
    return (x_MI.float() / scale_M1).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale_M1


_quantize = quantize_rowwise


def compile_quantize(enabled: bool = True) -> None:
    """Use torch.compile'd (single fused kernel) activation and gradient quantisers and weight transpose in the
    fp8 matmuls, or the eager ones."""
    global _quantize, _quantize_grad, _quantize_grads, _transpose
    _quantize = _compiled_quantize() if enabled else quantize_rowwise
    _quantize_grad = _compiled_quantize_grad() if enabled else quantize_grad
    _quantize_grads = _compiled_quantize_grads() if enabled else quantize_grads
    _transpose = _compiled_transpose() if enabled else transpose


def transpose(*ws_OI: torch.Tensor) -> torch.Tensor:
    """A row-major copy of wᵀ (I, O), or of [w_1; w_2; ...]ᵀ (I, ΣO) for several weights of one input axis."""
    w_OI = ws_OI[0] if len(ws_OI) == 1 else torch.cat(ws_OI)
    return w_OI.t().contiguous()


_transpose = transpose


@functools.cache
def _compiled_transpose():
    """wᵀ copied by a tiled kernel: ATen's element-wise copy of a transposed 1-byte tensor ran at about a fifth
    of the memory bandwidth (0.26 ms for a 5120 x 13824 weight on an H100)."""
    return torch.compile(transpose, dynamic=False)


@functools.cache
def _compiled_quantize():
    return torch.compile(quantize_rowwise, dynamic=False)


def quantize_grad(g_MO: torch.Tensor, w_scale_O: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The output gradient with the weight's row scales folded in, quantised per row: (fp8 (M, O), (M, 1))."""
    return quantize_rowwise(g_MO.float() * w_scale_O.float())


_quantize_grad = quantize_grad


def quantize_grads(gs_MO: list[torch.Tensor], w_scales_O: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Several output gradients, each with its weight's row scales folded in, side by side and quantised per row
    (one scale over the whole row): (fp8 (M, ΣO), (M, 1))."""
    return quantize_rowwise(torch.cat([g.float() * s.float() for g, s in zip(gs_MO, w_scales_O)], dim=1))


_quantize_grads = quantize_grads


@functools.cache
def _compiled_quantize_grad():
    return torch.compile(quantize_grad, dynamic=False)


@functools.cache
def _compiled_quantize_grads():
    return torch.compile(quantize_grads, dynamic=False)


def scaled_mm_available(device: torch.device) -> bool:
    """True on a CUDA device of compute capability >= 8.9 (fp8 tensor cores)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


_BIAS_IN_MM = [True]
"""Whether this PyTorch's rowwise `_scaled_mm` takes the bias into its epilogue (cleared on the first refusal)."""


def fp8_matmul(xq_MI: torch.Tensor, x_scale_M1: torch.Tensor, w_OI: torch.Tensor, w_scale_O: torch.Tensor,
               out_dtype: torch.dtype, bias_O: torch.Tensor | None = None) -> torch.Tensor:
    """(xq * x_scale) @ (w * w_scale)ᵀ + bias -> (M, O) in out_dtype; fp8 tensor cores when available, the bias
    then added in the matmul's epilogue (no separate broadcast-add pass over the output)."""
    if scaled_mm_available(xq_MI.device):  # rows: a multiple of 16 (fp8_linear pads)
        kwargs = dict(scale_a=x_scale_M1, scale_b=w_scale_O.view(1, -1), out_dtype=out_dtype, use_fast_accum=True)
        if bias_O is not None and _BIAS_IN_MM[0]:
            try:
                return torch._scaled_mm(xq_MI, w_OI.t(), bias=bias_O.to(out_dtype), **kwargs)
            except RuntimeError:  # this build's rowwise kernel takes no bias: add it separately from now on
                _BIAS_IN_MM[0] = False
        out = torch._scaled_mm(xq_MI, w_OI.t(), **kwargs)
    else:
        x32 = xq_MI.float() * x_scale_M1
        out = (x32 @ dequantize(w_OI, w_scale_O, torch.float32).t()).to(out_dtype)
    return out if bias_O is None else out + bias_O.to(out_dtype)


def fp8_grad_matmul(gq_MO: torch.Tensor, g_scale_M1: torch.Tensor, ws_OI: tuple[torch.Tensor, ...],
                    out_dtype: torch.dtype) -> torch.Tensor:
    """(gq * g_scale) @ [w_1; w_2; ...] -> (M, I) in out_dtype (the weights' scales are already in g_scale's
    rows; gq's columns are the weights' output rows in order)."""
    if scaled_mm_available(gq_MO.device):
        w_col_OI = _transpose(*ws_OI).t()  # _scaled_mm wants its second operand column-major
        ones_1I = torch.ones(1, ws_OI[0].shape[1], device=gq_MO.device, dtype=torch.float32)
        # fast accumulation, as in the forward: 1% of the guide's step on an H100 and the same 4-step losses to
        # 2e-6 (docs/performance.md, session 14)
        return torch._scaled_mm(gq_MO, w_col_OI, scale_a=g_scale_M1, scale_b=ones_1I, out_dtype=out_dtype,
                                use_fast_accum=True)
    return ((gq_MO.float() * g_scale_M1) @ torch.cat([w.float() for w in ws_OI])).to(out_dtype)


def dequantize(w_OI: torch.Tensor, w_scale_O: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (w_OI.to(dtype) * w_scale_O.to(dtype)[:, None])


def quantize_input(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x's rows quantised (fp8 (M', I), scales (M', 1)); M' is M padded to the fp8 matmul's multiple of 16 on a
    GPU (zero rows quantise to zeros; `fp8_linear_quantized` slices their outputs off)."""
    x_MI = x.reshape(-1, x.shape[-1])
    pad = -x_MI.shape[0] % _ROW_MULTIPLE if scaled_mm_available(x.device) else 0
    return _quantize(F.pad(x_MI, (0, 0, 0, pad)) if pad else x_MI)


def fp8_linear_quantized(xq: torch.Tensor, x_scale: torch.Tensor, x: torch.Tensor, w_OI: torch.Tensor,
                         w_scale_O: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x Wᵀ + b from `quantize_input(x)` (one quantisation can serve several weights)."""
    rows = x.numel() // x.shape[-1]
    out = fp8_matmul(xq, x_scale, w_OI, w_scale_O, x.dtype, bias)
    return out[:rows].view(*x.shape[:-1], w_OI.shape[0])


def fp8_linear_forward(x: torch.Tensor, w_OI: torch.Tensor, w_scale_O: torch.Tensor,
                       bias: torch.Tensor | None) -> torch.Tensor:
    """x Wᵀ + b with the activations quantised per row and an fp8 matmul (no autograd)."""
    return fp8_linear_quantized(*quantize_input(x), x, w_OI, w_scale_O, bias)


def fp8_linear_grad_input(grad_out: torch.Tensor, w_OI: torch.Tensor, w_scale_O: torch.Tensor,
                          fp8_backward: bool) -> torch.Tensor:
    """The input gradient of `fp8_linear_forward`: bf16 from the dequantised weight, or an fp8 matmul."""
    if not fp8_backward:
        return grad_out @ dequantize(w_OI, w_scale_O, grad_out.dtype)
    return fp8_grad_input_sum((grad_out,), (w_OI,), (w_scale_O,))


def fp8_grad_input_sum(grads_out: tuple[torch.Tensor, ...], ws_OI: tuple[torch.Tensor, ...],
                       w_scales_O: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Σ_j grad_j W_j for fp8 weights of one input axis (q, k and v) as one fp8 matmul: [g_1 s_1 | g_2 s_2 | ...]
    quantised per row times [W_1; W_2; ...], so no full-size adds and one longer contraction. One scale per row
    covers all the gradients of that row (separately quantised, each would have its own)."""
    shape = grads_out[0].shape
    gs_MO = [g.reshape(-1, g.shape[-1]) for g in grads_out]
    rows = gs_MO[0].shape[0]
    pad = -rows % _ROW_MULTIPLE if scaled_mm_available(gs_MO[0].device) else 0
    if pad:
        gs_MO = [F.pad(g, (0, 0, 0, pad)) for g in gs_MO]
    if len(gs_MO) == 1:
        gq, g_scale = _quantize_grad(gs_MO[0], w_scales_O[0])
    else:
        gq, g_scale = _quantize_grads(gs_MO, w_scales_O)
    grad_x = fp8_grad_matmul(gq, g_scale, ws_OI, grads_out[0].dtype)
    grad_x = grad_x[:rows] if pad else grad_x
    return grad_x.view(*shape[:-1], ws_OI[0].shape[1])


class _Fp8LinearFn(torch.autograd.Function):
    """y = x Wᵀ + b with W fp8 (frozen): fp8 forward, backward for x only."""

    @staticmethod
    def forward(ctx, x, w_OI, w_scale_O, bias, fp8_backward=False):
        ctx.weight = (w_OI, w_scale_O)
        ctx.fp8_backward = fp8_backward
        return fp8_linear_forward(x, w_OI, w_scale_O, bias)

    @staticmethod
    def backward(ctx, grad_out):
        w_OI, w_scale_O = ctx.weight
        return fp8_linear_grad_input(grad_out, w_OI, w_scale_O, ctx.fp8_backward), None, None, None, None


class Fp8TrainLinear(nn.Linear):
    """A frozen Linear with an fp8 weight and per-row scale (`weight_scale`), fp8 matmul forward (and input
    gradient when `fp8_backward`)."""

    fp8_backward = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Fp8LinearFn.apply(x, self.weight, self.weight_scale, self.bias, self.fp8_backward)


_CLASSES: dict[type, type] = {nn.Linear: Fp8TrainLinear}


def _fp8_class(cls: type) -> type:
    """`cls` with Fp8TrainLinear's base matmul under it (LoRALinear keeps its adapters, its base goes fp8)."""
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"Fp8Train{cls.__name__}", (cls, Fp8TrainLinear), {})
    return _CLASSES[cls]


def quantize_linears_fp8(model: nn.Module) -> int:
    """fp8 rowwise storage for every Linear under `model.blocks` (or under a single block) except LoRA
    adapters; returns the count."""
    count = 0
    root = model.blocks if hasattr(model, "blocks") else model
    for name, module in root.named_modules():
        if not isinstance(module, nn.Linear) or isinstance(module, Fp8TrainLinear):
            continue
        if name.rsplit(".", 1)[-1] in ("lora_A", "lora_B"):
            continue
        with torch.no_grad():
            values, scale_O1 = quantize_rowwise(module.weight.detach())
        module.weight = nn.Parameter(values, requires_grad=False)
        module.weight_scale = nn.Parameter(scale_O1.view(-1), requires_grad=False)
        module.__class__ = _fp8_class(type(module))
        count += 1
    return count


def set_fp8_backward(model: nn.Module, enabled: bool = True) -> int:
    """Input-gradient matmuls of every fp8 Linear under `model` in fp8 too (or back to bf16); returns the count."""
    layers = [m for m in model.modules() if isinstance(m, Fp8TrainLinear)]
    for layer in layers:
        layer.fp8_backward = enabled
    return len(layers)


def plain_linear_reference(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """The plain-path output of an fp8 layer (dequantised weight, unquantised x): for checks."""
    weight = dequantize(layer.weight, layer.weight_scale, x.dtype)
    return F.linear(x, weight, None if layer.bias is None else layer.bias.to(x.dtype))
