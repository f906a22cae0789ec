"""Plain (un-checkpointed) blocks sized by measurement, not by estimate.

A block that skips checkpointing saves the recompute of its forward in the backward (about 7-23 ms a block of
the 14B expert at 41f 768x768 on an H100) and keeps every activation its backward needs. How many bytes that
is depends on what the compiled kernels choose to save, so `fit_plain_blocks` asks the GPU: it runs one
forward with the last block plain and counts the storages that block's autograd graph keeps (saved-tensor
hooks, parameters and shared storages counted once), reads the memory the allocator reserved at the peak of a
whole step with that one plain block (reserved, not allocated: the fragmentation counts), and fills the memory
left under `use` of the device with as many more as that count allows. It does not try a step and back off:
on an H100 a step that ran out of memory left so much held that even the one plain block it had measured with
ran out afterwards (session 13). Measured at 41f 768x768 fp8-all on an H100: 5.7-5.96 GiB counted per block;
3 plain blocks ran (peak 60.8 GiB), 4 ran out of memory.

Legend: N plain blocks.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


@contextlib.contextmanager
def counting_saved(module: nn.Module, counter: dict):
    """While active, every tensor autograd saves during `module`'s forward is recorded in `counter`
    (storage pointer -> bytes); parameters of `module` are left out."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    hooks_ctx = []

    def pack(tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            counter[storage.data_ptr()] = max(counter.get(storage.data_ptr(), 0), storage.nbytes())
        return tensor

    def enter(*_):
        hooks_ctx.append(torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor))
        hooks_ctx[-1].__enter__()

    def leave(*_):
        hooks_ctx.pop().__exit__(None, None, None)

    handles = [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    try:
        yield counter
    finally:
        for handle in handles:
            handle.remove()


def saved_bytes(module: nn.Module, forward) -> int:
    """Bytes that `module`'s forward leaves saved for the backward when `forward()` (a whole model forward
    that runs `module` once, with grad) is called; the graph is dropped afterwards."""
    counter: dict[int, int] = {}
    with counting_saved(module, counter):
        out = forward()
    del out
    return sum(counter.values())


def plain_blocks_that_fit(step_peak: int, per_block: int, available: int, blocks: int, already: int = 1,
                          use: float = 0.9) -> int:
    """Plain blocks in all: `already` (those in the step whose peak was `step_peak`) plus as many more of
    `per_block` bytes as the memory up to `use` x `available` holds, at most `blocks`."""
    if per_block <= 0:
        return already
    more = int((use * available - step_peak) // per_block)
    return max(0, min(blocks, already + more))


def fit_plain_blocks(setup, save_attention: bool, offload: bool, available: int, use: float = 0.9) -> dict:
    """Re-wire `setup` (a `wantune.perf.setup.TrainSetup` prepared with one plain block, the last) with as many
    plain blocks as fit; returns what was measured and chosen."""
    from wantune.perf.ac_policy import wrap_blocks

    model, device = setup.model, setup.inputs["target"].device
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    setup.loss().backward()
    torch.cuda.synchronize(device)
    peak, reserved = torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)
    for p in setup.network.parameters():
        p.grad = None
    per_block = saved_bytes(model.blocks[-1], setup.loss)
    count = plain_blocks_that_fit(reserved, per_block, available, len(model.blocks), use=use)
    wrap_blocks(model, save_attention=save_attention, offload=offload, swapper=setup.swapper,
                plain_blocks=max(count, 1))
    gib = 1024**3
    return {"plain_blocks": max(count, 1), "per_block_gib": round(per_block / gib, 3),
            "step_peak_gib_with_one": round(peak / gib, 2), "step_reserved_gib_with_one": round(reserved / gib, 2),
            "use": use}
