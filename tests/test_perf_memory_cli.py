"""Memory estimate (parameter counts against the real model) and the `wantune bench speed` CLI on a CPU box."""

from __future__ import annotations

import pytest
import torch

from wantune.cli import main
from wantune.models.transformer import WanModel
from wantune.models.variants import get_variant
from wantune.perf.memory import GIB, block_params, estimate_memory, lora_params, memory_message, outer_params


@pytest.mark.parametrize("name", ["wan2.2-i2v-a14b", "wan2.1-i2v-14b", "wan2.2-ti2v-5b", "wan2.1-t2v-1.3b"])
def test_parameter_counts_match_the_model(name):
    variant = get_variant(name)
    with torch.device("meta"):
        model = WanModel(variant)
    block = sum(p.numel() for p in model.blocks[0].parameters())
    linear, other = block_params(variant)
    assert linear + other == block
    outside = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(("blocks.", "img_emb.")))
    assert abs(outer_params(variant) - outside) / outside < 0.01


def test_estimate_sane_for_a14b_expert():
    variant = get_variant("wan2.2-i2v-a14b")
    bf16 = estimate_memory(variant, 81, 480, 832, precision="bf16")
    assert 25 < bf16.parts["frozen_weights"] / GIB < 28  # ~14.3B params in bf16
    fp8 = estimate_memory(variant, 81, 480, 832, precision="fp8")
    assert fp8.parts["frozen_weights"] < 0.55 * bf16.parts["frozen_weights"]
    small = estimate_memory(variant, 81, 480, 832, precision="fp8", block_swap=30, save_attention=False,
                            offload=True)
    assert small.total_gib < 24 < bf16.total_gib
    assert lora_params(variant, 32) == pytest.approx(153e6, rel=0.01)
    line = memory_message(bf16, 24.0)
    assert line.startswith(f"this config needs about {bf16.total_gib:.1f} GiB; you have 24.0 GiB")
    assert "too little" in line and "too little" not in memory_message(small, 24.0)


def test_bench_speed_help_and_cpu_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "speed", "--help"])
    assert exit_info.value.code == 0
    assert "--memory-cap-gib" in capsys.readouterr().out
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert main(["bench", "speed", "--layers", "1"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_bench_speed_bad_precision(capsys):
    assert main(["bench", "speed", "--precision", "int4"]) == 2
    assert "--precision int4" in capsys.readouterr().err
