"""How many blocks can skip checkpointing (`--plain-blocks auto`): the most whose estimated step peak fits.

A plain block saves the recompute of its forward in the backward (about 7-23 ms a block of the 14B expert at
41f 768x768 on an H100, fp8-all) and keeps every activation its backward needs (5.7-5.96 GiB counted a block
there, session 12). The count comes from the memory estimate (`wantune.perf.memory.estimate_memory`, which
prices a plain block's activations), not from a trial on the GPU: on an H100 a step that had run out of memory
left so much held that even one plain block ran out afterwards, and sizing by one measured plain block's saved
tensors against the step's peak allowed 4 (or 2 from the reserved peak) where the leftovers of the measuring
step then ran out of memory (sessions 12-13). On an H100 (79.2 GiB) at 41f 768x768 the estimate gives 3 for
fp8-all (68.0 GiB; 3 ran with a peak of 60.8 GiB, 4 ran out of memory) and 1 for bf16 (69.5 GiB; 2 ran out).
"""

from __future__ import annotations

from typing import Callable


def plain_blocks_that_fit(estimate_gib: Callable[[int], float], available_gib: float, blocks: int,
                          use: float = 0.9) -> int:
    """The most plain blocks n (at most `blocks`) with `estimate_gib(n)` at most `use` x `available_gib`."""
    count = 0
    while count < blocks and estimate_gib(count + 1) <= use * available_gib:
        count += 1
    return count
