"""`--fp8`: block Linear weights stored in float8_e4m3fn, upcast per matmul; LoRAs keep working."""

from __future__ import annotations

import copy

import torch
from conftest import FIXTURES
from safetensors.torch import load_file

from wantune.models.variants import TINY, get_variant
from wantune.sample.fp8 import FP8, quantize_blocks_fp8


def tiny_model():
    from wantune.models.transformer import WanModel

    model = WanModel(get_variant("wan2.1-t2v-1.3b", **TINY)).eval()
    model.load_state_dict(load_file(FIXTURES / "wan21_t2v_tiny.safetensors"))
    return model


def inputs():
    golden = load_file(FIXTURES / "wan21_t2v_tiny.golden.safetensors")
    return golden["x"][None], golden["t"], golden["context"][None]


def test_fp8_equals_weights_rounded_to_fp8():
    model = tiny_model()
    rounded = copy.deepcopy(model)  # oracle: the same weights rounded through fp8, computed normally
    with torch.no_grad():
        for module in rounded.blocks.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(module.weight.to(FP8).float())
    count = quantize_blocks_fp8(model)
    assert count == TINY["num_layers"] * 10  # q, k, v, o twice (self/cross) + ffn.0, ffn.2
    assert model.blocks[0].self_attn.q.weight.dtype == FP8
    assert model.patch_embedding.weight.dtype == torch.float32  # embeddings and head untouched
    with torch.no_grad():
        got, expected = model(*inputs()), rounded(*inputs())
    assert (got - expected).abs().max().item() < 1e-5
    full = tiny_model()(*inputs()).detach()
    assert 0 < (got - full).abs().max().item() < 0.05 * full.abs().max().item()


def test_fp8_after_attached_lora_keeps_the_lora(tmp_path):
    from wantune.lora import apply_lora, attach_loras, load_lora, save_lora

    model = tiny_model()
    network = apply_lora(tiny_model(), rank=4, alpha=4)
    torch.manual_seed(0)
    with torch.no_grad():
        for adapter in network.adapters.values():
            adapter.lora_B.weight.normal_(0, 0.2)
    save_lora(tmp_path / "l.safetensors", network, {})
    lora = load_lora(tmp_path / "l.safetensors")
    plain_fp8 = tiny_model()
    quantize_blocks_fp8(plain_fp8)
    attach_loras(model, [(lora, 1.0)])
    quantize_blocks_fp8(model)
    q = model.blocks[0].self_attn.q
    assert q.weight.dtype == FP8 and all(p.dtype == torch.float32 for p in q.adapters.parameters())
    with torch.no_grad():
        with_lora, without = model(*inputs()), plain_fp8(*inputs())
    assert (with_lora - without).abs().max() > 1e-3  # the LoRA still acts
