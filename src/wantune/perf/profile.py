"""Where a training step's time goes: one profiled step, its kernels grouped into categories.

`wantune bench speed --profile` adds `profile` to each of our runs: the device time of every kernel of one step
(torch.profiler, after the timed steps), summed by category (`CATEGORIES`), with the top kernels by time and the
top aten operators by the device time of their own kernels, with input shapes (`top_ops`). On a CPU run the
same grouping applies to the aten operators and their self time (the CPU test's path).
"""

from __future__ import annotations

import re
from collections import defaultdict

import torch

CATEGORIES = (
    ("attention_backward", r"(sdpa|flash|fmha|attention|attn).*(bprop|backward|bwd|dq|dkdv)|fmha_cutlassB"),
    ("attention_forward", r"sdpa|flash|fmha|attention|attn"),
    ("fused_compiled", r"^triton_"),
    ("copy", r"memcpy|memset|copy|aten::(to|_to_copy|copy_|contiguous|clone|cat)$|CatArray"),
    ("matmul_fp8", r"scaled_mm|nvjet\w*_qq|ovscale|gemm\w*(e4m3|e5m2)|f8f8"),
    ("matmul", r"gemm|nvjet|cutlass|xmma|cublas|aten::(mm|addmm|bmm|matmul|linear)$"),
    ("optimizer", r"multi_tensor|adam|foreach"),
    ("reduction", r"reduce|norm|softmax|aten::(sum|mean|var|amax)$"),
    ("elementwise", r"elementwise|vectorized|unrolled|aten::(add|mul|sub|div|pow|rsqrt|silu|gelu|tanh|exp|neg)_?$"),
)
"""(name, regex) in priority order: a kernel belongs to the first category whose regex matches its name
(case-insensitive); "other" otherwise."""

_COMPILED = [(name, re.compile(pattern, re.IGNORECASE)) for name, pattern in CATEGORIES]


def category(kernel: str) -> str:
    """The category of a kernel (or, on the CPU, an aten operator) name."""
    for name, pattern in _COMPILED:
        if pattern.search(kernel):
            return name
    return "other"


def breakdown(times: dict[str, tuple[int, float]], top: int = 40) -> dict:
    """{kernel: (calls, seconds)} -> total seconds, seconds and share per category, the `top` kernels.
    Ranges that only annotate kernels on the device timeline (`## Call CompiledFxGraph ... ##`, one per
    compiled-graph call, spanning its Triton kernels) are left out: their time is the kernels' time again."""
    times = {name: value for name, value in times.items() if not name.startswith("## ")}
    total = sum(s for _, s in times.values())
    cats: dict[str, float] = defaultdict(float)
    for kernel, (_, seconds) in times.items():
        cats[category(kernel)] += seconds
    ranked = sorted(times.items(), key=lambda kv: -kv[1][1])[:top]
    return {"kernel_seconds": round(total, 6),
            "categories": {k: {"seconds": round(v, 6), "share": round(v / total, 4) if total else 0.0}
                           for k, v in sorted(cats.items(), key=lambda kv: -kv[1])},
            "top_kernels": [{"name": k[:160], "category": category(k), "calls": n, "seconds": round(s, 6)}
                            for k, (n, s) in ranked]}


def profile_step(step, device: torch.device, top: int = 40) -> dict:
    """Profile one call of `step` (already warmed up) and return `breakdown` of its kernels: CUDA kernels on a
    GPU, aten operators (self time, so nothing is counted twice) on the CPU."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    if cuda:
        torch.cuda.synchronize(device)
    with profile(activities=activities, record_shapes=True) as prof:
        step()
        if cuda:
            torch.cuda.synchronize(device)
    times: dict[str, tuple[int, float]] = {}
    ops = top_ops(prof, cuda, top)
    for event in prof.key_averages():
        if cuda:
            seconds = getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0)) / 1e6
            is_kernel = event.device_type == torch.autograd.DeviceType.CUDA
        else:
            seconds, is_kernel = event.self_cpu_time_total / 1e6, event.key.startswith("aten::")
        if is_kernel and seconds > 0:
            calls, total = times.get(event.key, (0, 0.0))
            times[event.key] = (calls + event.count, total + seconds)
    return {**breakdown(times, top), "top_ops": ops}


def top_ops(prof, cuda: bool, top: int = 40) -> list[dict]:
    """The aten operators whose own kernels took the most device time (CPU: self time), by operator and input
    shapes: which tensor a kernel of `top_kernels` ran on (say a float32 multiply outside the compiled kernels)."""
    rows = []
    for event in prof.key_averages(group_by_input_shape=True):
        seconds = (getattr(event, "self_device_time_total", 0) if cuda else event.self_cpu_time_total) / 1e6
        if event.device_type == torch.autograd.DeviceType.CPU and event.key.startswith("aten::") and seconds > 0:
            rows.append({"op": event.key, "shapes": str(event.input_shapes)[:160], "calls": event.count,
                         "seconds": round(seconds, 6)})
    return sorted(rows, key=lambda row: -row["seconds"])[:top]
