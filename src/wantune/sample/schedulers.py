"""Flow-matching schedulers for Wan sampling, built from diffusers.

`unipc` (the official default: UniPC, bh2, order 2, predictor-corrector on flow sigmas), `dpm++` (DPM-Solver++
order 2 on flow sigmas) and `euler` (flow-match Euler). Each scheduler's `timesteps` are the *shifted*
timesteps σ'·1000 the model receives (UniPC/DPM++ truncate them to integers, as the official code and diffusers
do); A14B experts are routed on these values.
"""

from __future__ import annotations

from wantune.errors import UserError

SAMPLERS = ("unipc", "dpm++", "euler")
NUM_TRAIN_TIMESTEPS = 1000


def make_scheduler(name: str, shift: float):
    """A fresh diffusers scheduler for sampler `name` with the flow shift `shift`."""
    from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if shift <= 0:
        raise UserError(f"--shift {shift}: must be > 0 (official defaults: 5, 12 for T2V-A14B, 16 for FLF2V)")
    if name == "unipc":
        # The configuration of Wan-AI's diffusers scheduler_config.json (= official FlowUniPCMultistepScheduler).
        return UniPCMultistepScheduler(
            num_train_timesteps=NUM_TRAIN_TIMESTEPS, prediction_type="flow_prediction", use_flow_sigmas=True,
            flow_shift=shift, solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True,
            final_sigmas_type="zero")
    if name == "dpm++":
        return DPMSolverMultistepScheduler(
            num_train_timesteps=NUM_TRAIN_TIMESTEPS, prediction_type="flow_prediction", use_flow_sigmas=True,
            flow_shift=shift, algorithm_type="dpmsolver++", solver_order=2, lower_order_final=True,
            final_sigmas_type="zero")
    if name == "euler":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=shift)
    raise UserError(f"--sampler {name!r}: unknown sampler; choose one of {', '.join(SAMPLERS)}")


def shifted_sigma(sigma: float, shift: float) -> float:
    """The flow shift σ' = sσ / (1 + (s-1)σ)."""
    return shift * sigma / (1 + (shift - 1) * sigma)
