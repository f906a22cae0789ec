"""Flow-matching objective: σ sampling, shift, expert ranges, noisy inputs (diffusers as the oracle), TI2V."""

import math

import pytest
import torch

from wantune.train.config import TimestepConfig
from wantune.train.objective import (SigmaRange, config_range, differential_target, draw_sigmas, make_inputs,
                                     masked_mse_B, sample_sigmas, shift_sigma, temporal_mse_B)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_shift_matches_diffusers_flow_match_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    for s in (3.0, 5.0, 12.0):
        sched = FlowMatchEulerDiscreteScheduler(shift=s)
        unshifted = torch.linspace(1.0, 1 / 1000, 1000)
        assert torch.allclose(shift_sigma(unshifted, s), sched.sigmas, atol=1e-5)
        assert torch.allclose(shift_sigma(unshifted, s) * 1000, sched.timesteps, atol=1e-2)


def test_noisy_input_matches_diffusers_scale_noise():
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=1.0)
    x0 = torch.randn(1, 16, 2, 4, 4, generator=_gen(1))
    noise = torch.randn(1, 16, 2, 4, 4, generator=_gen(2))
    t = sched.timesteps[250]
    sigma = sched.sigmas[250]
    expected = sched.scale_noise(x0, t[None], noise)
    inputs = make_inputs(x0, noise, sigma[None])
    assert torch.allclose(inputs.x_BCFHW, expected, atol=1e-6)
    assert torch.allclose(inputs.target_BCFHW, noise - x0)
    assert torch.allclose(inputs.t, sigma[None] * 1000)


@pytest.mark.parametrize("mode,median", [("uniform", 0.5), ("sigmoid", 0.5), ("logit_normal", 0.5),
                                         ("shift", 3.0 / 4.0)])
def test_sampling_modes_have_expected_median(mode, median):
    sigma = draw_sigmas(20000, TimestepConfig(sampling=mode, discrete_flow_shift=3.0), _gen())
    assert abs(sigma.median().item() - median) < 0.02
    assert sigma.min() >= 0 and sigma.max() <= 1


def test_sigmoid_scale_spreads_and_bias_moves_mass():
    narrow = draw_sigmas(20000, TimestepConfig(sampling="sigmoid", sigmoid_scale=0.5), _gen())
    wide = draw_sigmas(20000, TimestepConfig(sampling="sigmoid", sigmoid_scale=2.0), _gen())
    assert wide.std() > narrow.std() * 1.5
    base = draw_sigmas(20000, TimestepConfig(sampling="uniform"), _gen()).mean()
    high = draw_sigmas(20000, TimestepConfig(sampling="uniform", bias="high_noise"), _gen()).mean()
    low = draw_sigmas(20000, TimestepConfig(sampling="uniform", bias="low_noise"), _gen()).mean()
    assert abs(high - 2 / 3) < 0.01 and abs(low - 1 / 3) < 0.01 and abs(base - 0.5) < 0.01


def test_range_restriction_keeps_distribution_shape():
    cfg = TimestepConfig(sampling="uniform")
    high = sample_sigmas(20000, cfg, _gen(), SigmaRange(0.875, 1.0, True))
    assert high.min() >= 0.875 and abs(high.mean().item() - 0.9375) < 0.003  # uniform on [0.875, 1]
    low = sample_sigmas(5000, cfg, _gen(), SigmaRange(0.0, 0.875, False))
    assert low.max() < 0.875
    # shift sampling restricted to the high expert: same as filtering the unrestricted draws
    shifted = TimestepConfig(sampling="shift", discrete_flow_shift=5.0)
    restricted = sample_sigmas(20000, shifted, _gen(3), SigmaRange(0.9, 1.0, True))
    reference = draw_sigmas(200000, shifted, _gen(4))
    reference = reference[reference >= 0.9]
    assert abs(restricted.mean().item() - reference.mean().item()) < 0.002


def test_min_max_timestep_and_intersection():
    cfg = TimestepConfig(sampling="sigmoid", min_timestep=200, max_timestep=400)
    sigma = sample_sigmas(4000, cfg, _gen(), config_range(cfg))
    assert sigma.min() >= 0.2 and sigma.max() <= 0.4
    assert SigmaRange(0.875, 1.0).intersect(config_range(TimestepConfig(max_timestep=500))) is None
    low = SigmaRange(0.0, 0.9, False).intersect(SigmaRange(0.0, 1.0))
    assert low == SigmaRange(0.0, 0.9, False)


def test_ti2v_first_frame_clean_with_zero_timesteps_and_out_of_loss():
    x0 = torch.randn(2, 48, 3, 4, 6, generator=_gen(1))
    noise = torch.randn_like(x0)
    sigma = torch.tensor([0.3, 0.8])
    inputs = make_inputs(x0, noise, sigma, clean_first_frame=True, patch=(1, 2, 2))
    per_frame = 2 * 3
    assert inputs.t.shape == (2, 3 * per_frame)
    assert (inputs.t[:, :per_frame] == 0).all()
    assert torch.allclose(inputs.t[:, per_frame:], (sigma * 1000)[:, None].expand(2, 2 * per_frame))
    assert torch.equal(inputs.x_BCFHW[:, :, 0], x0[:, :, 0])
    assert torch.allclose(inputs.x_BCFHW[1, :, 1:], 0.2 * x0[1, :, 1:] + 0.8 * noise[1, :, 1:], atol=1e-6)
    pred = inputs.target_BCFHW.clone()
    pred[:, :, 0] += 100.0  # errors on frame 0 do not count
    assert masked_mse_B(pred, inputs.target_BCFHW, inputs.mask_BCFHW).abs().max() == 0


def test_differential_guidance_overshoots_target():
    pred, target = torch.zeros(1, 2, 1, 2, 2), torch.ones(1, 2, 1, 2, 2)
    assert torch.allclose(differential_target(pred, target, 3.0), 3.0 * target)
    assert torch.allclose(differential_target(target, target, 3.0), target)
    assert math.isclose(masked_mse_B(pred, target, None).item(), 1.0)


def test_temporal_loss_sees_motion_not_appearance():
    g = _gen(3)
    target = torch.randn(2, 4, 5, 3, 3, generator=g)
    appearance = torch.randn(2, 4, 1, 3, 3, generator=g)  # the same error on every frame
    assert temporal_mse_B(target + appearance, target, None).abs().max() < 1e-6
    assert masked_mse_B(target + appearance, target, None).min() > 0.1
    pred = torch.randn(2, 4, 5, 3, 3, generator=g)
    by_hand = ((pred[:, :, 1:] - pred[:, :, :-1]) - (target[:, :, 1:] - target[:, :, :-1])).pow(2).flatten(1).mean(1)
    assert torch.allclose(temporal_mse_B(pred, target, None), by_hand)
    assert torch.equal(temporal_mse_B(pred[:, :, :1], target[:, :, :1], None), torch.zeros(2))  # images: no motion
    mask = torch.ones_like(pred)
    mask[:, :, 0] = 0.0  # I2V: frame 0 is given, so its difference to frame 1 does not count either
    shifted = pred.clone()
    shifted[:, :, 0] += 100.0
    assert torch.allclose(temporal_mse_B(shifted, target, mask), temporal_mse_B(pred[:, :, 1:], target[:, :, 1:], None))
