"""One benchmark training setup: model + LoRA + random batch + AdamW, and the fast / plain step wiring.

`prepare_fast` = fused elementwise kernels (compile.py) + selective checkpointing, activation offload and
block swap (ac_policy.py); the SDPA backend is chosen around the step (bench.py). `prepare_plain` = the
per-block checkpointing the training code uses by default (checkpointing.py), eager, default SDPA.

Legend: B batch, C channels, F/H/W latent frames/height/width, S text tokens, K CLIP tokens, E CLIP width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from wantune.models.variants import WanVariant
from wantune.perf.ac_policy import unwrap_blocks, wrap_blocks
from wantune.perf.build import build_wan
from wantune.perf.compile import install_fast_blocks
from wantune.perf.flops import latent_grid
from wantune.perf.fp8 import compile_quantize, quantize_linears_fp8

CLIP_TOKENS, CLIP_DIM = 257, 1280


def random_inputs(variant: WanVariant, batch: int, frames: int, height: int, width: int, device,
                  seed: int = 0) -> dict[str, torch.Tensor]:
    """Latents x, conditioning y (I2V), timesteps, text context, CLIP features and the target, on `device`."""
    gen = torch.Generator(device).manual_seed(seed)
    f, h, w = latent_grid(variant, frames, height, width)
    pt, ph, pw = variant.patch_size
    size = (f * pt, h * ph, w * pw)

    def randn(*shape, dtype=torch.bfloat16):
        return torch.randn(shape, generator=gen, device=device, dtype=torch.float32).to(dtype)

    cond = variant.in_dim - variant.out_dim
    return {
        "x_BCFHW": randn(batch, variant.out_dim, *size),
        "y_BCFHW": randn(batch, cond, *size) if cond else None,
        "t": torch.full((batch,), 500.0, device=device),
        "context_BSD": randn(batch, variant.text_len, variant.text_dim),
        "clip_BKE": randn(batch, CLIP_TOKENS * (2 if variant.has_image_pos_embedding else 1), CLIP_DIM)
        if variant.has_image_embedding else None,
        "target": randn(batch, variant.out_dim, *size, dtype=torch.float32),
    }


@dataclass
class TrainSetup:
    """Our model with its LoRA, a fixed random batch and the LoRA optimiser."""

    model: torch.nn.Module
    network: object
    swapper: object
    inputs: dict
    lora_init: list[torch.Tensor]
    optimizer: torch.optim.Optimizer | None = None
    plain_reference: dict | None = None
    """Loss and LoRA grads of the plain bf16 path (numerics.compare)."""

    @classmethod
    def build(cls, variant: WanVariant, cfg, device, precision: str) -> TrainSetup:
        model, network, swapper = build_wan(variant, device, cfg.rank, precision, cfg.block_swap, seed=cfg.seed)
        inputs = random_inputs(variant, cfg.batch, cfg.frames, cfg.height, cfg.width, device, cfg.seed)
        init = [p.detach().clone() for p in network.parameters()]
        setup = cls(model, network, swapper, inputs, init)
        setup.reset_lora()
        return setup

    def loss(self) -> torch.Tensor:
        i = self.inputs
        out = self.model(i["x_BCFHW"], i["t"], i["context_BSD"], i["clip_BKE"], i["y_BCFHW"])
        return F.mse_loss(out, i["target"])

    def step(self) -> torch.Tensor:
        """Forward + loss + backward + AdamW; returns the loss (on the GPU: no host sync)."""
        loss = self.loss()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def loss_and_grads(self) -> tuple[float, list[torch.Tensor]]:
        """One forward + backward without an optimiser step: (loss, float32 copies of the LoRA grads)."""
        for p in self.network.parameters():
            p.grad = None
        loss = self.loss()
        loss.backward()
        grads = [p.grad.float().clone() for p in self.network.parameters()]
        for p in self.network.parameters():
            p.grad = None
        return float(loss.detach()), grads

    def reset_lora(self) -> None:
        """Back to the initial LoRA weights with a fresh optimiser (same start for every run)."""
        with torch.no_grad():
            for param, init in zip(self.network.parameters(), self.lora_init):
                param.copy_(init)
        params = list(self.network.parameters())
        fused = params[0].is_cuda
        self.optimizer = torch.optim.AdamW(params, lr=1e-4, fused=fused)

    def to_fp8(self) -> None:
        quantize_linears_fp8(self.model)


def reset_blocks(model: torch.nn.Module) -> None:
    """Drop any per-block forward override (fast forward, checkpoint wrappers)."""
    unwrap_blocks(model)
    for block in model.blocks:
        block.__dict__.pop("forward", None)
        block._wantune_checkpointed = False


def prepare_fast(setup: TrainSetup, backend: str | None, compile: bool, save_attention: bool,
                 offload: bool, plain_blocks: int = 0, fused_lora: bool = True) -> str | None:
    """Wire the fast step; if torch.compile fails on a trial step, fall back to eager and return the error."""
    from wantune.perf.lora_fused import fuse_lora

    error = None
    compile_quantize(compile and setup.inputs["target"].is_cuda)
    fuse_lora(setup.model, fused_lora)
    reset_blocks(setup.model)
    install_fast_blocks(setup.model, compile=compile)
    wrap_blocks(setup.model, save_attention=save_attention, offload=offload, swapper=setup.swapper,
                plain_blocks=plain_blocks)
    if compile:
        try:
            with _backend(backend):
                setup.loss().backward()
        except Exception as exc:  # noqa: BLE001 - any compiler failure falls back to the eager kernels
            error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            reset_blocks(setup.model)
            install_fast_blocks(setup.model, compile=False)
            compile_quantize(False)
            wrap_blocks(setup.model, save_attention=save_attention, offload=offload, swapper=setup.swapper,
                plain_blocks=plain_blocks)
        for p in setup.network.parameters():
            p.grad = None
    return error


def prepare_plain(setup: TrainSetup) -> None:
    """Per-block checkpointing as training does by default (block swap still wired if the setup has one)."""
    from wantune.perf.checkpointing import apply_gradient_checkpointing
    from wantune.perf.lora_fused import fuse_lora

    compile_quantize(False)
    fuse_lora(setup.model, False)
    reset_blocks(setup.model)
    if setup.swapper is not None:
        wrap_blocks(setup.model, save_attention=False, swapper=setup.swapper)
    else:
        apply_gradient_checkpointing(setup.model)


def _backend(name: str | None):
    from wantune.perf.micro import backend_context
    return backend_context(name)
