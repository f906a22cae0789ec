"""`--fp8` inference: block Linear weights stored in float8_e4m3fn, upcast to the input dtype per matmul.

Halves the transformer's weight memory against bf16 (the blocks' Linears hold nearly all parameters); the
embeddings, norms, modulation and head stay in their dtype. Apply it after `attach_loras`: a LoRA-wrapped
Linear keeps its adapters (in bf16/fp32) and only its base weight becomes fp8.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FP8 = torch.float8_e4m3fn


class Fp8Linear(nn.Linear):
    """A Linear whose weight is stored in fp8 and upcast to the input's dtype for each matmul."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, weight, bias)


_CLASSES: dict[type, type] = {nn.Linear: Fp8Linear}


def _fp8_class(cls: type) -> type:
    """`cls` with Fp8Linear's matmul under it (a LoRA wrapper keeps its forward, its base matmul upcasts)."""
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"Fp8{cls.__name__}", (cls, Fp8Linear), {})
    return _CLASSES[cls]


def quantize_blocks_fp8(model: nn.Module) -> int:
    """Store every Linear weight under `model.blocks` in fp8 (in place); returns the number of Linears."""
    limit = torch.finfo(FP8).max
    count = 0
    for name, module in model.blocks.named_modules():
        if not isinstance(module, nn.Linear) or isinstance(module, Fp8Linear):
            continue
        if name.rsplit(".", 1)[-1] in ("lora_A", "lora_B"):  # adapters keep their dtype
            continue
        with torch.no_grad():
            fp8 = module.weight.detach().float().clamp(-limit, limit).to(FP8)
        module.weight = nn.Parameter(fp8, requires_grad=False)
        module.__class__ = _fp8_class(type(module))
        count += 1
    return count
