"""Use finished LoRAs: stack several on a model with strengths, or fold them into the base weights.

Stacking adds each LoRA as an extra frozen low-rank path (y = W x + sum_i s_i B_i A_i x), so strengths can be
changed or the LoRAs detached without touching the base. Merging computes W + s B A in float32 and casts back
to the weight's dtype. Both check every module's shape first and change nothing on a mismatch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from wantune.errors import UserError
from wantune.lora.formats import LoraWeights
from wantune.lora.network import TRAIN_ADAPTER, LoRAAdapter, LoRALinear, drop_adapter, wrap_linear

STACK_PREFIX = "stack"


def check_fits(weights: LoraWeights, shapes: dict[str, tuple[int, ...]]) -> None:
    """One-line error unless every LoRA module is a Linear weight of the model with matching in/out sizes."""
    for path, (a, b) in weights.modules.items():
        shape = shapes.get(f"{path}.weight")
        if shape is None:
            raise UserError(f"{weights.source}: {path} is not a Linear of this model; "
                            "the LoRA was made for another Wan variant")
        if tuple(shape) != (b.shape[0], a.shape[1]):
            raise UserError(f"{weights.source}: {path} is {a.shape[1]}->{b.shape[0]} in the LoRA but "
                            f"{shape[1]}->{shape[0]} in the model; the LoRA was made for another model size")


def linear_weight_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """`<path>.weight` -> (out, in) of every Linear in the model."""
    return {f"{name}.weight": (m.out_features, m.in_features)
            for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def attach_loras(model: nn.Module, loras: Iterable[tuple[LoraWeights, float]]) -> None:
    """Add each LoRA as a frozen low-rank path scaled by its strength (after any already attached)."""
    loras = list(loras)
    shapes = linear_weight_shapes(model)
    for weights, _ in loras:
        check_fits(weights, shapes)
        outside = [p for p in weights.modules if not p.startswith("blocks.")]
        if outside:
            raise UserError(f"{weights.source}: targets {outside[0]} outside the transformer blocks, which only "
                            "merging supports; bake it in with `wantune lora merge`")
    start = _next_stack_index(model)
    for i, (weights, strength) in enumerate(loras, start=start):
        for path, (a, b) in weights.modules.items():
            linear = model.get_submodule(path)
            wrapper = wrap_linear(model, path, linear)
            weight = wrapper.weight
            dtype = torch.float32 if weight.dtype not in (torch.float32, torch.bfloat16, torch.float16) \
                else weight.dtype
            adapter = LoRAAdapter(a.shape[1], b.shape[0], a.shape[0], float(strength),
                                  device=weight.device, dtype=dtype)
            with torch.no_grad():
                adapter.lora_A.weight.copy_(a)
                adapter.lora_B.weight.copy_(b)
            adapter.requires_grad_(False)
            wrapper.adapters[f"{STACK_PREFIX}{i}"] = adapter


def detach_loras(model: nn.Module) -> None:
    """Remove every LoRA added by `attach_loras` (a training LoRA from `apply_lora` stays)."""
    for path, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            for name in [n for n in module.adapters if n != TRAIN_ADAPTER]:
                drop_adapter(model, path, name)


def merge_lora(model: nn.Module, weights: LoraWeights, strength: float = 1.0) -> None:
    """Fold `strength * B @ A` into the model's base weights (float32 maths, original dtype kept)."""
    check_fits(weights, linear_weight_shapes(model))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for path, (a, b) in weights.modules.items():
            weight = params[f"{path}.weight"]
            weight.copy_(_merged(weight, a, b, strength))


def merge_into_state_dict(state_dict: dict[str, torch.Tensor], weights: LoraWeights,
                          strength: float = 1.0) -> None:
    """Fold a LoRA into an official-named state dict in place (the `lora merge` command's path)."""
    check_fits(weights, {k: tuple(v.shape) for k, v in state_dict.items() if v.ndim == 2})
    for path, (a, b) in weights.modules.items():
        key = f"{path}.weight"
        state_dict[key] = _merged(state_dict[key], a, b, strength)


def _merged(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, strength: float) -> torch.Tensor:
    delta = b.to(weight.device, torch.float32) @ a.to(weight.device, torch.float32)
    return (weight.float() + strength * delta).to(weight.dtype)


def _next_stack_index(model: nn.Module) -> int:
    used = [int(name[len(STACK_PREFIX):]) for m in model.modules() if isinstance(m, LoRALinear)
            for name in m.adapters if name.startswith(STACK_PREFIX)]
    return max(used, default=-1) + 1


def read_base_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Official-named state dict of one base transformer, in the file's dtype (fp8_scaled is dequantised)."""
    from wantune.models.checkpoint import read_state_dict, transformer_location
    from wantune.models.formats import WeightFiles

    weights = WeightFiles.open(transformer_location(path))
    kind, naming = weights.kind_and_naming
    if kind != "transformer":
        raise UserError(f"{path}: holds {kind} weights ({naming} names), not a Wan transformer; pass the base model")
    state_dict = read_state_dict(weights)
    weights.close()
    return state_dict


def write_checkpoint(path: str, state_dict: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Save an official-layout safetensors checkpoint atomically (tmp file + os.replace)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise UserError(f"{path}: merged checkpoints are written as .safetensors; name the output *.safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file({k: v.contiguous() for k, v in state_dict.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
