"""Presets for the guides' use cases and recommendations from dataset size (../shared/GUIDES.md).

A preset is a partial config laid *under* the user's TOML: every key the user sets wins. Values follow
the AI Toolkit guide for Wan 2.2 14B where the guides disagree: it is the only one written for the 14B
experts (rank 16-32 with lr 1e-4 and 1,500-3,000 steps), while guide 1's ranks of 64-128 come from
older, smaller models and would triple LoRA size and overfit the 10-40 clip datasets people bring.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass

from wantune.errors import UserError

_COMMON = {
    "optimizer": {"name": "adamw", "lr": 1e-4, "weight_decay": 1e-4},
    "schedule": {"name": "cosine", "warmup_ratio": 0.05},
    "training": {"grad_clip": 1.0, "mixed_precision": "bf16", "gradient_checkpointing": True},
    "experts": {"train": "both"},
}

PRESETS: dict[str, dict] = {
    "character": {
        "network": {"rank": 16, "alpha": 16.0},
        "training": {"steps": 2500},
        "timesteps": {"sampling": "sigmoid", "bias": "balanced"},
        "regularisation": {"dop": {"enabled": True, "class_word": "person", "multiplier": 1.0}},
    },
    "style": {
        "network": {"rank": 32, "alpha": 32.0},
        "training": {"steps": 2000},
        "timesteps": {"sampling": "shift", "bias": "high_noise"},
        "regularisation": {"dop": {"enabled": True, "class_word": "scene", "multiplier": 1.0}},
    },
    "motion": {
        "network": {"rank": 16, "alpha": 16.0},
        "training": {"steps": 2000},
        "timesteps": {"sampling": "uniform", "bias": "balanced"},
    },
    "domain": {
        "network": {"rank": 32, "alpha": 32.0},
        "training": {"steps": 3000},
        "timesteps": {"sampling": "shift", "bias": "balanced"},
    },
}
"""Use case -> partial config. DOP presets need `regularisation.dop.trigger` from the user."""


def preset_table(name: str) -> dict:
    """The full partial config of a preset (common settings plus the use case's)."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, list(PRESETS), n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(PRESETS)}"
        raise UserError(f"preset: unknown preset {name!r}; {hint}")
    return _merge(copy.deepcopy(_COMMON), copy.deepcopy(PRESETS[name]))


def apply_preset(user: dict, name: str) -> dict:
    """The user's config laid over the preset (user keys win; steps/epochs are one choice)."""
    base = preset_table(name)
    training = user.get("training", {})
    if "steps" in training or "epochs" in training:
        base["training"].pop("steps", None)
    return _merge(base, copy.deepcopy(user))


def _merge(base: dict, top: dict) -> dict:
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = _merge(base[key], value)
        else:
            base[key] = value
    return base


@dataclass(frozen=True)
class Recommendation:
    """What the guides advise for a dataset of a given size."""

    rank: int
    alpha: float
    epochs: int
    reason: str


_BY_SIZE = [  # (min samples, rank, epochs): GUIDES.md tables, middle of each range
    (800, 112, 10),
    (400, 80, 12),
    (200, 56, 15),
    (100, 40, 18),
]


def recommend(num_samples: int, steps_target: int = 2000) -> Recommendation:
    """Rank/alpha/epochs from the dataset-size tables; small sets (< 100) follow the AI Toolkit guide."""
    for minimum, rank, epochs in _BY_SIZE:
        if num_samples >= minimum:
            return Recommendation(rank, float(rank), epochs,
                                  f"{num_samples} samples: rank {rank} (alpha = rank), {epochs} epochs "
                                  "(dataset-size table)")
    epochs = max(1, round(steps_target / max(num_samples, 1)))
    return Recommendation(16, 16.0, epochs,
                          f"{num_samples} samples: rank 16, ~{steps_target} steps = {epochs} epochs "
                          "(AI Toolkit guide for small Wan 2.2 14B datasets)")
