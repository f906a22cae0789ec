"""LoRA on a built Wan model: wrap the targeted Linear layers, train the adapters, stack or detach them.

`apply_lora(model, rank, alpha, ...)` swaps each targeted `nn.Linear` for a `LoRALinear` that reuses the very
same `weight`/`bias` Parameters, so the base keeps its official names (`blocks.0.self_attn.q.weight`). The
low-rank paths live under `<path>.adapters.<name>.lora_{A,B}.weight`; `LoRANetwork.state_dict()` gives them
in canonical names (`blocks.0.self_attn.q.lora_A.weight`). Stacked inference LoRAs (`attach_loras`) are extra
frozen adapters on the same wrappers.

Legend: B batch, L tokens, I in_features, O out_features, R rank.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from wantune.errors import UserError

BLOCK_TARGETS = (
    "self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
    "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o",
    "cross_attn.k_img", "cross_attn.v_img",
    "ffn.0", "ffn.2",
)
"""Linear layers of a Wan block that LoRA may target (k_img/v_img exist in Wan 2.1 I2V/FLF2V only)."""

TRAIN_ADAPTER = "lora"
_BLOCK_PATH = re.compile(r"^blocks\.(\d+)\.(.+)$")


class LoRAAdapter(nn.Module):
    """One low-rank path: x -> lora_B(lora_A(dropout(x))) * scale."""

    def __init__(self, in_features: int, out_features: int, rank: int, scale: float, dropout: float = 0.0,
                 device=None, dtype=None):
        super().__init__()
        self.lora_A = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.lora_B = nn.Linear(rank, out_features, bias=False, device=device, dtype=dtype)
        self.scale = scale
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def rank(self) -> int:
        return self.lora_A.out_features

    def reset_parameters(self) -> None:
        """Kaiming-uniform A, zero B: the adapter starts as an exact no-op."""
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x_BLI: torch.Tensor) -> torch.Tensor:
        x_BLI = x_BLI.to(self.lora_A.weight.dtype)
        return self.lora_B(self.lora_A(self.dropout(x_BLI))) * self.scale


class LoRALinear(nn.Linear):
    """An `nn.Linear` (same weight/bias Parameters as the layer it replaces) plus named low-rank adapters."""

    def __init__(self, base: nn.Linear):
        super().__init__(base.in_features, base.out_features, bias=False, device="meta")
        self.weight = base.weight
        self.bias = base.bias
        self.adapters = nn.ModuleDict()

    def forward(self, x_BLI: torch.Tensor) -> torch.Tensor:
        out_BLO = super().forward(x_BLI)
        for adapter in self.adapters.values():
            out_BLO = out_BLO + adapter(x_BLI).to(out_BLO.dtype)
        return out_BLO

    def to_linear(self) -> nn.Linear:
        """A plain `nn.Linear` holding the same Parameters (the adapters dropped)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=False, device="meta")
        linear.weight, linear.bias = self.weight, self.bias
        return linear


@dataclass
class LoRANetwork:
    """The trainable adapters `apply_lora` added to a model, by official module path."""

    model: nn.Module
    """The model the adapters were added to."""
    adapters: dict[str, LoRAAdapter]
    """Official module path (`blocks.0.self_attn.q`) -> its adapter."""
    rank: int
    """LoRA rank r."""
    alpha: float
    """LoRA alpha; the low-rank path is scaled by alpha / rank."""
    targets: list[str] = field(default_factory=list)
    """Block-relative Linear names that were targeted (`self_attn.q`, `ffn.0`, ...)."""

    def parameters(self) -> Iterator[nn.Parameter]:
        for adapter in self.adapters.values():
            yield from adapter.parameters()

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        for path, adapter in self.adapters.items():
            yield f"{path}.lora_A.weight", adapter.lora_A.weight
            yield f"{path}.lora_B.weight", adapter.lora_B.weight

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Raw adapter weights in canonical names (unscaled B), for resuming training."""
        return {name: p.detach() for name, p in self.named_parameters()}

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        expected = dict(self.named_parameters())
        missing = sorted(set(expected) - set(state_dict))
        unknown = sorted(set(state_dict) - set(expected))
        if missing or unknown:
            where = f"{missing[0]}: missing from the saved LoRA state" if missing else \
                f"{unknown[0]}: in the saved LoRA state but not in this network"
            raise UserError(f"{where}; resume with the same targets, include/exclude and model")
        with torch.no_grad():
            for name, param in expected.items():
                if param.shape != state_dict[name].shape:
                    raise UserError(f"{name}: shape {tuple(state_dict[name].shape)} but the network has "
                                    f"{tuple(param.shape)}; resume with the same rank and model")
                param.copy_(state_dict[name])

    def lora_weights(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Official module path -> (A (r, in), B (out, r) with alpha/rank folded in), detached copies."""
        return {path: (a.lora_A.weight.detach().clone(), a.lora_B.weight.detach() * a.scale)
                for path, a in self.adapters.items()}

    def train(self, mode: bool = True) -> LoRANetwork:
        for adapter in self.adapters.values():
            adapter.train(mode)
        return self

    def remove(self) -> None:
        """Take the trained adapters off the model (other attached LoRAs stay)."""
        for path in self.adapters:
            drop_adapter(self.model, path, TRAIN_ADAPTER)
        self.adapters = {}


