"""LoRA key layouts <-> the canonical form (official module path -> (A, B with the scale folded in)).

Layouts (../shared/WAN_FACTS.md, "LoRA files the ecosystem reads"):
- comfyui (written by default): `diffusion_model.blocks.0.self_attn.q.lora_A.weight` / `.lora_B.weight`,
  no `.alpha`. Read also without the prefix, with `lora_down`/`lora_up`, and with `.alpha`.
- kohya (musubi-tuner): `lora_unet_blocks_0_self_attn_q.lora_down.weight` / `.lora_up.weight` + `.alpha`
  (scale alpha/rank; no alpha means scale 1).
- diffusers: `transformer.blocks.0.attn1.to_q.lora_A.weight` / `.lora_B.weight` (peft; optional `.alpha`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from wantune.errors import UserError
from wantune.lora.network import BLOCK_TARGETS

FORMATS = ("comfyui", "kohya", "diffusers")

OTHER_LINEARS = (
    "text_embedding.0", "text_embedding.2", "time_embedding.0", "time_embedding.2", "time_projection.1",
    "head.head", "img_emb.proj.1", "img_emb.proj.3",
)
"""Non-block Linear layers that LoRAs from other trainers sometimes target (read and applied, never written)."""

_KEY = re.compile(r"^(?P<module>.+)\.(?:(?P<part>lora_A|lora_B|lora_down|lora_up)\.weight|(?P<alpha>alpha))$")
_UP = {"lora_A": "A", "lora_down": "A", "lora_B": "B", "lora_up": "B"}
_KOHYA_SUFFIX = {name.replace(".", "_"): name for name in BLOCK_TARGETS}
_KOHYA_OTHER = {name.replace(".", "_"): name for name in OTHER_LINEARS}
_KOHYA_BLOCK = re.compile(r"^blocks_(\d+)_(.+)$")
_DIFFUSERS_PREFIXES = ("transformer.", "base_model.model.")
_DIFFUSERS_PARTS = (".attn1.", ".attn2.", ".ffn.net.", "condition_embedder.", "proj_out.")


@dataclass
class LoraWeights:
    """A LoRA in canonical form: what any layout reads into and writes from."""

    modules: dict[str, tuple[torch.Tensor, torch.Tensor]]
    """Official module path (`blocks.0.self_attn.q`) -> (A (r, in), B (out, r) with alpha/rank folded in)."""
    metadata: dict[str, str] = field(default_factory=dict)
    """The file's safetensors metadata (all strings)."""
    format: str = "comfyui"
    """The layout it was read from: comfyui, kohya or diffusers."""
    source: str = "<memory>"
    """The file it was read from (for error messages)."""

    @property
    def ranks(self) -> list[int]:
        return sorted({a.shape[0] for a, _ in self.modules.values()})

    @property
    def blocks(self) -> list[int]:
        return sorted({int(p.split(".")[1]) for p in self.modules if p.startswith("blocks.")})

    @property
    def targets(self) -> list[str]:
        """Block-relative names targeted (`self_attn.q`, ...), then any non-block Linear paths."""
        found = {p.split(".", 2)[2] if p.startswith("blocks.") else p for p in self.modules}
        order = list(BLOCK_TARGETS) + list(OTHER_LINEARS)
        return sorted(found, key=lambda n: order.index(n) if n in order else len(order))


def detect_format(keys: list[str], source: str) -> str:
    """comfyui, kohya or diffusers, from the key names."""
    if not keys:
        raise UserError(f"{source}: holds no tensors; not a LoRA file")
    if any(k.startswith("lora_unet_") for k in keys):
        return "kohya"
    if any(k.startswith(_DIFFUSERS_PREFIXES) or any(part in k for part in _DIFFUSERS_PARTS) for k in keys):
        return "diffusers"
    return "comfyui"


