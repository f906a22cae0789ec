"""LoRA files vs diffusers: a wantune LoRA loaded by diffusers' `WanPipeline.load_lora_weights` into the twin
`WanTransformer3DModel` gives our model's output; the kohya and diffusers layouts round-trip exactly."""

from __future__ import annotations

import pytest
import torch
from test_diffusers_equivalence import diffusers_twin
from test_lora import random_lora, run, tiny_inputs, tiny_model

from wantune.lora import attach_loras, load_lora, save_lora, write_lora

pytest.importorskip("peft")


def run_twin(twin, model, inputs) -> torch.Tensor:
    v = model.variant
    x = inputs["x_BCFHW"]
    if "y_BCFHW" in inputs:
        x = torch.cat([x, inputs["y_BCFHW"]], dim=1)
    context = torch.nn.functional.pad(inputs["context_BLD"], (0, 0, 0, v.text_len - inputs["context_BLD"].shape[1]))
    with torch.no_grad():
        return twin(x, inputs["t"], context, encoder_hidden_states_image=inputs.get("clip_fea_BKD"),
                    return_dict=False)[0]


@pytest.mark.parametrize("name", ["wan2.1-t2v-14b", "wan2.1-i2v-14b"])
def test_wantune_lora_loads_in_diffusers_with_the_same_output(tmp_path, name):
    from diffusers import WanPipeline

    model = tiny_model(name)
    inputs = tiny_inputs(model)
    twin = diffusers_twin(model)
    base = run_twin(twin, model, inputs)
    network = random_lora(model, rank=4, alpha=2.0)
    ours = run(model, inputs)
    path = save_lora(tmp_path / "lora.safetensors", network, {"steps": 10})

    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=None, transformer=twin)
    pipe.load_lora_weights(str(path))
    theirs = run_twin(twin, model, inputs)
    assert (theirs - base).abs().max() > 1e-2  # the LoRA does something in diffusers
    err = (ours - theirs).abs().max().item()
    assert err < 1e-4, f"max abs diff {err:.3g} vs diffusers with the LoRA"


def test_kohya_and_diffusers_layouts_round_trip_exactly(tmp_path):
    model = tiny_model("wan2.1-i2v-14b")
    inputs = tiny_inputs(model)
    network = random_lora(model, rank=4, alpha=8.0, dtype=torch.bfloat16)
    comfy = load_lora(save_lora(tmp_path / "comfy.safetensors", network))
    outputs = {}
    for fmt in ("kohya", "diffusers", "comfyui"):
        back = load_lora(write_lora(tmp_path / f"{fmt}.safetensors", comfy, fmt))
        assert back.format == fmt and back.metadata["wantune.rank"] == "4"
        assert back.modules.keys() == comfy.modules.keys()
        for path, (a, b) in comfy.modules.items():
            assert torch.equal(back.modules[path][0], a) and torch.equal(back.modules[path][1], b), path
        fresh = tiny_model("wan2.1-i2v-14b")
        attach_loras(fresh, [(back, 1.0)])
        outputs[fmt] = run(fresh, inputs)
    assert torch.equal(outputs["kohya"], outputs["comfyui"]) and torch.equal(outputs["diffusers"], outputs["comfyui"])


@pytest.mark.parametrize("fmt", ["kohya", "diffusers"])
def test_converted_files_load_in_diffusers(tmp_path, fmt):
    """diffusers reads our kohya (its musubi converter needs every module and `.alpha`) and diffusers outputs."""
    from diffusers import WanPipeline

    model = tiny_model()
    inputs = tiny_inputs(model)
    twin = diffusers_twin(model)
    network = random_lora(model, rank=2, alpha=1.0)
    ours = run(model, inputs)
    comfy = load_lora(save_lora(tmp_path / "comfy.safetensors", network))
    path = write_lora(tmp_path / f"{fmt}.safetensors", comfy, fmt)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=None, transformer=twin)
    pipe.load_lora_weights(str(path))
    torch.testing.assert_close(run_twin(twin, model, inputs), ours, rtol=1e-4, atol=1e-4)
