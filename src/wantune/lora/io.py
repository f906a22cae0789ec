"""LoRA files: read any supported layout into `LoraWeights`, write the ComfyUI-native layout with metadata.

Metadata written (all strings): `wantune.base_variant`, `wantune.rank`, `wantune.alpha` (as trained; the
file's B already carries alpha/rank), `wantune.targets` (JSON list), `wantune.expert` (high|low|none),
`wantune.format`, and every caller-given key (non-strings JSON-encoded). An A14B run writes one file per expert:
call `save_lora(path, network, metadata, expert="high")` once for each.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from wantune.errors import UserError
from wantune.lora.formats import FORMATS, LoraWeights, from_canonical, to_canonical
from wantune.lora.network import LoRANetwork

EXPERTS = ("high", "low", "none")


def load_lora(path: str | os.PathLike) -> LoraWeights:
    """A LoRA file (comfyui, kohya/musubi or diffusers layout) in canonical form."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such LoRA file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            state_dict = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable safetensors LoRA file ({str(exc).splitlines()[0]})") from None
    modules, fmt = to_canonical(state_dict, str(path))
    return LoraWeights(modules, metadata, fmt, str(path))


def save_lora(path: str | os.PathLike, network: LoRANetwork | LoraWeights, metadata: dict | None = None, *,
              expert: str = "none", fmt: str = "comfyui", dtype: torch.dtype | None = None) -> Path:
    """Write a trained network (or canonical weights) to `path` atomically; returns the path."""
    if expert not in EXPERTS:
        raise UserError(f"LoRA expert {expert!r} must be one of {', '.join(EXPERTS)}")
    if isinstance(network, LoRANetwork):
        modules = network.lora_weights()
        meta = _network_metadata(network)
    else:
        modules, meta = network.modules, dict(network.metadata)
    meta["wantune.expert"] = expert
    for key, value in (metadata or {}).items():
        meta[str(key)] = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    if dtype is not None:
        modules = {p: (a.to(dtype), b.to(dtype)) for p, (a, b) in modules.items()}
    return write_lora(path, LoraWeights(modules, meta, fmt), fmt)


def write_lora(path: str | os.PathLike, weights: LoraWeights, fmt: str = "comfyui") -> Path:
    """Write canonical weights in layout `fmt` (tmp file + os.replace, so a crash never leaves half a file)."""
    from safetensors.torch import save_file

    if fmt not in FORMATS:
        raise UserError(f"unknown LoRA format {fmt!r}; choose from {', '.join(FORMATS)}")
    path = Path(path)
    if path.suffix != ".safetensors":
        raise UserError(f"{path}: LoRA files are written as .safetensors; name the output *.safetensors")
    state_dict = {k: v.detach().cpu() for k, v in from_canonical(weights.modules, fmt).items()}
    metadata = {str(k): str(v) for k, v in weights.metadata.items()}
    metadata["wantune.format"] = fmt
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file(state_dict, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _network_metadata(network: LoRANetwork) -> dict[str, str]:
    variant = getattr(network.model, "variant", None)
    return {
        "wantune.base_variant": getattr(variant, "name", "unknown"),
        "wantune.rank": str(network.rank),
        "wantune.alpha": f"{network.alpha:g}",
        "wantune.targets": json.dumps(network.targets),
        "ss_network_dim": str(network.rank),
        "ss_network_alpha": str(network.rank),
        "ss_base_model_version": getattr(variant, "name", "wan"),
    }
