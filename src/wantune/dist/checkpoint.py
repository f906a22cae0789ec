"""Sharded (FSDP2) state in checkpoints and final files, with torch.distributed.checkpoint (DCP).

Each rank writes its own shards of every sharded unit's weights, optimiser state and EMA into
`<checkpoint>/dcp/` in parallel, and reads them back the same way; DCP reshards on load, so a checkpoint
can also be read by a different number of ranks. Final files gather the full weights onto rank 0's CPU.
LoRA (DDP) units are identical on every rank and are written by rank 0 alone (`wantune.train.state`).
"""

from __future__ import annotations

from pathlib import Path

import torch

DCP_FOLDER = "dcp"


def _unit_state(unit) -> dict:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(unit.model, unit.optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    if unit.ema is not None:
        state["ema"] = unit.ema.shadow
    return state


def save_sharded(folder: Path, units: list) -> None:
    """Every rank writes its shards of the units' weights, optimiser state and EMA (collective)."""
    import torch.distributed.checkpoint as dcp

    dcp.save({u.name: _unit_state(u) for u in units}, checkpoint_id=str(folder / DCP_FOLDER))


def load_sharded(folder: Path, units: list) -> None:
    """Restore the units' shards written by `save_sharded` (collective; any world size)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state = {u.name: _unit_state(u) for u in units}
    dcp.load(state, checkpoint_id=str(folder / DCP_FOLDER))
    for unit in units:
        saved = state[unit.name]
        set_state_dict(unit.model, unit.optimizer, model_state_dict=saved["model"],
                       optim_state_dict=saved["optim"])


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights on rank 0's CPU (empty on other ranks); collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
