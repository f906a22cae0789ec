"""Regularisation: EMA of the trainable weights, Differential Output Preservation, base-model prior targets,
LoRA on/off.

DOP (AI Toolkit's idea): for each batch, a no-grad pass of the *base* model (LoRA off) on the prompt with
the trigger replaced by the class word gives a target; the LoRA-on prediction for that same class prompt
is pulled towards it (MSE × multiplier), so the LoRA changes the trigger's concept, not the whole class.

Legend: B batch, C channels, F/H/W latent frames/height/width.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from wantune.train.objective import NoisyInputs, forward_model, masked_mse_B, stack_context


class EMA:
    """Exponential moving average of named trainable tensors (kept in float32 on the params' device)."""

    def __init__(self, named_params: list[tuple[str, torch.nn.Parameter]], decay: float):
        self.decay = decay
        self.params = named_params
        self.shadow = {n: p.detach().float().clone() for n, p in named_params}

    @torch.no_grad()
    def update(self) -> None:
        for name, param in self.params:
            shadow = self.shadow[name]
            shadow.lerp_(param.detach().to(shadow.device, torch.float32), 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: t.detach().cpu() for n, t in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, tensor in state.items():
            self.shadow[name].copy_(tensor)

    def to(self, device: torch.device) -> None:
        self.shadow = {n: t.to(device) for n, t in self.shadow.items()}


@contextlib.contextmanager
def lora_disabled(network) -> Iterator[None]:
    """Run the base model: every trained adapter's scale set to 0 for the duration (exact base output)."""
    scales = {path: adapter.scale for path, adapter in network.adapters.items()}
    try:
        for adapter in network.adapters.values():
            adapter.scale = 0.0
        yield
    finally:
        for path, adapter in network.adapters.items():
            adapter.scale = scales[path]


def _take_rows(batch: dict, inputs: NoisyInputs, keep: list[int]) -> tuple[dict, NoisyInputs]:
    """The batch's per-row tensors and the noisy inputs restricted to the rows `keep`."""
    batch = {k: v[keep] if isinstance(v, torch.Tensor) and k.endswith(("_BCFHW", "_BKD")) else v
             for k, v in batch.items()}
    return batch, NoisyInputs(inputs.x_BCFHW[keep], inputs.t[keep], inputs.target_BCFHW[keep],
                              None if inputs.mask_BCFHW is None else inputs.mask_BCFHW[keep])


def dop_loss(model, network, batch: dict, inputs: NoisyInputs, autocast, rows_B: torch.Tensor | None = None):
    """Mean MSE between the LoRA-on and the base (LoRA-off, no-grad) predictions on the class prompt, over the
    rows `rows_B` keeps (all by default); None when it keeps none."""
    context = batch["context_dop"]
    if rows_B is not None and not bool(rows_B.all()):
        if not bool(rows_B.any()):
            return None
        keep = rows_B.nonzero().flatten().tolist()
        context = [context[i] for i in keep]
        batch, inputs = _take_rows(batch, inputs, keep)
    context_BLD = stack_context(context).to(inputs.x_BCFHW.device)
    with torch.no_grad(), lora_disabled(network), autocast():
        base_BCFHW = forward_model(model, batch, inputs, context_BLD)
    with autocast():
        pred_BCFHW = forward_model(model, batch, inputs, context_BLD)
    return masked_mse_B(pred_BCFHW, base_BCFHW, inputs.mask_BCFHW).mean()


def base_prior_target(model, network, batch: dict, inputs: NoisyInputs, context_BLD, autocast) -> torch.Tensor:
    """The flow target with each regularisation sample's row replaced by the base model's (network off, no-grad)
    prediction at the same noisy input: those rows then ask the LoRA to change nothing. The base model runs on
    the regularisation rows only."""
    reg_B = batch.get("regularization_B")
    if reg_B is None or not bool(reg_B.any()):
        return inputs.target_BCFHW
    keep = reg_B.nonzero().flatten().tolist()
    rows_batch, rows_inputs = _take_rows(batch, inputs, keep)
    with torch.no_grad(), lora_disabled(network), autocast():
        base_RCFHW = forward_model(model, rows_batch, rows_inputs, context_BLD[keep])
    target_BCFHW = inputs.target_BCFHW.clone()
    target_BCFHW[keep] = base_RCFHW.to(target_BCFHW.dtype)
    return target_BCFHW


def replace_trigger(caption: str, trigger: str, class_word: str) -> str:
    """The caption with the trigger word replaced by the class word (the DOP preservation prompt)."""
    return caption.replace(trigger, class_word)
