"""Wan's 3D rotary position embedding (official: `rope_params` / `rope_apply`).

Each head's `Dh/2` complex pairs are split between time, height and width as
`c - 2*(c//3), c//3, c//3` (c = Dh/2); every axis has its own frequency table
`1 / theta**(arange(0, d_axis, 2) / d_axis)` over at most `MAX_POSITIONS` positions.

Shape legend: L tokens (f*h*w, frame-major), N heads, Dh head dim, P = Dh/2 rotation pairs.
"""

from __future__ import annotations

import torch

from wantune.errors import UserError

THETA = 10000.0
MAX_POSITIONS = 1024


def axis_pairs(head_dim: int) -> tuple[int, int, int]:
    """How many of the head's Dh/2 rotation pairs go to the time, height and width axes."""
    pairs = head_dim // 2
    return pairs - 2 * (pairs // 3), pairs // 3, pairs // 3


def rope_tables(grid: tuple[int, int, int], head_dim: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos_LP, sin_LP) in float32 for a token grid of (f, h, w) patches; angles computed in float64."""
    if max(grid) > MAX_POSITIONS:
        raise UserError(f"token grid {tuple(grid)}: each axis must be <= {MAX_POSITIONS} patches; use a smaller "
                        "resolution or fewer frames")
    per_axis = []
    for size, pairs in zip(grid, axis_pairs(head_dim)):
        axis_dim = 2 * pairs
        inv_freq = 1.0 / THETA ** (torch.arange(0, axis_dim, 2, dtype=torch.float64, device=device) / axis_dim)
        per_axis.append(torch.outer(torch.arange(size, dtype=torch.float64, device=device), inv_freq))
    f, h, w = grid
    angles_fhwP = torch.cat([
        per_axis[0].view(f, 1, 1, -1).expand(f, h, w, -1),
        per_axis[1].view(1, h, 1, -1).expand(f, h, w, -1),
        per_axis[2].view(1, 1, w, -1).expand(f, h, w, -1),
    ], dim=-1)
    angles_LP = angles_fhwP.reshape(f * h * w, -1)
    return angles_LP.cos().float(), angles_LP.sin().float()


def apply_rope(x_BLNDh: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate consecutive channel pairs (x[2i], x[2i+1]) of every head; float32 in, float32 out."""
    cos_LP, sin_LP = (table[:, None, :] for table in rope)  # (L, 1, P): broadcast over heads
    real, imag = x_BLNDh.float().unflatten(-1, (-1, 2)).unbind(-1)
    rotated = torch.stack([real * cos_LP - imag * sin_LP, real * sin_LP + imag * cos_LP], dim=-1)
    return rotated.flatten(-2)
