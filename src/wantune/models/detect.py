"""Which Wan variant a transformer state dict is, from its tensor shapes alone.

`architecture(sd)` reads dim, layers, channels, ffn and image-embedding presence from official-named shapes
(real or meta tensors); `infer_variant(sd)` lists the full-size variants those shapes fit. Wan 2.1 T2V-14B
and each Wan 2.2 T2V-A14B expert have identical shapes, so both come back unless a path hint
(`wan2.2`, `high_noise`, ...) or the folder layout narrows them. `check_variant` explains a mismatch in one
line, e.g. `wan2.2-i2v-a14b expects 36 input channels; <file> has 16 (a T2V checkpoint)`.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from wantune.errors import UserError
from wantune.models.variants import VARIANTS, WanVariant

_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_FAMILY_HINTS = (
    ("wan2.2", re.compile(r"wan[-_ ]?2[._-]?2|a14b|high[-_]?noise|low[-_]?noise|ti2v", re.I)),
    ("wan2.1", re.compile(r"wan[-_ ]?2[._-]?1|flf2v", re.I)),
)
_EXPERT_HINTS = (
    ("high_noise", re.compile(r"high[-_]?noise", re.I)),
    ("low_noise", re.compile(r"low[-_]?noise", re.I)),
)


@dataclass(frozen=True)
class Architecture:
    """What the shapes of a transformer checkpoint say about its model."""

    dim: int
    """Hidden size."""
    ffn_dim: int
    """Feed-forward hidden size."""
    num_layers: int
    """Number of transformer blocks."""
    num_heads: int | None
    """Attention heads: not stored in weights; dim / 128 when dim is a multiple of 128 (every Wan model)."""
    in_dim: int
    """Input channels (16 T2V, 36 I2V/FLF2V, 48 TI2V)."""
    out_dim: int
    """Output channels."""
    text_dim: int
    """Text-encoder width the text embedding expects."""
    freq_dim: int
    """Sinusoidal timestep width."""
    patch_size: tuple[int, int, int]
    """Patch (t, h, w)."""
    image_embedding: bool
    """Wan 2.1 I2V/FLF2V CLIP path (`img_emb.*`, `k_img`/`v_img`)."""
    image_pos_embedding: bool
    """FLF2V `img_emb.emb_pos`."""
    model_type: str
    """t2v | i2v | flf2v | ti2v."""
    families: tuple[str, ...]
    """Wan releases these shapes occur in (wan2.1, wan2.2)."""

    def to_json(self) -> dict:
        data = asdict(self)
        data["patch_size"] = list(self.patch_size)
        data["families"] = list(self.families)
        return data

    def describe(self) -> str:
        """A few words for error messages: 'a T2V checkpoint', 'a Wan 2.1 I2V checkpoint'."""
        family = f"Wan {self.families[0][3:]} " if len(self.families) == 1 else ""
        size = "" if self.dim in (1536, 3072, 5120) else f", dim {self.dim}"
        return f"a {family}{self.model_type.upper()} checkpoint{size}"


def _shape(value) -> tuple[int, ...]:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else tuple(value)


def architecture(state_dict, source: str = "state dict") -> Architecture:
    """The architecture official-named transformer shapes describe (tensors, meta tensors or shapes)."""
    shapes = {k: _shape(v) for k, v in state_dict.items()}
    needed = ("patch_embedding.weight", "head.head.weight", "text_embedding.0.weight",
              "time_embedding.0.weight", "blocks.0.ffn.0.weight")
    missing = [k for k in needed if k not in shapes]
    if missing:
        raise UserError(f"{source}: not a Wan transformer state dict (missing {', '.join(missing[:3])})")
    dim, in_dim, *patch = shapes["patch_embedding.weight"]
    patch_size = tuple(patch) if len(patch) == 3 else (1, 2, 2)
    layers = {int(m.group(1)) for k in shapes if (m := _BLOCK.match(k))}
    image_embedding = "img_emb.proj.0.weight" in shapes
    image_pos = "img_emb.emb_pos" in shapes
    if in_dim == 48:
        model_type, families = "ti2v", ("wan2.2",)
    elif image_pos:
        model_type, families = "flf2v", ("wan2.1",)
    elif in_dim == 16 and not image_embedding:
        model_type, families = "t2v", ("wan2.1", "wan2.2")
    else:
        model_type, families = "i2v", ("wan2.1",) if image_embedding else ("wan2.2",)
    return Architecture(
        dim=dim, ffn_dim=shapes["blocks.0.ffn.0.weight"][0], num_layers=max(layers) + 1,
        num_heads=dim // 128 if dim % 128 == 0 else None, in_dim=in_dim,
        out_dim=shapes["head.head.weight"][0] // math.prod(patch_size),
        text_dim=shapes["text_embedding.0.weight"][1], freq_dim=shapes["time_embedding.0.weight"][1],
        patch_size=patch_size, image_embedding=image_embedding, image_pos_embedding=image_pos,
        model_type=model_type, families=families)


def matches(variant: WanVariant, arch: Architecture) -> bool:
    """True when the variant's shapes are exactly those the architecture was read from."""
    return (variant.dim, variant.ffn_dim, variant.num_layers, variant.in_dim, variant.out_dim,
            variant.text_dim, variant.freq_dim, tuple(variant.patch_size), variant.has_image_embedding,
            variant.has_image_pos_embedding) == (
        arch.dim, arch.ffn_dim, arch.num_layers, arch.in_dim, arch.out_dim, arch.text_dim, arch.freq_dim,
        arch.patch_size, arch.image_embedding, arch.image_pos_embedding)


