"""The Wan 2.2 A14B expert pair: two transformers, routed by the shifted timestep.

The high-noise expert denoises while t >= boundary·1000 (t = σ'·1000, the shifted timestep the model
receives), the low-noise expert afterwards. Each expert carries its own guidance scale; LoRAs are attached to
each expert separately (one LoRA file per expert). A single model behaves as a pair whose two experts are the
same module, so the sampler has one code path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from wantune.errors import UserError


@dataclass
class ExpertPair:
    """Two Wan transformers that split the denoising trajectory at `boundary` (a fraction of 1000 timesteps)."""

    high: nn.Module
    """The high-noise expert (diffusers calls it `transformer`); runs while t >= boundary·1000."""
    low: nn.Module
    """The low-noise expert (diffusers `transformer_2`); runs for t < boundary·1000."""
    boundary: float
    """Switch point as a fraction of the 1000 training timesteps (0.875 for T2V-A14B, 0.9 for I2V-A14B)."""
    offload_device: str | torch.device | None = None
    """When set, only the active expert is kept on this device; the other one waits on the CPU."""

    def __post_init__(self):
        if not 0.0 <= self.boundary <= 1.0:
            raise UserError(f"expert boundary {self.boundary}: must be in [0, 1] (a fraction of 1000 timesteps)")

    def which(self, t: float | torch.Tensor) -> str:
        """'high' or 'low': the expert that denoises at shifted timestep `t` (σ'·1000)."""
        return "high" if float(t) >= self.boundary * 1000.0 else "low"

    def expert(self, t: float | torch.Tensor) -> nn.Module:
        """The module that denoises at shifted timestep `t`."""
        return self.high if self.which(t) == "high" else self.low

    def activate(self, name: str) -> nn.Module:
        """The expert `name` ('high' | 'low'), moved to `offload_device` (the other to the CPU) when set."""
        model = self.high if name == "high" else self.low
        if self.offload_device is not None and self.low is not self.high:
            (self.low if name == "high" else self.high).to("cpu")
            model.to(self.offload_device)
        return model

    def experts(self) -> dict[str, nn.Module]:
        """Both experts by name (one entry for a single model)."""
        return {"high": self.high} if self.low is self.high else {"high": self.high, "low": self.low}


def as_pair(model: nn.Module | ExpertPair) -> ExpertPair:
    """A single model as a pair that never switches (boundary 0: always 'high')."""
    return model if isinstance(model, ExpertPair) else ExpertPair(model, model, 0.0)


def per_expert(value: float | tuple[float, float]) -> dict[str, float]:
    """A guidance value for each expert: one number for both, or (high, low)."""
    if isinstance(value, (tuple, list)):
        high, low = value
        return {"high": float(high), "low": float(low)}
    return {"high": float(value), "low": float(value)}
