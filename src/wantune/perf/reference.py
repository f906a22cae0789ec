"""The reference step: diffusers `WanTransformer3DModel` + peft LoRA, gradient checkpointing, default SDPA.

Same inputs (latents and conditioning concatenated on channels, timesteps, 512 text tokens), same loss (MSE to
the random target in float32) and optimiser (AdamW on the LoRA parameters) as our step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from wantune.models.variants import WanVariant
from wantune.perf.build import build_reference
from wantune.perf.setup import random_inputs


@dataclass
class ReferenceSetup:
    model: torch.nn.Module
    params: list
    inputs: dict
    optimizer: torch.optim.Optimizer

    @classmethod
    def build(cls, variant: WanVariant, cfg, device) -> ReferenceSetup:
        model, params = build_reference(variant, device, cfg.rank, cfg.seed)
        i = random_inputs(variant, cfg.batch, cfg.frames, cfg.height, cfg.width, device, cfg.seed)
        hidden = i["x_BCFHW"] if i["y_BCFHW"] is None else torch.cat([i["x_BCFHW"], i["y_BCFHW"]], dim=1)
        inputs = {"hidden_states": hidden, "timestep": i["t"], "encoder_hidden_states": i["context_BSD"],
                  "encoder_hidden_states_image": i["clip_BKE"], "target": i["target"]}
        return cls(model, params, inputs, torch.optim.AdamW(params, lr=1e-4))

    def step(self) -> torch.Tensor:
        kwargs = {k: v for k, v in self.inputs.items() if k != "target"}
        out = self.model(**kwargs, return_dict=False)[0]
        loss = F.mse_loss(out.float(), self.inputs["target"])
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()
