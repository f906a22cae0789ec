"""Block swap: keep the frozen weights of some transformer blocks in pinned CPU memory and stream each block
to the GPU on a side CUDA stream just before it runs (forward, and again for the checkpoint recompute and
backward), overlapped with the previous block's compute.

`BlockSwapper(model, n)` takes the frozen parameters/buffers of the first `n` blocks off the GPU (trainable
LoRA parameters stay). While unloaded, a swapped tensor holds an empty placeholder, so a block that runs without
its weights fails loudly instead of computing garbage. Calls, in step order:
  forward:  `load(i)` before block i (waits for its copy, prefetches the next swapped block), `unload(i)` after;
  backward: `load(i)` when block i is recomputed (prefetching block i-1), `unload(i)` after its backward
            (`BackwardHook`). `ac_policy.wrap_blocks` wires these calls.
On a CPU device the streams and pinning are no-ops and the host copy is a clone: same code path, testable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from wantune.errors import UserError


@dataclass
class _Slot:
    """The swapped frozen tensors of one block."""

    owners: list[tuple[nn.Module, str, bool]]
    """(module, attribute, is_parameter) of each swapped tensor."""
    host: list[torch.Tensor]
    """Their copies in (pinned) CPU memory."""
    device_copies: list[torch.Tensor] | None = None
    """The device tensors while loaded or being loaded."""
    ready: object = None
    """CUDA event recorded on the copy stream when the copy is done (None on CPU)."""
    used: set = field(default_factory=set)


class BlockSwapper:
    """Streams the frozen weights of the first `count` blocks of `model` between pinned CPU memory and `device`."""

    def __init__(self, model: nn.Module, count: int, device: torch.device | str, prepare=None):
        """`prepare(block)`, if given, builds each swapped block on the device just before it is offloaded."""
        blocks = model.blocks
        if not 0 <= count <= len(blocks):
            raise UserError(f"--block-swap {count}: must be between 0 and the model's {len(blocks)} blocks")
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.slots: dict[int, _Slot] = {}
        for i in range(count):
            if prepare is not None:
                prepare(blocks[i])
            self.slots[i] = self._offload(blocks[i])
        self.order = sorted(self.slots)

    def _offload(self, block: nn.Module) -> _Slot:
        owners, host = [], []
        for module in block.modules():
            for store, is_param in ((module._parameters, True), (module._buffers, False)):
                for name, tensor in store.items():
                    if tensor is None or (is_param and tensor.requires_grad):
                        continue
                    copy = tensor.detach().to("cpu", copy=True)
                    host.append(copy.pin_memory() if self.cuda else copy)
                    owners.append((module, name, is_param))
        slot = _Slot(owners, host)
        self._point(slot, [torch.empty(0, dtype=h.dtype, device=self.device) for h in host])
        return slot

    @staticmethod
    def _point(slot: _Slot, tensors: list[torch.Tensor]) -> None:
        for (module, name, is_param), tensor in zip(slot.owners, tensors):
            if is_param:
                module._parameters[name].data = tensor
            else:
                module._buffers[name] = tensor

    @property
    def swapped_bytes(self) -> int:
        return sum(h.numel() * h.element_size() for slot in self.slots.values() for h in slot.host)

    def _prefetch(self, index: int | None) -> None:
        """Start copying block `index` to the device on the side stream (no-op if loaded or not swapped)."""
        slot = self.slots.get(index)
        if slot is None or slot.device_copies is not None:
            return
        if not self.cuda:
            slot.device_copies = [h.clone() for h in slot.host]
            return
        with torch.cuda.stream(self.stream):
            slot.device_copies = [h.to(self.device, non_blocking=True) for h in slot.host]
            slot.ready = torch.cuda.Event()
            slot.ready.record(self.stream)

    def load(self, index: int, backward: bool = False) -> None:
        """Make block `index` resident (wait for its copy) and prefetch the block that runs after it."""
        slot = self.slots.get(index)
        if slot is not None:
            self._prefetch(index)
            if self.cuda:
                current = torch.cuda.current_stream(self.device)
                current.wait_event(slot.ready)
                for tensor in slot.device_copies:
                    tensor.record_stream(current)
            self._point(slot, slot.device_copies)
        self._prefetch(self._neighbour(index, -1 if backward else 1))

    def unload(self, index: int) -> None:
        """Drop block `index`'s device copies (their memory returns once queued work has used them)."""
        slot = self.slots.get(index)
        if slot is None or slot.device_copies is None:
            return
        self._point(slot, [torch.empty(0, dtype=h.dtype, device=self.device) for h in slot.host])
        slot.device_copies, slot.ready = None, None

    def _neighbour(self, index: int, step: int) -> int | None:
        """The next swapped block after `index` in run order (forward: +1, backward: -1)."""
        later = [i for i in self.order if (i - index) * step > 0]
        if not later:
            return None
        return min(later) if step > 0 else max(later)


class BackwardHook(torch.autograd.Function):
    """Identity on a block's input; its backward runs once the block's backward is done and calls `fn()`."""

    @staticmethod
    def forward(ctx, x, fn):
        ctx.fn = fn
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        ctx.fn()
        return grad, None
