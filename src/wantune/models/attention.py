"""The attention kernel the Wan transformer calls (PyTorch SDPA; one place to swap in another backend).

Shape legend: B batch, L query tokens, S key tokens, N heads, Dh head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention(q_BLNDh: torch.Tensor, k_BSNDh: torch.Tensor, v_BSNDh: torch.Tensor) -> torch.Tensor:
    """Full (unmasked) softmax attention; returns (B, L, N, Dh) in q's dtype."""
    out_BNLDh = F.scaled_dot_product_attention(
        q_BLNDh.transpose(1, 2), k_BSNDh.transpose(1, 2), v_BSNDh.transpose(1, 2))
    return out_BNLDh.transpose(1, 2)
