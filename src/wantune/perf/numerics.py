"""Numerics of the fast step: loss and LoRA gradients of the fast path against the plain path, same weights.

bf16: plain (per-block checkpointing, default SDPA, eager) against fast (fused kernels, selective
checkpointing, chosen SDPA backend). fp8: the fast fp8 path against the plain bf16 path measured before the
weights were quantised (stored on the setup), else against the plain path on the fp8 weights.
"""

from __future__ import annotations

import torch

from wantune.perf.setup import TrainSetup, _backend, prepare_fast, prepare_plain


def compare(setup: TrainSetup, backend: str | None, compile: bool, save_attention: bool, offload: bool,
            fp8: bool, plain_blocks: int = 0, fused_lora: bool = True) -> dict:
    """{loss_plain, loss_fast, loss_rel_diff, grad_rel_l2, grad_cos}; leaves the setup wired plain."""
    if setup.plain_reference is None or not fp8:
        prepare_plain(setup)
        loss, grads = setup.loss_and_grads()
        setup.plain_reference = {"loss": loss, "grads": grads}
    plain = setup.plain_reference
    prepare_fast(setup, backend, compile, save_attention, offload, plain_blocks, fused_lora)
    with _backend(backend):
        loss, grads = setup.loss_and_grads()
    prepare_plain(setup)
    return summarise(plain["loss"], plain["grads"], loss, grads)


def summarise(loss_a: float, grads_a: list[torch.Tensor], loss_b: float, grads_b: list[torch.Tensor]) -> dict:
    """Relative loss difference, relative L2 error and cosine of the concatenated gradients (a: reference)."""
    a = torch.cat([g.flatten() for g in grads_a])
    b = torch.cat([g.flatten() for g in grads_b])
    rel = float((b - a).norm() / a.norm().clamp(min=1e-30))
    cos = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
    return {"loss_plain": loss_a, "loss_fast": loss_b, "loss_rel_diff": abs(loss_b - loss_a) / abs(loss_a),
            "grad_rel_l2": rel, "grad_cos": cos}
