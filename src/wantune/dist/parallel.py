"""Data-parallel wrapping of a built model: DDP (LoRA) or FSDP2 (full fine-tuning).

- `ddp`: every rank holds the whole model; only the trainable parameters (the LoRA adapters) have their
  gradients averaged across ranks, bucketed and overlapped with the backward pass. The frozen base is
  never broadcast (every rank loads the same file); the trainable weights are broadcast from rank 0 once.
- `fsdp`: FSDP2 (`torch.distributed.fsdp.fully_shard`) on every transformer block and then the root, over
  a 1-D DeviceMesh of all ranks. Parameters, gradients and optimiser state are sharded (each rank holds
  1/world of them); a block's weights are all-gathered just before it runs and freed after.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch import nn

from wantune.errors import UserError

STRATEGIES = ("auto", "ddp", "fsdp")


def resolve_strategy(strategy: str, network_type: str, world: int) -> str:
    """"none" in one process; `auto` is ddp for LoRA and fsdp for full fine-tuning."""
    if world <= 1:
        return "none"
    if strategy == "auto":
        return "ddp" if network_type == "lora" else "fsdp"
    if strategy == "fsdp" and network_type == "lora":
        raise UserError("distributed.strategy = fsdp: supported for network.type = full only; "
                        "use ddp (or auto) for LoRA")
    return strategy


def broadcast_trainable(model: nn.Module) -> None:
    """Rank 0's trainable weights on every rank (the frozen base is loaded identically everywhere)."""
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                dist.broadcast(param.data, src=0)


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """A DDP wrapper that averages the trainable parameters' gradients; `model` stays usable unwrapped."""
    from torch.nn.parallel import DistributedDataParallel

    broadcast_trainable(model)
    ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, init_sync=False, broadcast_buffers=False)


def shard_fsdp(model: nn.Module, device: torch.device, reshard_after_forward: bool = True) -> nn.Module:
    """FSDP2 per block, then the root; the local shards move to `device`. Returns the (same) model."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for block in model.blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward)
    return model


def is_sharded(model: nn.Module) -> bool:
    """True for a model whose parameters are FSDP2 shards (DTensors)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def grad_sync(runner: nn.Module, sync: bool):
    """Gradient accumulation: DDP skips the all-reduce for all micro-batches but the last."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(runner, DistributedDataParallel) and not sync:
        return runner.no_sync()
    return contextlib.nullcontext()


def full_value(tensor: torch.Tensor) -> float:
    """A scalar as a float, gathering it first when it is a DTensor (FSDP gradient norms)."""
    return (tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor).item()
