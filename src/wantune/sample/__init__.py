"""Sampling: schedulers, the denoising loop, A14B expert routing, and `wantune generate`.

Names are imported lazily so that `wantune --help` (which imports `wantune.sample.cli`) does not load torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "sample_video": "sampler", "make_noise": "sampler", "latent_shape": "sampler",
    "ExpertPair": "experts", "make_scheduler": "schedulers", "SAMPLERS": "schedulers",
    "PromptSpec": "prompts", "parse_prompt_line": "prompts", "read_prompt_file": "prompts",
    "generate": "pipeline", "ModelSpec": "pipeline", "RunSettings": "pipeline",
    "quantize_blocks_fp8": "fp8",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'wantune.sample' has no attribute {name!r}")
    return getattr(importlib.import_module(f"wantune.sample.{_EXPORTS[name]}"), name)
