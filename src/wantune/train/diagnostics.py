"""Diagnostics in plain words, as the guides' troubleshooting sections teach.

`Diagnostics` watches the training loss, skipped steps, validation loss and the LoRA weights, and returns
one message per new finding: loss flat, a spike or NaN skipped, overfitting (with the best checkpoint so
far named), a LoRA that still has no effect. Each message says what to change.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import torch


@dataclass
class Diagnostics:
    """Findings over a run (kept in the checkpoint so a resumed run says the same things)."""

    lr: float
    flat_window: int = 100
    """Steps averaged to call the loss flat (against the run's first fifth of that many steps)."""
    losses: list[float] = field(default_factory=list)
    skipped: int = 0
    best_val: float | None = None
    best_val_step: int | None = None
    best_checkpoint: str | None = None
    said: set[str] = field(default_factory=set)

    def on_step(self, step: int, loss: float, skipped: str | None) -> list[str]:
        if skipped is not None:
            self.skipped += 1
            return [f"step {step}: {skipped}; the step was skipped. If this repeats, the learning rate "
                    f"({self.lr:g}) is too high: halve it, keep training.grad_clip on, check that sample's data."]
        self.losses.append(loss)
        if len(self.losses) >= self.flat_window and len(self.losses) % self.flat_window == 0:
            return self._flat(step)
        return []

    def _flat(self, step: int) -> list[str]:
        """Said once: the mean loss of the last window is not below that of the run's first steps. (A loss that
        fell and then levels off is a converging run, not a flat one; diffusion losses are too noisy to compare
        one window's start with its end.)"""
        start = statistics.mean(self.losses[:max(1, self.flat_window // 5)])
        recent = statistics.mean(self.losses[-self.flat_window:])
        if recent < start * 0.98 or "flat" in self.said:
            return []
        self.said.add("flat")
        return [f"step {step}: the training loss is flat ({start:.4g} at the start, {recent:.4g} over the last "
                f"{self.flat_window} steps). Usual causes: learning rate too low ({self.lr:g}), frozen or "
                "untargeted layers, a tiny dataset, empty captions."]

    def on_validation(self, step: int, val_loss: float, train_loss: float | None, checkpoint: str | None) -> list[str]:
        if self.best_val is None or val_loss < self.best_val:
            self.best_val, self.best_val_step = val_loss, step
            self.best_checkpoint = checkpoint or self.best_checkpoint
            return []
        recent = statistics.mean(self.losses[-20:]) if self.losses else train_loss
        rising = val_loss > self.best_val * 1.10
        gap = recent is not None and recent < 0.5 * val_loss
        if not (rising and gap):
            return []
        best = self.best_checkpoint or f"no checkpoint saved at step {self.best_val_step}"
        return [f"step {step}: overfitting: training loss {recent:.4g} is far below validation loss "
                f"{val_loss:.4g}, which has risen from its best {self.best_val:.4g} at step {self.best_val_step}. "
                f"Best checkpoint so far: {best}. Lower the rank, train fewer epochs, add more varied data."]

    def on_lora(self, step: int, network, threshold: float = 1e-6) -> list[str]:
        """LoRA weights still near zero (B matrices) -> it will have no effect."""
        if network is None or "no effect" in self.said:
            return []
        largest = max((float(a.lora_B.weight.detach().abs().max()) for a in network.adapters.values()), default=0.0)
        if largest > threshold:
            return []
        self.said.add("no effect")
        return [f"step {step}: the LoRA weights are still near zero (largest |B| = {largest:.2g}): the LoRA has "
                f"no effect yet. Raise the learning rate ({self.lr:g}), train longer, check the targets."]

    def state_dict(self) -> dict:
        return {k: (sorted(v) if isinstance(v, set) else v) for k, v in self.__dict__.items()}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, set(value) if key == "said" else value)


def lora_update_norm(network) -> float:
    """Frobenius norm of all B matrices (0 for a LoRA that has not moved)."""
    if network is None:
        return 0.0
    return float(torch.sqrt(sum((a.lora_B.weight.detach().float() ** 2).sum() for a in network.adapters.values())))