def iter_linear_targets(model: nn.Module, targets: Iterable[str] | None = None, include: str | None = None,
                        exclude: str | None = None) -> Iterator[tuple[str, nn.Linear]]:
    """(official path, Linear) of each block Linear named in `targets`, filtered by include/exclude regexes."""
    targets = list(BLOCK_TARGETS if targets is None else targets)
    unknown = [t for t in targets if t not in BLOCK_TARGETS]
    if unknown:
        raise UserError(f"LoRA target {unknown[0]!r} is not a Wan block Linear; choose from {', '.join(BLOCK_TARGETS)}")
    include_re = _compile(include, "include")
    exclude_re = _compile(exclude, "exclude")
    for path, module in model.named_modules():
        match = _BLOCK_PATH.match(path)
        if not match or match.group(2) not in targets or not isinstance(module, nn.Linear):
            continue
        if include_re and not include_re.search(path):
            continue
        if exclude_re and exclude_re.search(path):
            continue
        yield path, module


def apply_lora(model: nn.Module, rank: int, alpha: float, dropout: float = 0.0,
               targets: Iterable[str] | None = None, include: str | None = None, exclude: str | None = None,
               dtype: torch.dtype = torch.float32) -> LoRANetwork:
    """Add a trainable LoRA (B zero, A kaiming, scale alpha/rank) to the targeted Linear layers; freeze the rest."""
    if rank < 1:
        raise UserError(f"LoRA rank must be >= 1 (got {rank})")
    if not 0.0 <= dropout < 1.0:
        raise UserError(f"LoRA dropout must be in [0, 1) (got {dropout})")
    chosen = list(iter_linear_targets(model, targets, include, exclude))
    if any(isinstance(linear, LoRALinear) and TRAIN_ADAPTER in linear.adapters for _, linear in chosen):
        raise UserError("the model already carries a trainable LoRA; call network.remove() before applying another")
    if not chosen:
        raise UserError("no Linear layer matches the LoRA targets/include/exclude; loosen the filters")
    model.requires_grad_(False)
    adapters: dict[str, LoRAAdapter] = {}
    for path, linear in chosen:
        wrapper = wrap_linear(model, path, linear)
        adapter = LoRAAdapter(linear.in_features, linear.out_features, rank, alpha / rank, dropout,
                              device=linear.weight.device, dtype=dtype)
        adapter.reset_parameters()
        wrapper.adapters[TRAIN_ADAPTER] = adapter
        adapters[path] = adapter
    used = sorted({_BLOCK_PATH.match(p).group(2) for p in adapters}, key=BLOCK_TARGETS.index)
    return LoRANetwork(model, adapters, rank, float(alpha), used)


def _compile(pattern: str | None, what: str) -> re.Pattern | None:
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise UserError(f"LoRA {what} regex {pattern!r} is invalid: {exc}") from None


def _parent(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent_path, _, name = path.rpartition(".")
    return (model.get_submodule(parent_path) if parent_path else model), name


def wrap_linear(model: nn.Module, path: str, linear: nn.Linear) -> LoRALinear:
    """The LoRALinear at `path`, swapping the plain Linear for one if needed."""
    if isinstance(linear, LoRALinear):
        return linear
    wrapper = LoRALinear(linear)
    parent, name = _parent(model, path)
    setattr(parent, name, wrapper)
    return wrapper


def drop_adapter(model: nn.Module, path: str, adapter_name: str) -> None:
    """Remove one adapter; when none is left, put back a plain Linear with the same Parameters."""
    wrapper = model.get_submodule(path)
    if not isinstance(wrapper, LoRALinear):
        return
    if adapter_name in wrapper.adapters:
        del wrapper.adapters[adapter_name]
    if not wrapper.adapters:
        parent, name = _parent(model, path)
        setattr(parent, name, wrapper.to_linear())
