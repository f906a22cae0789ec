"""LoRA: apply to a built model, save/load the ecosystem's layouts, stack and merge.

Names are imported lazily so that `wantune --help` (which imports `wantune.lora.cli`) does not load torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "BLOCK_TARGETS": "network", "LoRAAdapter": "network", "LoRALinear": "network", "LoRANetwork": "network",
    "apply_lora": "network",
    "FORMATS": "formats", "LoraWeights": "formats",
    "load_lora": "io", "save_lora": "io", "write_lora": "io",
    "attach_loras": "merge", "detach_loras": "merge", "merge_lora": "merge", "merge_into_state_dict": "merge",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'wantune.lora' has no attribute {name!r}")
    return getattr(importlib.import_module(f"wantune.lora.{_EXPORTS[name]}"), name)