def to_canonical(state_dict: dict[str, torch.Tensor], source: str) -> tuple[dict, str]:
    """(canonical modules, detected format) from a LoRA state dict of any supported layout."""
    fmt = detect_format(list(state_dict), source)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state_dict.items():
        match = _KEY.match(key)
        if not match:
            raise UserError(f"{source}: key {key!r} is not a LoRA weight (lora_A/lora_B/lora_down/lora_up/alpha); "
                            "only plain LoRA files are supported")
        path = _module_path(match.group("module"), fmt, key, source)
        part = "alpha" if match.group("alpha") else _UP[match.group("part")]
        parts.setdefault(path, {})[part] = tensor
    return {path: _fold(path, p, source) for path, p in parts.items()}, fmt


def from_canonical(modules: dict[str, tuple[torch.Tensor, torch.Tensor]], fmt: str) -> dict[str, torch.Tensor]:
    """A state dict in layout `fmt` (kohya writes `.alpha` = rank so that its scale is 1)."""
    out: dict[str, torch.Tensor] = {}
    for path, (a, b) in modules.items():
        if fmt == "comfyui":
            out[f"diffusion_model.{path}.lora_A.weight"] = a
            out[f"diffusion_model.{path}.lora_B.weight"] = b
        elif fmt == "kohya":
            name = "lora_unet_" + path.replace(".", "_")
            out[f"{name}.lora_down.weight"] = a
            out[f"{name}.lora_up.weight"] = b
            out[f"{name}.alpha"] = torch.tensor(float(a.shape[0]))
        elif fmt == "diffusers":
            name = "transformer." + _official_to_diffusers(path)
            out[f"{name}.lora_A.weight"] = a
            out[f"{name}.lora_B.weight"] = b
        else:
            raise UserError(f"unknown LoRA format {fmt!r}; choose from {', '.join(FORMATS)}")
    return {k: v.contiguous() for k, v in out.items()}


def is_known_linear(path: str) -> bool:
    """Whether `path` names a Linear of the official Wan model that a LoRA may hold."""
    match = re.match(r"^blocks\.\d+\.(.+)$", path)
    return (match.group(1) in BLOCK_TARGETS) if match else path in OTHER_LINEARS


def _module_path(name: str, fmt: str, key: str, source: str) -> str:
    """The official module path a key's module part names, or a one-line error."""
    if fmt == "kohya":
        path = _kohya_to_official(name.removeprefix("lora_unet_"))
    elif fmt == "diffusers":
        path = _diffusers_to_official(name.removeprefix("base_model.model.").removeprefix("transformer."))
    else:
        path = name.removeprefix("model.").removeprefix("diffusion_model.")
    if path is None or not is_known_linear(path):
        raise UserError(f"{source}: key {key!r} names no Wan Linear layer this loader knows "
                        f"(read as {fmt} layout); is it a Wan LoRA?")
    return path


def _kohya_to_official(name: str) -> str | None:
    match = _KOHYA_BLOCK.match(name)
    if match:
        suffix = _KOHYA_SUFFIX.get(match.group(2))
        return f"blocks.{match.group(1)}.{suffix}" if suffix else None
    return _KOHYA_OTHER.get(name)


def _fold(path: str, parts: dict[str, torch.Tensor], source: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B * alpha/rank) of one module, checking that its pieces fit together."""
    if "A" not in parts or "B" not in parts:
        missing = "lora_A/lora_down" if "A" not in parts else "lora_B/lora_up"
        raise UserError(f"{source}: {path} has no {missing} weight; the file is incomplete")
    a, b = parts["A"], parts["B"]
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
        raise UserError(f"{source}: {path} has A {tuple(a.shape)} and B {tuple(b.shape)}; expected A (r, in) "
                        "and B (out, r) with the same r")
    if "alpha" in parts:
        scale = float(parts["alpha"].float().item()) / a.shape[0]
        if scale != 1.0:
            b = b.float() * scale
    return a, b


def _official_to_diffusers(path: str) -> str:
    from wantune.models.diffusers_names import official_module_to_diffusers

    return official_module_to_diffusers(path)


def _diffusers_to_official(name: str) -> str | None:
    from wantune.models.diffusers_names import diffusers_module_to_official

    try:
        return diffusers_module_to_official(name)
    except (KeyError, ValueError, UserError):
        return None
