"""Wan model variants: architecture and inference defaults (../shared/WAN_FACTS.md).

`get_variant(name, **overrides)` returns a frozen `WanVariant`; overrides shrink a variant for tests
(`get_variant("wan2.1-t2v-1.3b", **TINY)` matches the fixtures' tiny config).
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Literal

from wantune.errors import UserError

ModelType = Literal["t2v", "i2v", "flf2v", "ti2v"]

NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
    "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)


@dataclass(frozen=True)
class WanVariant:
    """One Wan model: its architecture (what) and its official inference defaults."""

    name: str
    family: Literal["wan2.1", "wan2.2"]
    model_type: ModelType
    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    in_dim: int
    out_dim: int
    vae: Literal["2.1", "2.2"]
    shift: float
    steps: int
    guidance: float
    frames: int
    fps: int
    height: int
    width: int
    guidance_low: float | None = None
    """A14B: guidance of the low-noise expert (`guidance` is the high-noise one)."""
    boundary: float | None = None
    """A14B: the high-noise expert runs while the shifted timestep t >= boundary * 1000."""
    text_dim: int = 4096
    freq_dim: int = 256
    text_len: int = 512
    patch_size: tuple[int, int, int] = (1, 2, 2)
    qk_norm: bool = True
    cross_attn_norm: bool = True
    eps: float = 1e-6
    negative_prompt: str = NEGATIVE_PROMPT

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def has_image_embedding(self) -> bool:
        """Wan 2.1 I2V/FLF2V: CLIP features through `img_emb`, k_img/v_img in cross-attention."""
        return self.family == "wan2.1" and self.model_type in ("i2v", "flf2v")

    @property
    def has_image_pos_embedding(self) -> bool:
        """FLF2V: `img_emb.emb_pos` for the two images' CLIP tokens."""
        return self.family == "wan2.1" and self.model_type == "flf2v"

    @property
    def is_expert_pair(self) -> bool:
        return self.boundary is not None

    @property
    def needs_image(self) -> bool:
        return self.model_type in ("i2v", "flf2v")

    @property
    def vae_stride(self) -> tuple[int, int, int]:
        return (4, 16, 16) if self.vae == "2.2" else (4, 8, 8)

    @property
    def latent_channels(self) -> int:
        return 48 if self.vae == "2.2" else 16

    @property
    def pixel_multiple(self) -> int:
        """Pixel sizes must be a multiple of this (VAE stride x patch)."""
        return self.vae_stride[1] * self.patch_size[1]

    def replace(self, **changes) -> WanVariant:
        return dataclasses.replace(self, **changes)


_COMMON_14B = dict(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, frames=81, fps=16)

VARIANTS: dict[str, WanVariant] = {
    v.name: v
    for v in [
        WanVariant("wan2.1-t2v-1.3b", "wan2.1", "t2v", dim=1536, ffn_dim=8960, num_heads=12, num_layers=30,
                   in_dim=16, out_dim=16, vae="2.1", shift=5.0, steps=50, guidance=5.0, frames=81, fps=16,
                   height=480, width=832),
        WanVariant("wan2.1-t2v-14b", "wan2.1", "t2v", in_dim=16, out_dim=16, vae="2.1", shift=5.0, steps=50,
                   guidance=5.0, height=720, width=1280, **_COMMON_14B),
        WanVariant("wan2.1-i2v-14b", "wan2.1", "i2v", in_dim=36, out_dim=16, vae="2.1", shift=5.0, steps=40,
                   guidance=5.0, height=480, width=832, negative_prompt="镜头晃动，" + NEGATIVE_PROMPT,
                   **_COMMON_14B),
        WanVariant("wan2.1-flf2v-14b", "wan2.1", "flf2v", in_dim=36, out_dim=16, vae="2.1", shift=16.0,
                   steps=50, guidance=5.0, height=720, width=1280,
                   negative_prompt="镜头切换，镜头晃动，" + NEGATIVE_PROMPT, **_COMMON_14B),
        WanVariant("wan2.2-t2v-a14b", "wan2.2", "t2v", in_dim=16, out_dim=16, vae="2.1", shift=12.0, steps=40,
                   guidance=4.0, guidance_low=3.0, boundary=0.875, height=720, width=1280, **_COMMON_14B),
        WanVariant("wan2.2-i2v-a14b", "wan2.2", "i2v", in_dim=36, out_dim=16, vae="2.1", shift=5.0, steps=40,
                   guidance=3.5, guidance_low=3.5, boundary=0.900, height=720, width=1280, **_COMMON_14B),
        WanVariant("wan2.2-ti2v-5b", "wan2.2", "ti2v", dim=3072, ffn_dim=14336, num_heads=24, num_layers=30,
                   in_dim=48, out_dim=48, vae="2.2", shift=5.0, steps=50, guidance=5.0, frames=121, fps=24,
                   height=704, width=1280),
        WanVariant("toy-t2v", "wan2.1", "t2v", dim=256, ffn_dim=1024, num_heads=8, num_layers=6, in_dim=16,
                   out_dim=16, vae="2.1", shift=3.0, steps=30, guidance=1.0, frames=17, fps=16, height=64, width=64,
                   text_dim=32, text_len=32, negative_prompt=""),
    ]
}
TOY_VARIANTS = ("toy-t2v",)
"""wantune's own toy Wan 2.1 T2V model (docs/toy.md): the official architecture at toy sizes, trained on the toy
world; no official checkpoint or manifest exists for it."""

TINY = dict(dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_dim=32)
"""Size overrides matching the tiny fixtures in ../shared/fixtures (official code, same config)."""


def get_variant(name: str, **overrides) -> WanVariant:
    """The named variant, with optional field overrides (sizes for tests, defaults for a run)."""
    try:
        variant = VARIANTS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(VARIANTS), n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(VARIANTS)}"
        raise UserError(f"unknown model variant {name!r}; {hint}") from None
    return variant.replace(**overrides) if overrides else variant
