"""`wantune bench speed --profile`: one step's kernels grouped by category (CPU: aten operators)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from wantune.models.variants import TINY, get_variant
from wantune.perf.profile import breakdown, category, profile_step
from wantune.perf.setup import TrainSetup, prepare_plain


def test_kernel_names_from_gpu_traces_fall_in_their_category():
    names = {  # kernel names as torch.profiler reports them on an H100 (cuBLAS, cuDNN SDPA, ATen, Inductor)
        "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64_warpgroupsize2x1x1_execute": "matmul",
        "nvjet_tst_192x192_64x4_1x2_h_bz_coopB_TNT": "matmul",
        "sm90_xmma_gemm_e4m3e4m3_bf16f32_f32_tn_n_tilesize128x128x128": "matmul_fp8",
        "nvjet_sm90_qqtst_128x128_128x6_1x2_h_bz_ovscale_TNT": "matmul_fp8",  # _scaled_mm rowwise (H100)
        "void at::native::elementwise_kernel<128, 4, at::native::gpu_kernel_impl_nocast<at::native::"
        "float8_copy_kernel_cuda(at::TensorIteratorBase&)": "copy",
        "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x128_4x1x1_kernel0_0":
            "attention_forward",
        "cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_7_64x128x128_4x1x1_kernel0_0":
            "attention_backward",
        "void pytorch_flash::flash_bwd_dot_do_o_kernel<true, Flash_bwd_kernel_traits<128>>": "attention_backward",
        "fmha_cutlassB_bf16_aligned_64x64_k64_sm80": "attention_backward",
        "triton_poi_fused__to_copy_add_mul_0": "fused_compiled",
        "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>>":
            "elementwise",
        "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>": "optimizer",
        "Memcpy DtoH (Device -> Pinned)": "copy",
        "void at::native::reduce_kernel<512, 1, ReduceOp<float, MeanOps<float>>>": "reduction",
        "some_unknown_kernel": "other",
    }
    assert {n: category(n) for n in names} == names


def test_breakdown_sums_and_ranks():
    out = breakdown({"aten::addmm": (3, 0.5), "aten::mul": (10, 0.25), "aten::mm": (2, 0.25),
                     "## Call CompiledFxGraph fy57nsx2jvveb3m5 ##": (8, 0.125)}, top=2)  # an annotation: left out
    assert out["kernel_seconds"] == 1.0
    assert out["categories"] == {"matmul": {"seconds": 0.75, "share": 0.75},
                                 "elementwise": {"seconds": 0.25, "share": 0.25}}
    assert [k["name"] for k in out["top_kernels"]] == ["aten::addmm", "aten::mul"]


def test_profile_of_a_real_training_step_on_the_cpu():
    variant = get_variant("wan2.2-i2v-a14b", **{**TINY, "num_layers": 2})
    cfg = SimpleNamespace(rank=4, block_swap=0, seed=0, batch=1, frames=5, height=64, width=64)
    setup = TrainSetup.build(variant, cfg, torch.device("cpu"), "bf16")
    prepare_plain(setup)
    setup.step()  # warm-up
    out = profile_step(setup.step, torch.device("cpu"))
    cats = out["categories"]
    for needed in ("matmul", "attention_forward", "attention_backward", "elementwise"):
        assert cats[needed]["seconds"] > 0, cats
    assert abs(sum(c["seconds"] for c in cats.values()) - out["kernel_seconds"]) < 1e-4
    assert abs(sum(c["share"] for c in cats.values()) - 1.0) < 1e-3
    seconds = [k["seconds"] for k in out["top_kernels"]]
    assert seconds == sorted(seconds, reverse=True) and len(seconds) <= 40
    ops = out["top_ops"]  # by operator and input shapes: the block Linears' matmuls show their shapes
    assert ops and all(op["op"].startswith("aten::") and op["calls"] >= 1 for op in ops)
    dim = variant.dim
    assert any(op["op"] in ("aten::mm", "aten::addmm") and str(dim) in op["shapes"] for op in ops), ops
