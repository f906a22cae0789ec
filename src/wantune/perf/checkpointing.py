"""Activation (gradient) checkpointing applied to a built model, never a flag inside the model.

`apply_gradient_checkpointing(model)` makes each `model.blocks[i]` recompute its activations in the
backward pass (torch.utils.checkpoint, non-reentrant): ~30% less memory for ~30% more compute.
Without grad (validation, sampling) the blocks run as usual.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def apply_gradient_checkpointing(model: nn.Module) -> int:
    """Wrap every block's forward in a checkpoint; returns the number of blocks wrapped (idempotent)."""
    count = 0
    for block in model.blocks:
        if getattr(block, "_wantune_checkpointed", False):
            continue
        plain = block.forward

        def forward(*args, _plain=plain, **kwargs):
            if torch.is_grad_enabled():
                return checkpoint(_plain, *args, use_reentrant=False, **kwargs)
            return _plain(*args, **kwargs)

        block.forward = forward
        block._wantune_checkpointed = True
        count += 1
    return count


def remove_gradient_checkpointing(model: nn.Module) -> None:
    """Undo `apply_gradient_checkpointing`."""
    for block in model.blocks:
        if getattr(block, "_wantune_checkpointed", False):
            del block.forward
            block._wantune_checkpointed = False
