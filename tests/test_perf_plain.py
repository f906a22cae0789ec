"""Plain (un-checkpointed) blocks: what a plain block keeps against a checkpointed one (counted with saved-tensor
hooks), the count `--plain-blocks auto` takes from the memory estimate, re-wiring that keeps the fused block
forward, and the bench flag."""

from __future__ import annotations

import contextlib
import functools
from types import SimpleNamespace

import torch
from torch import nn

from wantune.models.variants import TINY, get_variant
from wantune.perf import compile as fast
from wantune.perf.ac_policy import unwrap_blocks, wrap_blocks
from wantune.perf.compile import install_fast_blocks
from wantune.perf.memory import estimate_memory
from wantune.perf.plain import plain_blocks_that_fit
from wantune.perf.setup import TrainSetup


@contextlib.contextmanager
def _counting_saved(module: nn.Module, counter: dict):
    """While active, every tensor autograd saves during `module`'s forward is recorded in `counter`
    (storage pointer -> bytes); parameters of `module` are left out."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    active = []

    def pack(tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            counter[storage.data_ptr()] = max(counter.get(storage.data_ptr(), 0), storage.nbytes())
        return tensor

    def enter(*_):
        active.append(torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor))
        active[-1].__enter__()

    def leave(*_):
        active.pop().__exit__(None, None, None)

    handles = [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    try:
        yield counter
    finally:
        for handle in handles:
            handle.remove()


def saved_bytes(module: nn.Module, forward) -> int:
    """Bytes `module`'s forward leaves saved for the backward when `forward()` runs it once with grad."""
    counter: dict[int, int] = {}
    with _counting_saved(module, counter):
        out = forward()
    del out
    return sum(counter.values())


def _setup() -> TrainSetup:
    variant = get_variant("wan2.2-i2v-a14b", **{**TINY, "num_layers": 3})
    cfg = SimpleNamespace(rank=4, block_swap=0, seed=0, batch=1, frames=5, height=64, width=64)
    return TrainSetup.build(variant, cfg, torch.device("cpu"), "bf16")


def test_saved_bytes_of_a_small_mlp_equal_the_hand_count():
    # Linear saves its input, GELU its input, the second Linear its input (GELU's output); weights are parameters
    rows, width, hidden = 7, 12, 20
    mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
    x = torch.randn(rows, width, requires_grad=True)
    assert saved_bytes(mlp, lambda: mlp(x)) == 4 * rows * (width + 2 * hidden)
    frozen = torch.randn(rows, width)  # nothing needs a gradient: nothing is saved
    mlp.requires_grad_(False)
    assert saved_bytes(mlp, lambda: mlp(frozen)) == 0


def test_a_plain_block_saves_far_more_than_a_checkpointed_one():
    setup = _setup()
    install_fast_blocks(setup.model, compile=False)
    wrap_blocks(setup.model, save_attention=True, min_kv_tokens=1, plain_blocks=1)
    last, first = setup.model.blocks[-1], setup.model.blocks[0]
    plain = saved_bytes(last, setup.loss)
    checkpointed = saved_bytes(first, setup.loss)
    tokens, dim = setup.inputs["x_BCFHW"][0, 0].numel() // 4, setup.model.blocks[0].norm1.normalized_shape[0]
    assert plain > 20 * tokens * dim  # tens of bytes per token x model dim (docs/performance.md)
    assert checkpointed < plain / 4


def test_auto_takes_the_most_plain_blocks_whose_estimate_fits():
    assert plain_blocks_that_fit(lambda n: 50 + 6 * n, 80, 40) == 3  # 68 <= 72 < 74
    assert plain_blocks_that_fit(lambda n: 75 + n, 80, 40) == 0  # already over: none
    assert plain_blocks_that_fit(lambda n: 10 + 0.1 * n, 80, 40) == 40  # at most every block
    # the 14B expert at 41f 768x768 on an 80 GB H100 (79.2 GiB): 3 in fp8-all (3 ran, 4 ran out of memory), 1 in
    # bf16 (2 ran out), as measured in sessions 12-13 (docs/performance.md)
    variant = get_variant("wan2.2-i2v-a14b")
    for precision, measured in (("fp8-all", 3), ("bf16", 1)):
        shape = (variant, 41, 768, 768, 1, 32, precision, 0, True, False)
        fit = plain_blocks_that_fit(lambda n: estimate_memory(*shape, plain_blocks=n).total_gib, 79.2, 40)
        assert fit == measured, precision


def test_rewrapping_keeps_the_fused_block_forward():
    setup = _setup()
    install_fast_blocks(setup.model, compile=False)
    fused = [block.forward for block in setup.model.blocks]
    wrap_blocks(setup.model, save_attention=True, min_kv_tokens=1, plain_blocks=1)
    wrap_blocks(setup.model, save_attention=True, min_kv_tokens=1, plain_blocks=3)  # re-sized, as the bench does
    for block, inner in zip(setup.model.blocks, fused):
        assert block.forward.args[0] is inner  # the checkpoint wrapper runs the fused forward
    unwrap_blocks(setup.model)
    for block, inner in zip(setup.model.blocks, fused):
        assert isinstance(block.forward, functools.partial) and block.forward.func is fast.fast_block_forward
        assert block.forward is inner


def test_bad_plain_blocks_flag_is_one_line(capsys):
    from wantune.cli import main

    assert main(["bench", "speed", "--plain-blocks", "many"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--plain-blocks many" in err[0] and "Traceback" not in err[0]
