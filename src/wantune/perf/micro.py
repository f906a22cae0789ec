"""Micro-benchmarks of the training step's own shapes: matmul, fp8 matmul, LoRA and attention rates.

The rates price the step's useful FLOPs (`flops.roofline_seconds`) and pick the attention backend: every SDPA
backend the GPU runs is timed forward and forward + backward on the step's self-attention shape, and the
fastest is used for the step. Timings are medians of CUDA-event-timed repeats after warm-up, on random data.

Legend: M rows (batch x tokens), D model dim, Fd FFN dim, N heads, Dh head dim, L tokens.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from wantune.models.variants import WanVariant
from wantune.perf.flops import Rates
from wantune.perf.fp8 import fp8_matmul, quantize_rowwise

BACKENDS = ("cudnn", "flash", "efficient", "math")


def sdpa_backend(name: str):
    from torch.nn.attention import SDPBackend
    return {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[name]


def backend_context(name: str | None):
    """SDPA restricted to backend `name` first, with the other fused backends as fallbacks (e.g. for a
    cross-attention shape the first one rejects); `None`/"default": PyTorch's own choice."""
    import contextlib

    from torch.nn.attention import sdpa_kernel
    if name in (None, "default"):
        return contextlib.nullcontext()
    order = [sdpa_backend(name)] + [sdpa_backend(b) for b in ("cudnn", "flash", "efficient") if b != name]
    try:
        return sdpa_kernel(order, set_priority=True)
    except TypeError:  # older PyTorch: no priority order
        return sdpa_kernel([sdpa_backend(name)])


def median_seconds(fn, device: torch.device, repeats: int = 5, warmup: int = 2) -> float:
    """Median wall time of fn() over `repeats` runs (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _matmul_shapes(variant: WanVariant, rows: int) -> list[tuple[int, int, int, int]]:
    """(count per block, M, K, N) of the block matmuls over the video tokens."""
    d, fd = variant.dim, variant.ffn_dim
    return [(6, rows, d, d), (1, rows, d, fd), (1, rows, fd, d)]


def matmul_rates(variant: WanVariant, rows: int, device: torch.device, fp8: bool) -> dict:
    """FLOP/s of forward (x Wᵀ; fp8 rowwise if `fp8`) and backward (g W) matmuls, flop-weighted over a block."""
    totals = {"fwd": [0.0, 0.0], "bwd": [0.0, 0.0]}
    for count, m, k, n in _matmul_shapes(variant, rows):
        x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
        w = torch.randn(n, k, device=device, dtype=torch.bfloat16) * k**-0.5
        g = torch.randn(m, n, device=device, dtype=torch.bfloat16)
        if fp8:
            xq, xs = quantize_rowwise(x[: m - m % 16])
            wq, ws = quantize_rowwise(w)
            fwd = median_seconds(lambda: fp8_matmul(xq, xs, wq, ws.view(-1), torch.bfloat16), device)
        else:
            fwd = median_seconds(lambda: F.linear(x, w), device)
        bwd = median_seconds(lambda: g @ w, device)
        flops = 2.0 * m * k * n * count
        for key, seconds in (("fwd", fwd), ("bwd", bwd)):
            totals[key][0] += flops
            totals[key][1] += seconds * count
        del x, w, g
    return {key: flops / seconds for key, (flops, seconds) in totals.items()}


def lora_rate(variant: WanVariant, rows: int, rank: int, device: torch.device) -> float:
    x = torch.randn(rows, variant.dim, device=device, dtype=torch.bfloat16)
    a = torch.randn(rank, variant.dim, device=device, dtype=torch.bfloat16)
    b = torch.randn(variant.dim, rank, device=device, dtype=torch.bfloat16)
    seconds = median_seconds(lambda: F.linear(F.linear(x, a), b), device)
    return 4.0 * rows * variant.dim * rank / seconds


def attention_rates(variant: WanVariant, batch: int, tokens: int, device: torch.device,
                    backends=BACKENDS) -> dict[str, dict]:
    """Backend -> {fwd, bwd} FLOP/s on the self-attention shape (B, L, N, Dh), as the model lays it out."""
    from torch.nn.attention import sdpa_kernel

    heads, head_dim = variant.num_heads, variant.head_dim
    shape = (batch, tokens, heads, head_dim)
    q, k, v = (torch.randn(shape, device=device, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    grad = torch.randn(shape, device=device, dtype=torch.bfloat16).transpose(1, 2)
    fwd_flops = 4.0 * batch * tokens * tokens * variant.dim
    out = {}
    for name in backends:
        if name == "math" and device.type == "cuda" and tokens > 8192:
            continue  # materialises L x L scores: far slower and larger than any fused backend
        try:
            with sdpa_kernel([sdpa_backend(name)]):
                def fwd():
                    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))

                def fwd_bwd():
                    fwd().backward(grad)

                t_fwd = median_seconds(lambda: fwd().detach(), device, repeats=3)
                t_all = median_seconds(fwd_bwd, device, repeats=3)
        except RuntimeError as exc:
            out[name] = {"error": str(exc).splitlines()[0][:160]}
            continue
        out[name] = {"fwd": fwd_flops / t_fwd, "bwd": 2 * fwd_flops / max(t_all - t_fwd, 1e-9),
                     "fwd_bwd_s": t_all}
    return out


def best_backend(attention: dict[str, dict]) -> str | None:
    timed = {name: r["fwd_bwd_s"] for name, r in attention.items() if "fwd_bwd_s" in r}
    return min(timed, key=timed.get) if timed else None


def measure_rates(variant: WanVariant, batch: int, tokens: int, rank: int, device: torch.device,
                  fp8: bool) -> tuple[Rates, dict]:
    """The step's rates (fp8 forward matmuls if `fp8`) and the details: per-backend attention rates."""
    rows = batch * tokens
    mm = matmul_rates(variant, rows, device, fp8=False)
    mm8 = matmul_rates(variant, rows, device, fp8=True) if fp8 else None
    attention = attention_rates(variant, batch, tokens, device)
    best = best_backend(attention)
    rates = Rates(matmul_fwd=(mm8 or mm)["fwd"], matmul_bwd=mm["bwd"],
                  attn_fwd=attention[best]["fwd"], attn_bwd=attention[best]["bwd"],
                  lora=lora_rate(variant, rows, rank, device))
    details = {"matmul_bf16": mm, "matmul_fp8": mm8, "attention": attention, "best_attention": best}
    return rates, details
