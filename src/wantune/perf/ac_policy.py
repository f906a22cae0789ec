"""Selective activation checkpointing for the Wan blocks, with optional activation offload and block swap.

Plain checkpointing (`perf/checkpointing.py`) keeps only each block's input and recomputes the whole block in
the backward pass, self-attention included: at 81 frames 480x832 that attention is over half the forward FLOPs.
The policy here keeps the outputs of the long attentions (`attention_policy`: the SDPA ops whose key length is
at least `min_kv_tokens`, i.e. the self-attention; about L·D·2 bytes per block) and recomputes everything else
(the cheap projections, norms, RoPE, elementwise work). Gradients are identical to plain checkpointing.

`wrap_blocks(model, ...)` installs the per-block forward used for training (idempotent, undone by
`unwrap_blocks`); the training code calls it instead of `apply_gradient_checkpointing` when it wants:
  save_attention   keep the self-attention outputs (selective checkpointing);
  offload          keep each block's saved input in pinned CPU memory instead of the GPU (small-memory mode);
  swapper          a `BlockSwapper` streaming frozen block weights in and out around each block.
"""

from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn
from torch.utils._python_dispatch import _disable_current_modes
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from wantune.perf.blockswap import BackwardHook, BlockSwapper

_SDPA_OPS = tuple(
    getattr(torch.ops.aten, name).default
    for name in ("_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention",
                 "_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention_for_cpu")
    if hasattr(torch.ops.aten, name))


def attention_policy(min_kv_tokens: int = 1024):
    """Save the outputs of SDPA ops whose key length >= `min_kv_tokens`; recompute every other op."""

    def policy(ctx, op, *args, **kwargs):
        if op in _SDPA_OPS and args[1].shape[-2] >= min_kv_tokens:
            return CheckpointPolicy.MUST_SAVE
        return CheckpointPolicy.PREFER_RECOMPUTE

    return policy


def wrap_blocks(model: nn.Module, save_attention: bool = True, min_kv_tokens: int = 1024, offload: bool = False,
                swapper: BlockSwapper | None = None, checkpointing: bool = True, plain_blocks: int = 0) -> int:
    """Install the training forward on every block of `model`; returns the number of blocks wrapped.

    plain_blocks: the last N blocks keep all their activations (no recompute), for memory that would sit idle.
    """
    context_fn = None
    if save_attention and checkpointing:
        context_fn = functools.partial(create_selective_checkpoint_contexts, attention_policy(min_kv_tokens))
    first_plain = len(model.blocks) - plain_blocks
    for index, block in enumerate(model.blocks):
        if getattr(block, "_wantune_checkpointed", False):
            unwrap_blocks(model)
            return wrap_blocks(model, save_attention, min_kv_tokens, offload, swapper, checkpointing, plain_blocks)
        block._wantune_inner = block.__dict__.get("forward")  # the fused forward, if installed: kept on unwrap
        block.forward = functools.partial(_block_forward, block.forward, index, swapper, context_fn, offload,
                                          checkpointing and index < first_plain)
        block._wantune_checkpointed = True
    return len(model.blocks)


def unwrap_blocks(model: nn.Module) -> None:
    """Back to the block forward that was there before `wrap_blocks` (the fused one, if installed)."""
    for block in model.blocks:
        if getattr(block, "_wantune_checkpointed", False):
            inner = block.__dict__.pop("_wantune_inner", None)
            if inner is None:
                del block.forward
            else:
                block.forward = inner
            block._wantune_checkpointed = False


def _block_forward(plain, index: int, swapper: BlockSwapper | None, context_fn, offload: bool,
                   checkpointing: bool, x_BLD: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """One block: load its weights, run it (checkpointed), drop its weights; backward reloads them."""
    training = torch.is_grad_enabled()
    needs_grad = x_BLD.requires_grad
    if swapper is not None:
        swapper.load(index)
        if training and needs_grad:
            x_BLD = BackwardHook.apply(x_BLD, functools.partial(swapper.unload, index))
    if not (training and checkpointing):
        out = plain(x_BLD, *args, **kwargs)
    else:
        def recompute(*inputs, **kw):
            if swapper is not None and _in_backward():
                with _disable_current_modes():  # copies are not part of the checkpointed computation
                    swapper.load(index, backward=True)
                if not needs_grad:  # no BackwardHook on a grad-less input: unload when the backward ends
                    torch.autograd.Variable._execution_engine.queue_callback(
                        functools.partial(swapper.unload, index))
            return plain(*inputs, **kw)

        extra = {} if context_fn is None else {"context_fn": context_fn}
        offloading = offload_hooks(x_BLD.is_cuda) if offload else contextlib.nullcontext()
        with offloading:
            out = checkpoint(recompute, x_BLD, *args, use_reentrant=False, **kwargs, **extra)
    if swapper is not None:
        swapper.unload(index)
    return out


OFFLOAD_MIN_ELEMENTS = 1 << 16
"""Saved tensors smaller than this stay on the GPU."""


def offload_hooks(pin: bool):
    """Saved-tensor hooks that keep large saved tensors in (pinned) CPU memory with their strides kept (compiled
    backward kernels check strides), copied out and back asynchronously on the current stream."""

    def pack(tensor: torch.Tensor):
        if tensor.numel() < OFFLOAD_MIN_ELEMENTS or not _dense(tensor):
            return tensor
        host = torch.empty_strided(tensor.size(), tensor.stride(), dtype=tensor.dtype, pin_memory=pin)
        host.copy_(tensor, non_blocking=pin)
        return tensor.device, host

    def unpack(packed):
        if isinstance(packed, torch.Tensor):
            return packed
        device, host = packed
        out = torch.empty_strided(host.size(), host.stride(), dtype=host.dtype, device=device)
        return out.copy_(host, non_blocking=True)

    return torch.autograd.graph.saved_tensors_hooks(pack, unpack)


def _dense(tensor: torch.Tensor) -> bool:
    """True if the tensor's elements fill its storage span without gaps or overlaps (a permuted contiguous)."""
    sizes_strides = sorted((st, sz) for sz, st in zip(tensor.size(), tensor.stride()) if sz > 1)
    expected = 1
    for stride, size in sizes_strides:
        if stride != expected:
            return False
        expected *= size
    return True


def _in_backward() -> bool:
    """True while autograd is running a backward pass (the checkpoint recompute)."""
    return torch._C._current_graph_task_id() != -1
