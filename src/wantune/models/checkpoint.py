"""Load Wan transformer checkpoints in every layout users have, without a second copy in memory.

Layouts: official single file or sharded folder (`diffusion_pytorch_model-0000N-of-0000M.safetensors` + index),
`.pth`/`.pt`, ComfyUI files (`model.diffusion_model.` prefix; fp32/fp16/bf16/fp8_e4m3fn/fp8_scaled), diffusers
folders (renamed to official names), A14B expert folders (`high_noise_model/`, `low_noise_model/`) and
diffusers pipelines (`transformer/`, `transformer_2/`). The model is built on the meta device and the tensors
are assigned as they are read (`load_state_dict(assign=True)`), each converted to the target dtype on the way.
"""

from __future__ import annotations

from pathlib import Path

import torch

from wantune.errors import UserError
from wantune.models import fp8
from wantune.models.detect import architecture, check_variant, infer_variant
from wantune.models.formats import WeightFiles, classify, common_prefix
from wantune.models.variants import VARIANTS, WanVariant, get_variant

__all__ = ["read_state_dict", "infer_variant", "load_transformer", "load_expert_pair", "expert_paths",
           "is_expert_folder", "to_official_names", "transformer_location"]

EXPERT_FOLDERS = ("high_noise_model", "low_noise_model")
PIPELINE_EXPERTS = ("transformer", "transformer_2")
"""diffusers A14B pipelines: `transformer` is the high-noise expert, `transformer_2` the low-noise one."""


def to_official_names(state_dict: dict) -> dict:
    """Strip a ComfyUI prefix and rename diffusers keys, so any transformer state dict has official names."""
    prefix = common_prefix(state_dict)
    if prefix:
        state_dict = {k.removeprefix(prefix): v for k, v in state_dict.items() if k != "scaled_fp8"}
    if classify(state_dict)[1] == "diffusers":
        from wantune.models.diffusers_names import diffusers_to_official

        state_dict = diffusers_to_official(state_dict)
    return state_dict


def is_expert_folder(path: str | Path) -> bool:
    """True for an A14B folder holding `high_noise_model/` and `low_noise_model/` (or diffusers' pair)."""
    path = Path(path)
    return path.is_dir() and any(all((path / name).is_dir() for name in pair)
                                 for pair in (EXPERT_FOLDERS, PIPELINE_EXPERTS))


def transformer_location(path: str | Path) -> Path:
    """The file or folder holding one transformer's weights (a diffusers pipeline's `transformer/`)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder; check the path")
    if is_expert_folder(path):
        raise UserError(f"{path}: holds two A14B experts ({'/, '.join(EXPERT_FOLDERS)}/); load them as a pair "
                        "(load_expert_pair, or --model with --model-low) or name one expert's folder")
    own_weights = any(path.glob("*.safetensors.index.json")) or any(path.glob("diffusion_pytorch_model*"))
    if path.is_dir() and not own_weights and (path / "transformer").is_dir():
        return path / "transformer"  # a diffusers pipeline folder
    return path


def expert_paths(path: str | Path, low_path: str | Path | None = None) -> tuple[Path, Path]:
    """(high-noise, low-noise) expert locations from a pair folder, two paths, or a `high_noise` file name."""
    path = Path(path)
    if low_path is not None:
        return path, Path(low_path)
    for high, low in (EXPERT_FOLDERS, PIPELINE_EXPERTS):
        if (path / high).is_dir() and (path / low).is_dir():
            return path / high, path / low
    if "high_noise" in path.name:
        sibling = path.with_name(path.name.replace("high_noise", "low_noise"))
        if sibling.exists():
            return path, sibling
    raise UserError(f"{path}: cannot find the low-noise expert; pass a folder with {EXPERT_FOLDERS[0]}/ and "
                    f"{EXPERT_FOLDERS[1]}/, or the low-noise file too (--model-low)")


def read_state_dict(path: str | Path | WeightFiles, dtype: torch.dtype | None = None, device="cpu",
                    keep_fp8: bool = False) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint, official names; fp8_scaled weights dequantised (or kept with keep_fp8).

    dtype: cast floating tensors to it as they are read (None keeps the file's dtypes; dequantised fp8 then
    takes the dtype of the file's other float tensors). keep_fp8: keep fp8 weights and their
    `<module>.scale_weight` tensors as stored, for an fp8 compute mode.
    """
    weights = path if isinstance(path, WeightFiles) else WeightFiles.open(transformer_location(path))
    metas = weights.metas
    target = dtype or _dequantised_dtype(metas)
    state: dict[str, torch.Tensor] = {}
    for key, meta in metas.items():
        if fp8.is_auxiliary(key):
            if keep_fp8 and key.endswith(fp8.SCALE_SUFFIXES):
                module = key.rsplit(".", 1)[0]
                state[f"{module}.scale_weight"] = weights.tensor(key).to(device)
            continue
        tensor = weights.tensor(key)
        scale = fp8.scale_key(key, metas)
        if keep_fp8 and fp8.is_fp8(tensor):
            state[key] = tensor.to(device)
            continue
        if scale is not None:
            tensor = fp8.dequantize(tensor, weights.tensor(scale), target)
        elif dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        state[key] = tensor.to(device)
    kind, naming = classify(state)
    if kind == "transformer" and naming == "diffusers":
        state = to_official_names(state)
    return state


