"""The shared shell of a loaded frozen component (VAE, text encoder, CLIP): its module, dtype and device."""

from __future__ import annotations

import torch


class FrozenModule:
    """Holds `self.model` (a frozen nn.Module); subclasses add what the component computes."""

    model: torch.nn.Module

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device):
        self.model.to(device)
        return self
