"""LoRA network, files, stacking and merging on tiny Wan models (oracles: plain weight algebra, the official
manifests, and diffusers' own converters for kohya/ComfyUI alpha handling)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import manifest
from safetensors import safe_open
from safetensors.torch import save_file

from wantune.errors import UserError
from wantune.lora import (LoraWeights, apply_lora, attach_loras, detach_loras, load_lora, merge_lora, save_lora,
                          write_lora)
from wantune.lora.formats import from_canonical
from wantune.models.transformer import WanModel
from wantune.models.variants import TINY, get_variant


DIFFUSERS_NAMES = {
    "self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0", "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k",
    "cross_attn.v": "attn2.to_v", "cross_attn.o": "attn2.to_out.0", "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2",
}
"""Block Linear names in diffusers, written out here as an independent check of the converters."""


def tiny_model(name: str = "wan2.1-t2v-14b", seed: int = 0) -> WanModel:
    torch.manual_seed(seed)
    return WanModel(get_variant(name, **TINY)).eval()


def tiny_inputs(model: WanModel, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    v = model.variant
    inputs = dict(x_BCFHW=torch.randn(1, v.latent_channels, 2, 4, 4, generator=g), t=torch.tensor([700.0]),
                  context_BLD=torch.randn(1, 6, v.text_dim, generator=g))
    if v.in_dim > v.latent_channels:
        inputs["y_BCFHW"] = torch.randn(1, v.in_dim - v.latent_channels, 2, 4, 4, generator=g)
    if v.has_image_embedding:
        inputs["clip_fea_BKD"] = torch.randn(1, 257, 1280, generator=g)
    return inputs


def run(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs)


def random_lora(model, rank=4, alpha=8.0, seed=2, **kwargs):
    """apply_lora, then give B random values so the LoRA does something."""
    network = apply_lora(model, rank, alpha, **kwargs)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in network.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return network


@pytest.mark.parametrize("name", ["wan2.1-t2v-14b", "wan2.1-i2v-14b"])
def test_zero_initialised_lora_changes_nothing_and_only_lora_trains(name):
    model = tiny_model(name)
    inputs = tiny_inputs(model)
    base_sd = {k: v.clone() for k, v in model.state_dict().items()}
    before = run(model, inputs)
    network = apply_lora(model, rank=4, alpha=4, dropout=0.1)
    model.eval()
    assert torch.equal(run(model, inputs), before)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in network.parameters()} and trainable
    # the base keeps its official names and values
    after_sd = model.state_dict()
    assert all(torch.equal(after_sd[k], v) for k, v in base_sd.items())
    # gradients reach only the LoRA; B starts at zero so only B gets a gradient at step 0
    model.train()
    model(**inputs).square().mean().backward()
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)
    grads_b = [a.lora_B.weight.grad.abs().sum() for a in network.adapters.values()]
    assert all(g > 0 for g in grads_b)


def test_targets_include_exclude():
    i2v = tiny_model("wan2.1-i2v-14b")
    assert len(apply_lora(i2v, 2, 2).adapters) == 2 * 12
    t2v = tiny_model()
    network = apply_lora(t2v, 2, 2, targets=["self_attn.q", "ffn.0", "cross_attn.k_img"],
                         include=r"^blocks\.1\.", exclude=r"ffn")
    assert list(network.adapters) == ["blocks.1.self_attn.q"]
    assert network.targets == ["self_attn.q"]
    with pytest.raises(UserError, match="head.head"):
        apply_lora(tiny_model(), 2, 2, targets=["head.head"])
    with pytest.raises(UserError, match="no Linear layer matches"):
        apply_lora(tiny_model(), 2, 2, include="nothing-here")
    with pytest.raises(UserError, match="regex"):
        apply_lora(tiny_model(), 2, 2, exclude="(")
    with pytest.raises(UserError, match="already carries a trainable LoRA"):
        apply_lora(t2v, 2, 2)
    network.remove()
    assert type(t2v.blocks[1].self_attn.q) is torch.nn.Linear
    assert set(t2v.state_dict()) == set(tiny_model().state_dict())


def test_network_state_dict_resumes_training_state():
    trained = random_lora(tiny_model(), rank=4, alpha=8.0)
    state = trained.state_dict()
    assert set(state) == {f"{p}.lora_{x}.weight" for p in trained.adapters for x in "AB"}
    resumed = apply_lora(tiny_model(), rank=4, alpha=8.0)
    resumed.load_state_dict(state)
    assert all(torch.equal(p, q) for p, q in zip(trained.parameters(), resumed.parameters()))
    with pytest.raises(UserError, match="missing from the saved LoRA state"):
        apply_lora(tiny_model(), rank=4, alpha=8.0).load_state_dict({k: v for k, v in state.items() if "ffn" not in k})
    with pytest.raises(UserError, match="shape"):
        apply_lora(tiny_model(), rank=2, alpha=8.0).load_state_dict(state)


def test_lora_output_equals_base_plus_scaled_delta():
    """The LoRA path is (alpha/rank) * B A x: same output as adding that delta to the weights by hand."""
    model = tiny_model("wan2.1-i2v-14b")
    inputs = tiny_inputs(model)
    network = random_lora(model, rank=4, alpha=2.0)
    with_lora = run(model, inputs)
    reference = tiny_model("wan2.1-i2v-14b")
    params = dict(reference.named_parameters())
    with torch.no_grad():
        for path, adapter in network.adapters.items():
            params[f"{path}.weight"] += 0.5 * adapter.lora_B.weight @ adapter.lora_A.weight
    torch.testing.assert_close(with_lora, run(reference, inputs), rtol=1e-5, atol=1e-5)


def test_save_writes_comfyui_layout_with_metadata_and_loads_back(tmp_path):
    model = tiny_model()
    network = random_lora(model, rank=3, alpha=6.0)
    path = save_lora(tmp_path / "out.safetensors", network, {"lr": 1e-4, "steps": 100, "note": "x"}, expert="high")
    with safe_open(str(path), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    assert len(keys) == 2 * len(network.adapters)
    assert all(k.startswith("diffusion_model.blocks.") and k.endswith((".lora_A.weight", ".lora_B.weight"))
               for k in keys)
    assert meta["wantune.base_variant"] == "wan2.1-t2v-14b" and meta["wantune.rank"] == "3"
    assert meta["wantune.alpha"] == "6" and meta["wantune.expert"] == "high"
    assert json.loads(meta["wantune.targets"])[0] == "self_attn.q"
    assert json.loads(meta["lr"]) == 1e-4 and meta["note"] == "x"
    assert not list(tmp_path.glob(".*tmp*"))
    weights = load_lora(path)
    assert weights.format == "comfyui" and weights.ranks == [3]
    for path_, (a, b) in network.lora_weights().items():
        torch.testing.assert_close(weights.modules[path_][0], a, rtol=0, atol=0)
        torch.testing.assert_close(weights.modules[path_][1], b, rtol=0, atol=0)  # alpha/rank folded in
    with pytest.raises(UserError, match="expert"):
        save_lora(tmp_path / "bad.safetensors", network, expert="both")


@pytest.mark.parametrize("name,manifest_name", [("wan2.1-t2v-14b", "wan2.1_t2v_14B"),
                                                ("wan2.1-i2v-14b", "wan2.1_i2v_14B"),
                                                ("wan2.2-ti2v-5b", "wan2.2_ti2v_5B")])
def test_full_size_lora_keys_name_linears_of_the_official_manifest(name, manifest_name):
    """What ComfyUI matches: `diffusion_model.<module>.lora_A.weight` -> `<module>.weight` in the checkpoint."""
    with torch.device("meta"):
        model = WanModel(get_variant(name))
    network = apply_lora(model, rank=1, alpha=1)
    tensors = manifest(manifest_name)
    keys = from_canonical(network.lora_weights(), "comfyui")
    assert len(keys) == 2 * model.variant.num_layers * (12 if model.variant.has_image_embedding else 10)
    for key, tensor in keys.items():
        module = key.removeprefix("diffusion_model.").rsplit(".", 2)[0]
        out_features, in_features = tensors[f"{module}.weight"][0]
        expected = (1, in_features) if key.endswith("lora_A.weight") else (out_features, 1)
        assert tuple(tensor.shape) == expected, key


def test_kohya_and_comfyui_alpha_scaling_matches_diffusers_converters(tmp_path):
    """Oracle: diffusers' own musubi / non-diffusers Wan converters; B A products must agree with ours."""
    from diffusers.loaders.lora_conversion_utils import (_convert_musubi_wan_lora_to_diffusers,
                                                         _convert_non_diffusers_wan_lora_to_diffusers)

    model = tiny_model()
    network = random_lora(model, rank=4, alpha=4)
    modules = {p: (a, b) for p, (a, b) in network.lora_weights().items()}
    kohya = from_canonical(modules, "kohya")
    comfy = from_canonical(modules, "comfyui")
    for path in modules:  # files with alpha 2.5 at rank 4
        kohya[f"lora_unet_{path.replace('.', '_')}.alpha"] = torch.tensor(2.5)
        comfy[f"diffusion_model.{path}.alpha"] = torch.tensor(2.5)
    for layout, sd, convert in [("kohya", kohya, _convert_musubi_wan_lora_to_diffusers),
                                ("comfyui", comfy, _convert_non_diffusers_wan_lora_to_diffusers)]:
        save_file(sd, str(tmp_path / f"{layout}.safetensors"))
        ours = load_lora(tmp_path / f"{layout}.safetensors")
        assert ours.format == layout
        theirs = convert({k: v.clone() for k, v in sd.items()})  # it scales some in place
        for path, (a, b) in ours.modules.items():
            block, _, name = path.partition(".")[2].partition(".")
            dname = f"blocks.{block}.{DIFFUSERS_NAMES[name]}"
            expected = theirs[f"transformer.{dname}.lora_B.weight"] @ theirs[f"transformer.{dname}.lora_A.weight"]
            torch.testing.assert_close(b.float() @ a.float(), expected, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(b.float() @ a.float(), modules[path][1] @ modules[path][0] * 2.5 / 4)


def test_stacked_loras_equal_merging_both_and_detach_restores_base():
    model = tiny_model()
    inputs = tiny_inputs(model)
    base = run(model, inputs)
    first = LoraWeights(random_lora(tiny_model(), 4, 4, seed=3).lora_weights(), source="first")
    second = LoraWeights(random_lora(tiny_model(), 2, 1, seed=4, targets=["ffn.0", "ffn.2"]).lora_weights(),
                         source="second")
    attach_loras(model, [(first, 0.7), (second, 0.5)])
    stacked = run(model, inputs)
    merged = tiny_model()
    merge_lora(merged, first, 0.7)
    merge_lora(merged, second, 0.5)
    torch.testing.assert_close(stacked, run(merged, inputs), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(stacked, base)
    detach_loras(model)
    assert torch.equal(run(model, inputs), base)
    assert set(model.state_dict()) == set(tiny_model().state_dict())


def test_merge_is_dtype_aware():
    model = tiny_model().to(torch.bfloat16)
    weights = LoraWeights(random_lora(tiny_model(), 4, 4).lora_weights())
    expected = {}
    for path, (a, b) in weights.modules.items():
        w = model.get_submodule(path).weight
        expected[path] = (w.float() + 0.8 * (b @ a)).to(torch.bfloat16)
    merge_lora(model, weights, 0.8)
    for path in weights.modules:
        assert model.get_submodule(path).weight.dtype == torch.bfloat16
        assert torch.equal(model.get_submodule(path).weight.detach(), expected[path])


def test_bad_lora_inputs_raise_one_line_errors(tmp_path):
    model = tiny_model()
    with pytest.raises(UserError, match="no such LoRA file"):
        load_lora(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="not a readable safetensors"):
        load_lora(tmp_path / "junk.safetensors")
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(2, 64),
               "diffusion_model.blocks.0.self_attn.q.lora_B.weight": torch.zeros(64, 2),
               "diffusion_model.blocks.0.self_attn.q.diff_b": torch.zeros(64)}, str(tmp_path / "diff.safetensors"))
    with pytest.raises(UserError, match=r"diff\.safetensors: key .*diff_b"):
        load_lora(tmp_path / "diff.safetensors")
    save_file({"diffusion_model.blocks.0.mystery.lora_A.weight": torch.zeros(2, 64),
               "diffusion_model.blocks.0.mystery.lora_B.weight": torch.zeros(64, 2)}, str(tmp_path / "u.safetensors"))
    with pytest.raises(UserError, match="u.safetensors: key .*mystery"):
        load_lora(tmp_path / "u.safetensors")
    save_file({"lora_unet_blocks_0_self_attn_q.lora_down.weight": torch.zeros(2, 64)}, str(tmp_path / "h.safetensors"))
    with pytest.raises(UserError, match="no lora_B/lora_up"):
        load_lora(tmp_path / "h.safetensors")
    # a LoRA for a bigger model (e.g. 14B on 1.3B): one line on attach and merge, model unchanged
    with torch.device("meta"):
        big = WanModel(get_variant("wan2.1-t2v-1.3b", num_layers=2))
    wrong = LoraWeights(random_lora(big, 1, 1).lora_weights(), source="big.safetensors")
    wrong.modules = {p: (torch.zeros(a.shape), torch.zeros(b.shape)) for p, (a, b) in wrong.modules.items()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for apply in (lambda: attach_loras(model, [(wrong, 1.0)]), lambda: merge_lora(model, wrong)):
        with pytest.raises(UserError, match=r"big.safetensors: blocks.0.self_attn.q is 1536->1536 in the LoRA but "
                                            r"64->64 in the model"):
            apply()
    assert set(model.state_dict()) == set(before)
    i2v_lora = LoraWeights(random_lora(tiny_model("wan2.1-i2v-14b"), 1, 1).lora_weights(), source="i2v.safetensors")
    with pytest.raises(UserError, match="k_img is not a Linear of this model"):
        attach_loras(model, [(i2v_lora, 1.0)])
    with pytest.raises(UserError, match="unknown LoRA format"):
        write_lora(tmp_path / "x.safetensors", i2v_lora, "onnx")


def test_other_spellings_read_to_the_same_weights(tmp_path):
    """No prefix + lora_down/lora_up + .alpha (comfyui-ish), and diffusers with .alpha, read like the original."""
    network = random_lora(tiny_model(), rank=4, alpha=4, targets=["self_attn.o", "ffn.2"])
    modules = network.lora_weights()
    plain, diffusers_sd = {}, from_canonical(modules, "diffusers")
    for path, (a, b) in modules.items():
        plain[f"{path}.lora_down.weight"], plain[f"{path}.lora_up.weight"] = a, b * 2
        plain[f"{path}.alpha"] = torch.tensor(2.0)  # scale 2 / 4 on a doubled B: the same product
    for key in [k for k in diffusers_sd if k.endswith(".lora_A.weight")]:
        diffusers_sd[key.replace(".lora_A.weight", ".alpha")] = torch.tensor(4.0)
    ffn_only = {k.removeprefix("transformer."): v for k, v in diffusers_sd.items() if ".ffn." in k}
    for name, sd in [("plain", plain), ("diffusers", diffusers_sd), ("ffn_only", ffn_only)]:
        save_file(sd, str(tmp_path / f"{name}.safetensors"))
        back = load_lora(tmp_path / f"{name}.safetensors")
        assert back.format == ("comfyui" if name == "plain" else "diffusers")
        assert back.modules.keys() == {p for p in modules if name != "ffn_only" or ".ffn." in p}
        for path in back.modules:
            a, b = modules[path]
            torch.testing.assert_close(back.modules[path][1] @ back.modules[path][0], b @ a, rtol=1e-6, atol=1e-7)


def test_lora_outside_the_blocks_merges_but_does_not_stack(tmp_path):
    model = tiny_model()
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(2, 64, generator=g), torch.randn(64, 2, generator=g)
    save_file({"diffusion_model.head.head.lora_A.weight": a, "diffusion_model.head.head.lora_B.weight": b},
              str(tmp_path / "head.safetensors"))
    weights = load_lora(tmp_path / "head.safetensors")
    assert list(weights.modules) == ["head.head"]
    with pytest.raises(UserError, match="outside the transformer blocks"):
        attach_loras(model, [(weights, 1.0)])
    expected = model.head.head.weight.detach() + 0.5 * b @ a
    merge_lora(model, weights, 0.5)
    torch.testing.assert_close(model.head.head.weight.detach(), expected)
