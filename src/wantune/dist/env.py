"""The process group from torchrun's environment, and the few collectives training needs.

`setup(device)` reads RANK, WORLD_SIZE, LOCAL_RANK (and MASTER_ADDR/MASTER_PORT, read by torch) as torchrun
sets them. With WORLD_SIZE unset or 1 nothing is initialised and every helper here is a no-op, so the
single-process path is the plain one. On CUDA each process takes GPU `LOCAL_RANK`, and the group uses
NCCL for CUDA tensors and gloo for CPU tensors (the logging scalars and Python objects below); on a
CPU-only machine it is gloo alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from wantune.errors import UserError


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int = 0
    """Global rank (0 .. world-1); rank 0 writes files and logs."""
    world: int = 1
    """Number of processes (GPUs) in the job."""
    local_rank: int = 0
    """Rank on this machine: the GPU index."""
    device: torch.device = torch.device("cpu")
    """The device this process trains on."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def _from_environ() -> tuple[int, int, int]:
    try:
        return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise UserError("RANK/WORLD_SIZE/LOCAL_RANK: not integers; launch with torchrun") from None


def setup(device: str = "auto", timeout_minutes: float = 30.0) -> DistEnv:
    """Join the torchrun job (if any) and pick this process's device; returns where this process sits."""
    rank, world, local_rank = _from_environ()
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if world <= 1:
        return DistEnv(device=torch.device(device if device != "auto" else ("cuda" if use_cuda else "cpu")))
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK={local_rank}: this machine has {torch.cuda.device_count()} GPUs; "
                            "start at most that many processes per machine (--nproc_per_node)")
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if use_cuda else "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=timeout_minutes),
                                device_id=torch.device("cuda", local_rank) if use_cuda else None)
    where = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return DistEnv(rank, world, local_rank, where)


def teardown() -> None:
    """Leave the process group (end of a run)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one that writes files, logs and previews."""
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_mean(value: float) -> float:
    """The mean of a Python number over all ranks (losses for logging and skip decisions)."""
    if not dist.is_initialized():
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.item() / dist.get_world_size()


def broadcast_object(obj):
    """Rank 0's `obj` on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
