"""fp8 checkpoints: plain fp8_e4m3fn files and ComfyUI "fp8_scaled" files (fp8 weight + per-tensor scale).

A scaled file stores `<module>.weight` in fp8 and `<module>.scale_weight` (float32, a scalar or one value per
output row); the real weight is `weight.float() * scale`. Newer files name the scale `<module>.weight_scale`.
Marker keys (`scaled_fp8`) and input scales (`scale_input`, `input_scale`) carry no weights and are dropped.
"""

from __future__ import annotations

import torch

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
SCALE_SUFFIXES = (".scale_weight", ".weight_scale")
DROPPED_SUFFIXES = (".scale_input", ".input_scale", ".comfy_quant")
MARKER_KEYS = ("scaled_fp8",)


def is_fp8(tensor: torch.Tensor) -> bool:
    return tensor.dtype in FP8_DTYPES


def is_auxiliary(key: str) -> bool:
    """Scale, marker and input-scale keys: not weights of the model."""
    return key in MARKER_KEYS or key.endswith(SCALE_SUFFIXES + DROPPED_SUFFIXES)


def scale_key(weight_key: str, keys) -> str | None:
    """The stored scale key of `<module>.weight`, or None if the file has none for it."""
    if not weight_key.endswith(".weight"):
        return None
    module = weight_key.removesuffix(".weight")
    for suffix in SCALE_SUFFIXES:
        if module + suffix in keys:
            return module + suffix
    return None


def is_scaled(keys) -> bool:
    """True for a ComfyUI fp8_scaled key set."""
    return any(k.endswith(SCALE_SUFFIXES) for k in keys) or any(k in MARKER_KEYS for k in keys)


def dequantize(weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """weight * scale in float32, cast to dtype; a per-row scale broadcasts over the input dimensions."""
    scale = scale.to(torch.float32)
    if scale.numel() > 1:
        scale = scale.reshape(-1, *([1] * (weight.ndim - 1)))
    return (weight.to(torch.float32) * scale).to(dtype)


def quantize_scaled(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8_e4m3fn weight, float32 scalar scale) as ComfyUI's fp8_scaled files store them."""
    max_value = torch.finfo(torch.float8_e4m3fn).max
    scale = weight.abs().max().to(torch.float32).clamp(min=1e-12) / max_value
    quantised = (weight.to(torch.float32) / scale).clamp(-max_value, max_value).to(torch.float8_e4m3fn)
    return quantised, scale.reshape(())