def family_hint(path: str | Path | None) -> str | None:
    """wan2.1 / wan2.2 as a path names it (`wan2.2_...`, `high_noise_model/`), the file name before its folders."""
    for part in reversed(Path(path).parts if path is not None else ()):
        for family, pattern in _FAMILY_HINTS:
            if pattern.search(part):
                return family
    return None


def expert_hint(path: str | Path | None) -> str | None:
    """high_noise / low_noise when a path names an A14B expert, else None."""
    for part in reversed(Path(path).parts if path is not None else ()):
        for expert, pattern in _EXPERT_HINTS:
            if pattern.search(part):
                return expert
    return None


def narrow_families(families: tuple[str, ...], hint: str | Path | None) -> tuple[str, ...]:
    """Keep the family a path hint names, when it is one of the candidates."""
    family = family_hint(hint)
    return (family,) if family in families else families


def infer_variant(state_dict, hint: str | Path | None = None) -> list[str]:
    """Full-size variant names whose shapes fit (official names); narrowed by a path hint when ambiguous."""
    from wantune.models.checkpoint import to_official_names

    arch = architecture(to_official_names(state_dict))
    candidates = [name for name, variant in VARIANTS.items() if matches(variant, arch)]
    if len(candidates) > 1:
        family = family_hint(hint)
        narrowed = [name for name in candidates if VARIANTS[name].family == family]
        candidates = narrowed or candidates
    return candidates


def check_variant(variant: WanVariant, arch: Architecture, source: str) -> None:
    """Raise one UserError line naming the first architectural difference between variant and file."""
    looks = arch.describe()
    if variant.in_dim != arch.in_dim:
        raise UserError(f"{variant.name} expects {variant.in_dim} input channels; {source} has {arch.in_dim} "
                        f"({looks})")
    if variant.has_image_embedding and not arch.image_embedding:
        raise UserError(f"{variant.name} expects CLIP image-embedding weights (img_emb.*, k_img/v_img); "
                        f"{source} has none ({looks})")
    if arch.image_embedding and not variant.has_image_embedding:
        raise UserError(f"{variant.name} has no CLIP image embedding; {source} has img_emb.* ({looks})")
    if variant.has_image_pos_embedding != arch.image_pos_embedding:
        have = "has" if arch.image_pos_embedding else "lacks"
        raise UserError(f"{variant.name} and {source} disagree on img_emb.emb_pos ({source} {have} it: {looks})")
    for label, want, got in (("dim", variant.dim, arch.dim), ("layers", variant.num_layers, arch.num_layers),
                             ("ffn_dim", variant.ffn_dim, arch.ffn_dim),
                             ("output channels", variant.out_dim, arch.out_dim),
                             ("text_dim", variant.text_dim, arch.text_dim),
                             ("freq_dim", variant.freq_dim, arch.freq_dim),
                             ("patch size", tuple(variant.patch_size), arch.patch_size)):
        if want != got:
            raise UserError(f"{variant.name} expects {label} {want}; {source} has {got} ({looks})")
