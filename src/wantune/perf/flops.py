"""Useful FLOPs of one LoRA training step of a Wan transformer, and their price at measured rates.

"Useful" = the forward pass, plus the backward pass for the inputs that need a gradient and for the LoRA
weights; no activation recompute (checkpointing), no attention-score recompute inside a fused backward, no
elementwise work. A matmul (M, K) @ (K, N) is 2·M·K·N FLOPs. Attention of L queries over S keys in model
dim D is 4·L·S·D forward (QKᵀ and PV) and 8·L·S·D backward (dQ, dK, dV and dP).

What needs an input gradient: every block Linear that sees the video tokens (its input depends on the
LoRA-trained blocks), the head, and both attentions. The cross-attention k/v (and k_img/v_img) read the frozen
text/image context: no input gradient, only their LoRA weights' gradient. The patch, text, time and image
embeddings have no backward.

Legend: B batch, L video tokens, S text tokens, K image tokens, D model dim, Fd FFN dim, r LoRA rank.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from wantune.errors import UserError
from wantune.models.variants import WanVariant

CLIP_TOKENS = 257
CLIP_DIM = 1280


@dataclass(frozen=True)
class StepFlops:
    """FLOPs of one training step, split by the unit that does them."""

    matmul_fwd: float
    """Dense (frozen base) matmuls, forward."""
    matmul_bwd: float
    """Dense matmuls, backward (input gradients only: the base weights are frozen)."""
    attn_fwd: float
    """Attention (QKᵀ and PV), forward."""
    attn_bwd: float
    """Attention backward (dQ, dK, dV, dP), no score recompute."""
    lora_fwd: float
    """LoRA down/up projections, forward."""
    lora_bwd: float
    """LoRA backward: weight gradients and, where needed, input gradients."""

    @property
    def total(self) -> float:
        return self.matmul_fwd + self.matmul_bwd + self.attn_fwd + self.attn_bwd + self.lora_fwd + self.lora_bwd

    def as_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


def latent_grid(variant: WanVariant, frames: int, height: int, width: int) -> tuple[int, int, int]:
    """The token grid (f, h, w) of a clip of `frames` x `height` x `width` pixels."""
    st, sh, sw = variant.vae_stride
    pt, ph, pw = variant.patch_size
    if (frames - 1) % st:
        raise UserError(f"--frames {frames}: must be 4k+1 (e.g. 41, 81) for the Wan VAE")
    if height % (sh * ph) or width % (sw * pw):
        raise UserError(f"{height}x{width}: height and width must be multiples of {sh * ph}")
    return ((frames - 1) // st + 1) // pt, height // sh // ph, width // sw // pw


def linear_shapes(variant: WanVariant, tokens: int) -> list[tuple[str, int, int, int, bool]]:
    """(name, rows, in, out, needs input grad) of every Linear of one block for `tokens` video tokens."""
    d, fd, s = variant.dim, variant.ffn_dim, variant.text_len
    rows = [(f"self_attn.{n}", tokens, d, d, True) for n in "qkvo"]
    rows += [("cross_attn.q", tokens, d, d, True), ("cross_attn.o", tokens, d, d, True),
             ("cross_attn.k", s, d, d, False), ("cross_attn.v", s, d, d, False)]
    if variant.has_image_embedding:
        k = CLIP_TOKENS * (2 if variant.has_image_pos_embedding else 1)
        rows += [("cross_attn.k_img", k, d, d, False), ("cross_attn.v_img", k, d, d, False)]
    rows += [("ffn.0", tokens, d, fd, True), ("ffn.2", tokens, fd, d, True)]
    return rows


def step_flops(variant: WanVariant, frames: int, height: int, width: int, batch: int = 1, rank: int = 32,
               lora_targets: tuple[str, ...] | None = None) -> StepFlops:
    """Useful FLOPs of one LoRA training step (see the module docstring for what counts)."""
    tokens = math.prod(latent_grid(variant, frames, height, width))
    keys = tokens + variant.text_len + (CLIP_TOKENS * (2 if variant.has_image_pos_embedding else 1)
                                        if variant.has_image_embedding else 0)
    attn_fwd = variant.num_layers * 4.0 * batch * tokens * keys * variant.dim
    parts = [0.0, 0.0, 0.0, 0.0]  # matmul fwd, matmul bwd, lora fwd, lora bwd
    for first in (True, False):
        count = 1 if first else variant.num_layers - 1
        block = _block_linear_flops(variant, tokens, batch, rank, lora_targets, first)
        parts = [total + count * part for total, part in zip(parts, block)]
    outside_fwd, outside_bwd = _outside_blocks(variant, tokens, batch)
    return StepFlops(matmul_fwd=parts[0] + outside_fwd, matmul_bwd=parts[1] + outside_bwd,
                     attn_fwd=attn_fwd, attn_bwd=2 * attn_fwd, lora_fwd=parts[2], lora_bwd=parts[3])


def _block_linear_flops(variant: WanVariant, tokens: int, batch: int, rank: int,
                        lora_targets: tuple[str, ...] | None, first: bool) -> list[float]:
    """[matmul fwd, matmul bwd, lora fwd, lora bwd] of one block. In the first block the self-attention
    q/k/v read the patch embedding (frozen, no gradient): no input gradient there."""
    mm_fwd = mm_bwd = lora_fwd = lora_bwd = 0.0
    for name, rows, fan_in, fan_out, input_grad in linear_shapes(variant, tokens):
        input_grad = input_grad and not (first and name in ("self_attn.q", "self_attn.k", "self_attn.v"))
        mm = 2.0 * batch * rows * fan_in * fan_out
        mm_fwd += mm
        mm_bwd += mm if input_grad else 0.0
        if lora_targets is None or name in lora_targets:
            down, up = 2.0 * batch * rows * fan_in * rank, 2.0 * batch * rows * rank * fan_out
            lora_fwd += down + up
            lora_bwd += 2 * up + down + (down if input_grad else 0.0)  # dB, dh, dA (+ dx)
    return [mm_fwd, mm_bwd, lora_fwd, lora_bwd]


def _outside_blocks(variant: WanVariant, tokens: int, batch: int) -> tuple[float, float]:
    """(forward, backward) matmul FLOPs of the patch/text/time/image embeddings and the head."""
    d = variant.dim
    patch_in = variant.in_dim * math.prod(variant.patch_size)
    head_out = variant.out_dim * math.prod(variant.patch_size)
    fwd = 2.0 * batch * tokens * patch_in * d                                   # patch embedding
    fwd += 2.0 * batch * variant.text_len * (variant.text_dim * d + d * d)     # text embedding
    fwd += 2.0 * batch * (variant.freq_dim * d + d * d + d * 6 * d)           # time embedding + projection
    if variant.has_image_embedding:
        k = CLIP_TOKENS * (2 if variant.has_image_pos_embedding else 1)
        fwd += 2.0 * batch * k * (CLIP_DIM * CLIP_DIM + CLIP_DIM * d)
    head = 2.0 * batch * tokens * d * head_out
    return fwd + head, head


@dataclass(frozen=True)
class Rates:
    """Measured throughputs in FLOP/s (micro-benchmarks of the step's own shapes)."""

    matmul_fwd: float
    """Base-weight matmul rate of the forward pass (bf16, or fp8 rowwise in fp8 mode)."""
    matmul_bwd: float
    """Matmul rate of the backward pass (bf16)."""
    attn_fwd: float
    """Attention forward rate."""
    attn_bwd: float
    """Attention backward rate, counting 8·L·S·D useful FLOPs."""
    lora: float
    """Rate of the thin LoRA matmuls (rank r)."""


def roofline_seconds(flops: StepFlops, rates: Rates) -> float:
    """The time the step's useful FLOPs take at the measured rates: the floor a step can approach."""
    return (flops.matmul_fwd / rates.matmul_fwd + flops.matmul_bwd / rates.matmul_bwd
            + flops.attn_fwd / rates.attn_fwd + flops.attn_bwd / rates.attn_bwd
            + (flops.lora_fwd + flops.lora_bwd) / rates.lora)