def _dequantised_dtype(metas: dict[str, torch.Tensor]) -> torch.dtype:
    """The float dtype most non-fp8 tensors of a file have (what fp8_scaled weights dequantise to)."""
    counts: dict[torch.dtype, int] = {}
    for key, meta in metas.items():
        if meta.is_floating_point() and not fp8.is_fp8(meta) and not fp8.is_auxiliary(key):
            counts[meta.dtype] = counts.get(meta.dtype, 0) + meta.numel()
    return max(counts, key=counts.get) if counts else torch.bfloat16


def official_shapes(weights: WeightFiles) -> dict[str, torch.Tensor]:
    """Meta tensors of a transformer's weights with official names, scale and marker keys left out."""
    return to_official_names({k: v for k, v in weights.metas.items() if not fp8.is_auxiliary(k)})


def resolve_variant(variant: str | WanVariant | None, shapes: dict, source: Path,
                    hint: str | None = None) -> WanVariant:
    """The variant to build: a WanVariant as given, a name looked up, or inferred from the shapes."""
    if isinstance(variant, WanVariant):
        return variant
    if variant is not None:
        return get_variant(variant)
    arch = architecture(shapes, str(source))
    candidates = infer_variant(shapes, hint=hint or source)
    if len(candidates) == 1:
        return VARIANTS[candidates[0]]
    if candidates:
        raise UserError(f"{source}: shapes fit {' and '.join(candidates)} alike; pass the variant "
                        f"(--variant {candidates[-1]})")
    raise UserError(f"{source}: shapes match no known Wan variant ({arch.describe()}, {arch.num_layers} layers); "
                    "pass the variant explicitly")


def check_keys(model: torch.nn.Module, shapes: dict, source: Path) -> None:
    """One UserError line when the file's keys or shapes differ from the model's."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in shapes.items()}
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        looks = _looks_like(shapes)
        raise UserError(f"{source}: keys do not fit {model.variant.name}: {'; '.join(parts)}; {looks}")
    for key, shape in expected.items():
        if got[key] != shape:
            raise UserError(f"{source}: {key} has shape {list(got[key])}; {model.variant.name} expects {list(shape)}")


def _looks_like(shapes: dict) -> str:
    try:
        return f"the file looks like {architecture(shapes).describe()}"
    except UserError:
        kind, naming = classify(shapes)
        return f"the file looks like a {naming} {kind} file" if kind != "unknown" else "not a Wan transformer"


def load_transformer(path: str | Path, variant: str | WanVariant | None = None,
                     dtype: torch.dtype = torch.bfloat16, device="cpu", hint: str | None = None):
    """A WanModel with the checkpoint's weights: meta init, shape checks, then assign tensors as read."""
    from wantune.models.transformer import WanModel

    location = transformer_location(path)
    weights = WeightFiles.open(location)
    kind, naming = weights.kind_and_naming
    if kind != "transformer":
        raise UserError(f"{location}: is a {naming} {kind} file, not a Wan transformer; pass the diffusion model")
    shapes = official_shapes(weights)
    chosen = resolve_variant(variant, shapes, location, hint)
    check_variant(chosen, architecture(shapes, str(location)), str(location))
    with torch.device("meta"):
        model = WanModel(chosen)
    check_keys(model, shapes, location)
    state = read_state_dict(weights, dtype=dtype, device=device)
    model.load_state_dict(state, strict=True, assign=True)
    weights.close()
    return model


def load_expert_pair(path: str | Path, low_path: str | Path | None = None,
                     variant: str | WanVariant | None = None, dtype: torch.dtype = torch.bfloat16,
                     device="cpu"):
    """(high-noise, low-noise) WanModels of an A14B checkpoint (a pair folder, or two paths)."""
    high_path, low_path = expert_paths(path, low_path)
    if isinstance(variant, str) and not get_variant(variant).is_expert_pair:
        raise UserError(f"{variant} is not a two-expert (A14B) variant; load it with a single --model")
    high = load_transformer(high_path, variant, dtype, device, hint="wan2.2")
    low = load_transformer(low_path, high.variant, dtype, device)
    return high, low

