"""Every full-size variant, built on the meta device, has exactly the tensors of the real checkpoints."""

from __future__ import annotations

import pytest
import torch
from conftest import manifest

from wantune.models.diffusers_names import diffusers_to_official, official_to_diffusers
from wantune.models.transformer import WanModel
from wantune.models.variants import TOY_VARIANTS, VARIANTS, get_variant

OFFICIAL_MANIFESTS = {
    "wan2.1-t2v-1.3b": "wan2.1_t2v_1.3B",
    "wan2.1-t2v-14b": "wan2.1_t2v_14B",
    "wan2.1-i2v-14b": "wan2.1_i2v_14B",
    "wan2.1-flf2v-14b": "wan2.1_flf2v_14B",
    "wan2.2-t2v-a14b": "wan2.2_t2v_A14B_expert",
    "wan2.2-i2v-a14b": "wan2.2_i2v_A14B_expert",
    "wan2.2-ti2v-5b": "wan2.2_ti2v_5B",
}
DIFFUSERS_MANIFESTS = {
    "wan2.1-t2v-1.3b": "diffusers_wan2.1_t2v_1.3B",
    "wan2.1-i2v-14b": "diffusers_wan2.1_i2v_14B",
    "wan2.2-t2v-a14b": "diffusers_wan2.2_t2v_A14B_expert",
    "wan2.2-i2v-a14b": "diffusers_wan2.2_i2v_A14B_expert",
    "wan2.2-ti2v-5b": "diffusers_wan2.2_ti2v_5B",
}


def meta_shapes(name: str) -> dict[str, list[int]]:
    with torch.device("meta"):
        model = WanModel(get_variant(name))
    return {key: list(tensor.shape) for key, tensor in model.state_dict().items()}


def test_every_variant_has_a_manifest():
    assert set(OFFICIAL_MANIFESTS) == set(VARIANTS) - set(TOY_VARIANTS)


@pytest.mark.parametrize("name", sorted(OFFICIAL_MANIFESTS))
def test_meta_model_matches_official_manifest(name):
    expected = {key: shape for key, (shape, _) in manifest(OFFICIAL_MANIFESTS[name]).items()}
    got = meta_shapes(name)
    assert sorted(set(got) - set(expected)) == [] and sorted(set(expected) - set(got)) == []
    assert got == expected


@pytest.mark.parametrize("name", sorted(DIFFUSERS_MANIFESTS))
def test_renamed_meta_model_matches_diffusers_manifest(name):
    expected = {key: shape for key, (shape, _) in manifest(DIFFUSERS_MANIFESTS[name]).items()}
    got = official_to_diffusers(meta_shapes(name))
    assert sorted(set(got) - set(expected)) == [] and sorted(set(expected) - set(got)) == []
    assert got == expected
    assert diffusers_to_official(got) == meta_shapes(name)
