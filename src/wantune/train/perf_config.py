"""`[performance]`: the fast path of docs/performance.md in training (applied by `wantune.train.performance`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from wantune.errors import require


@dataclass
class PerformanceConfig:
    """The fast path of docs/performance.md, applied to the built model (after the LoRA, before data parallel)."""

    fp8_base: bool = False
    """Frozen base Linear weights of the blocks stored fp8 (one scale per row) with fp8 matmuls; LoRA only."""
    fp8_backward: bool = False
    """With fp8_base: the input-gradient matmuls of those weights in fp8 too (e4m3 gradient, one scale per row)."""
    attention: Literal["auto", "cudnn", "flash", "efficient", "math"] = "auto"
    """SDPA backend of the blocks (auto = PyTorch's choice; cudnn was fastest on H200; cudnn/efficient need CUDA)."""
    checkpointing: Literal["auto", "full", "selective", "none"] = "auto"
    """full recomputes each block; selective keeps the self-attention outputs; auto = training.gradient_checkpointing."""
    compile_blocks: bool = False
    """torch.compile the blocks' fused elementwise kernels (norms, q/k norm + RoPE, gated residuals)."""
    block_swap: int = 0
    """Frozen weights of the first N blocks live in pinned CPU memory, streamed to the GPU per block (LoRA only)."""
    offload_activations: bool = False
    """Keep each checkpointed block's saved tensors in pinned CPU memory (needs checkpointing)."""
    fused_lora: bool = False
    """Each LoRA adapter fused into its base Linear's forward and backward (no full-size add/scale passes)."""
    plain_blocks: int | Literal["auto"] = 0
    """The last N blocks skip checkpointing (keep their activations, no recompute) in memory that would sit idle;
    "auto": the most whose memory estimate on the run's largest clip fits 0.9 of the GPU (as `wantune bench speed
    --plain-blocks auto`)."""

    def validate(self) -> None:
        require(self.block_swap >= 0, "performance.block_swap: must be >= 0 (blocks kept in CPU memory)")
        require(self.plain_blocks == "auto" or self.plain_blocks >= 0,
                "performance.plain_blocks: must be >= 0 (blocks that skip checkpointing) or \"auto\"")
