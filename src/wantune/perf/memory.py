"""GPU memory estimate of a LoRA training step: "this config needs about N GiB; you have M".

The estimate adds up what stays resident (frozen weights not swapped out, two or three swap slots, LoRA
weights + gradients + AdamW state, each block's saved input unless offloaded, the saved self-attention outputs
under selective checkpointing) and the working set of one block's recompute + backward (its largest float32
and FFN tensors), plus a fixed allowance for the CUDA context and allocator slack. It is a planning figure,
within about 15% of the measured peak in the benchmark runs (docs/performance.md lists both).

Legend: B batch, L video tokens, D model dim, Fd FFN dim, N heads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from wantune.models.variants import WanVariant
from wantune.perf.flops import latent_grid, linear_shapes

GIB = 1024**3
SWAP_SLOTS = 3
"""Blocks that can be on the GPU at once from the swapped set (running, prefetched, being freed)."""
CONTEXT_GIB = 1.0
"""CUDA context, cuBLAS/cuDNN workspaces and allocator slack."""


@dataclass
class MemoryEstimate:
    """Bytes by part, and the total in GiB."""

    parts: dict[str, float] = field(default_factory=dict)
    """Part name -> bytes."""

    @property
    def total_gib(self) -> float:
        return sum(self.parts.values()) / GIB + CONTEXT_GIB

    def as_dict(self) -> dict:
        return {"total_gib": round(self.total_gib, 2), **{k: round(v / GIB, 2) for k, v in self.parts.items()}}


def block_params(variant: WanVariant) -> tuple[int, int]:
    """(Linear weight elements, other parameter elements) of one block."""
    linear = sum(fan_in * fan_out for _, _, fan_in, fan_out, _ in linear_shapes(variant, 1))
    biases = sum(fan_out for _, _, _, fan_out, _ in linear_shapes(variant, 1))
    d = variant.dim
    norms = (4 + int(variant.has_image_embedding)) * d if variant.qk_norm else 0
    norms += 2 * d if variant.cross_attn_norm else 0
    return linear, biases + 6 * d + norms  # + modulation


def outer_params(variant: WanVariant) -> int:
    """Parameters outside the blocks (embeddings, time projection, head)."""
    d = variant.dim
    n = variant.in_dim * math.prod(variant.patch_size) * d + variant.text_dim * d + d * d
    n += variant.freq_dim * d + d * d + 6 * d * d + d * variant.out_dim * math.prod(variant.patch_size)
    return n


def lora_params(variant: WanVariant, rank: int) -> int:
    return variant.num_layers * sum(rank * (i + o) for _, _, i, o, _ in linear_shapes(variant, 1))


def block_activation_bytes(variant: WanVariant, tokens: int) -> float:
    """Bytes a block keeps for its backward when it is not checkpointed (B*L tokens): about 43 bytes per
    token x model dim and 4 per token x FFN dim (counted with saved-tensor hooks on the fused block)."""
    return tokens * (43.0 * variant.dim + 4.0 * variant.ffn_dim)


def estimate_memory(variant: WanVariant, frames: int, height: int, width: int, batch: int = 1, rank: int = 32,
                    precision: str = "bf16", block_swap: int = 0, save_attention: bool = True,
                    offload: bool = False, lora_bytes: int = 2, plain_blocks: int = 0,
                    idle_experts: int = 0) -> MemoryEstimate:
    """Peak GPU memory of one training step of this configuration (see the module docstring); `idle_experts`:
    other experts of an A14B pair whose frozen weights stay resident without running."""
    tokens = batch * math.prod(latent_grid(variant, frames, height, width))
    d, fd, layers = variant.dim, variant.ffn_dim, variant.num_layers
    linear, other = block_params(variant)
    weight_bytes = 2 if precision == "bf16" else 1
    per_block = linear * weight_bytes + other * 2
    resident = layers - block_swap
    parts = {
        "frozen_weights": resident * per_block + outer_params(variant) * 2,
        "swap_slots": min(block_swap, SWAP_SLOTS) * per_block,
        "lora_and_optimizer": lora_params(variant, rank) * lora_bytes * 4,
        "saved_block_inputs": 0 if offload else layers * tokens * d * 4,
        "saved_attention": layers * tokens * (d * 2 + variant.num_heads * 4) if save_attention else 0,
        "block_working_set": tokens * (d * 4 * 8 + fd * 2 * 3),
    }
    if plain_blocks:
        kept = parts["saved_block_inputs"] / layers + parts["saved_attention"] / layers
        parts["unchecked_blocks"] = plain_blocks * (block_activation_bytes(variant, tokens) - kept)
    if idle_experts:
        parts["idle_expert_weights"] = idle_experts * parts["frozen_weights"]
    return MemoryEstimate(parts)


def memory_message(estimate: MemoryEstimate, available_gib: float | None) -> str:
    """The line printed before training starts."""
    have = "unknown" if available_gib is None else f"{available_gib:.1f} GiB"
    line = f"this config needs about {estimate.total_gib:.1f} GiB; you have {have}"
    if available_gib is not None and estimate.total_gib > available_gib:
        line += " (too little: use --precision fp8, --block-swap N or fewer frames / a smaller size)"
    return line
