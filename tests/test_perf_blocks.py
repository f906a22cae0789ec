"""Selective checkpointing, activation offload, block swap and the fused block forward on the CPU: the same
code paths as on the GPU (streams and pinning are no-ops there) give the plain path's loss and LoRA grads."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from wantune.errors import UserError
from wantune.models.variants import TINY, get_variant
from wantune.perf import ac_policy, numerics
from wantune.perf.ac_policy import attention_policy, wrap_blocks
from wantune.perf.blockswap import BlockSwapper
from wantune.perf.compile import install_fast_blocks
from wantune.perf.setup import TrainSetup, prepare_plain, reset_blocks


def _setup(name="wan2.2-i2v-a14b", block_swap=0, **sizes) -> TrainSetup:
    variant = get_variant(name, **{**TINY, "num_layers": 3, **sizes})
    cfg = SimpleNamespace(rank=4, block_swap=block_swap, seed=0, batch=1, frames=5, height=64, width=64)
    return TrainSetup.build(variant, cfg, torch.device("cpu"), "bf16")


@pytest.fixture(scope="module")
def plain_result():
    setup = _setup()
    prepare_plain(setup)
    return setup.loss_and_grads()


def _assert_same(plain, result, exact=True):
    report = numerics.summarise(*plain, *result)
    if exact:
        assert report["loss_rel_diff"] == 0 and report["grad_rel_l2"] == 0, report
    else:
        assert report["loss_rel_diff"] < 1e-3 and report["grad_rel_l2"] < 2e-2, report


def test_selective_checkpointing_saves_attention_and_gives_identical_grads(plain_result, monkeypatch):
    decisions = []
    policy = attention_policy(min_kv_tokens=1)

    def counting(ctx, op, *args, **kwargs):
        decision = policy(ctx, op, *args, **kwargs)
        decisions.append((str(op), decision))
        return decision

    monkeypatch.setattr(ac_policy, "attention_policy", lambda min_kv_tokens: counting)
    setup = _setup()
    wrap_blocks(setup.model, save_attention=True, min_kv_tokens=1)
    _assert_same(plain_result, setup.loss_and_grads())
    saved = [op for op, d in decisions if d == torch.utils.checkpoint.CheckpointPolicy.MUST_SAVE]
    assert saved and all("scaled_dot_product" in op for op in saved)


def test_long_keys_only_policy_skips_cross_attention():
    q = torch.zeros(1, 2, 100, 8)
    policy = attention_policy(min_kv_tokens=64)
    op = ac_policy._SDPA_OPS[0]
    assert policy(None, op, q, torch.zeros(1, 2, 100, 8), q) == torch.utils.checkpoint.CheckpointPolicy.MUST_SAVE
    assert policy(None, op, q, torch.zeros(1, 2, 10, 8), q) == torch.utils.checkpoint.CheckpointPolicy.PREFER_RECOMPUTE


def test_offloaded_block_inputs_give_identical_grads(plain_result):
    setup = _setup()
    wrap_blocks(setup.model, save_attention=True, min_kv_tokens=1, offload=True)
    _assert_same(plain_result, setup.loss_and_grads())


@pytest.mark.parametrize("checkpointing", [True, False])
def test_block_swap_gives_identical_grads_and_leaves_blocks_unloaded(plain_result, checkpointing):
    setup = _setup(block_swap=2)
    wrap_blocks(setup.model, save_attention=checkpointing, min_kv_tokens=1, offload=checkpointing,
                swapper=setup.swapper, checkpointing=checkpointing)
    _assert_same(plain_result, setup.loss_and_grads())
    for index in (0, 1):
        q = setup.model.blocks[index].self_attn.q
        assert q.weight.numel() == 0  # streamed out again after its backward
        assert q.adapters["lora"].lora_A.weight.numel() > 0  # trainable LoRA never leaves
    assert setup.model.blocks[2].self_attn.q.weight.numel() > 0
    setup.step()  # a full step with the optimiser still runs
    assert setup.swapper.swapped_bytes > 0


def test_swapped_block_without_load_fails_loudly():
    setup = _setup(block_swap=1)
    with pytest.raises(RuntimeError):
        setup.loss()  # no wrap_blocks: the swapped block runs on its empty placeholders
    with pytest.raises(UserError, match="block-swap"):
        BlockSwapper(setup.model, 9, "cpu")


@pytest.mark.parametrize("name,sizes", [("wan2.2-i2v-a14b", {}), ("wan2.1-i2v-14b", {}),
                                        ("wan2.1-t2v-1.3b", {"qk_norm": False, "cross_attn_norm": False})])
def test_fused_block_forward_matches_wan_block(name, sizes):
    setup = _setup(name, **sizes)
    prepare_plain(setup)
    plain = setup.loss_and_grads()
    reset_blocks(setup.model)
    install_fast_blocks(setup.model, compile=False)
    wrap_blocks(setup.model, save_attention=True, min_kv_tokens=1)
    _assert_same(plain, setup.loss_and_grads())


def test_offload_hooks_keep_strides_and_values():
    from wantune.perf.ac_policy import OFFLOAD_MIN_ELEMENTS, _dense, offload_hooks

    seen = {}

    class SavesTransposed(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a):
            ctx.save_for_backward(a.t())
            return a * 3

        @staticmethod
        def backward(ctx, grad):
            (saved,) = ctx.saved_tensors
            seen["stride"], seen["value"] = saved.stride(), saved.t().clone()
            return grad * 3

    x = torch.randn(4, OFFLOAD_MIN_ELEMENTS, requires_grad=True)
    with offload_hooks(pin=False):
        out = SavesTransposed.apply(x * 1)
    out.sum().backward()
    assert seen["stride"] == x.t().stride() and torch.equal(seen["value"], x.detach())
    assert torch.equal(x.grad, torch.full_like(x, 3.0))
    assert _dense(x.t()) and not _dense(x[:, ::2])


def test_unchecked_last_blocks_give_identical_grads(plain_result):
    setup = _setup()
    install_fast_blocks(setup.model, compile=False)
    wrap_blocks(setup.model, save_attention=True, min_kv_tokens=1, plain_blocks=2)
    _assert_same(plain_result, setup.loss_and_grads())
