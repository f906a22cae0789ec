"""`wantune model inspect`: what a checkpoint file or folder holds, as JSON-ready dicts, from headers only.

A file gets `kind` (transformer | vae | text_encoder | clip | lora), `format`, `dtype`, `parameters` and,
for a transformer, `variant` (or null), `candidates` and the `architecture` its shapes describe. A folder
gets the same for its transformer (or A14B `experts`) plus the `components` beside it (VAE, UMT5, CLIP,
tokenizer), as official Wan-AI and diffusers folders ship them.
"""

from __future__ import annotations

from pathlib import Path

from wantune.errors import UserError
from wantune.models import fp8
from wantune.models.checkpoint import (EXPERT_FOLDERS, PIPELINE_EXPERTS, check_keys, expert_paths,
                                       is_expert_folder, official_shapes, transformer_location)
from wantune.models.detect import architecture, check_variant, expert_hint, infer_variant, narrow_families
from wantune.models.formats import WEIGHT_SUFFIXES, WeightFiles, short_dtype

PIPELINE_COMPONENTS = ("vae", "text_encoder", "image_encoder")


def inspect_path(path: str | Path) -> dict:
    """The JSON description of a checkpoint file or folder."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder; check the path")
    if path.is_file():
        return describe_weights(WeightFiles.open(path))
    return describe_folder(path)


def check_fits(path: str | Path, variant_name: str) -> None:
    """Raise one UserError line unless the transformer(s) at path fit the named variant (shapes only)."""
    import torch

    from wantune.models.transformer import WanModel
    from wantune.models.variants import get_variant

    variant = get_variant(variant_name)
    locations = expert_paths(path) if is_expert_folder(path) else (transformer_location(path),)
    with torch.device("meta"):
        model = WanModel(variant)
    for location in locations:
        weights = WeightFiles.open(location)
        kind, naming = weights.kind_and_naming
        if kind != "transformer":
            raise UserError(f"{location}: is a {naming} {kind} file, not a Wan transformer")
        shapes = official_shapes(weights)
        check_variant(variant, architecture(shapes, str(location)), str(location))
        check_keys(model, shapes, location)


def dtype_summary(weights: WeightFiles) -> str:
    """bf16 | fp16 | fp32 | fp8_e4m3fn | fp8_scaled: the dtype that holds most of the parameters."""
    keys = weights.metas
    if fp8.is_scaled(keys):
        return "fp8_scaled"
    counts: dict[str, int] = {}
    for key, meta in keys.items():
        if meta.is_floating_point() and not fp8.is_auxiliary(key):
            name = short_dtype(meta.dtype)
            counts[name] = counts.get(name, 0) + meta.numel()
    return max(counts, key=counts.get) if counts else "none"


def layout_name(weights: WeightFiles, kind: str, naming: str) -> str:
    """official | official-sharded | comfyui | diffusers | hf | kohya ... as users know these layouts."""
    if kind == "lora":
        keys = list(weights.metas)
        if any(k.startswith("lora_unet_") for k in keys):
            return "kohya"
        return "diffusers" if any(k.startswith("transformer.") for k in keys) else "comfyui"
    if naming in ("diffusers", "hf"):
        return naming
    if weights.prefix:
        return "comfyui"
    if weights.layout == "sharded":
        return "official-sharded"
    if kind == "vae" and weights.layout == "single":
        return "comfyui"  # ComfyUI's wan_*_vae.safetensors keep the official names; Wan-AI ships .pth
    return "official"


def describe_weights(weights: WeightFiles, hint: str | None = None, expert: str | None = None) -> dict:
    """kind, format, dtype, parameters (+ variant and architecture for a transformer) of one weights set."""
    kind, naming = weights.kind_and_naming
    if kind == "unknown":
        sample = ", ".join(list(weights.metas)[:3])
        raise UserError(f"{weights.path}: not a Wan transformer, VAE, UMT5, CLIP or LoRA checkpoint "
                        f"(first keys: {sample})")
    info = {
        "path": str(weights.path),
        "kind": kind,
        "format": layout_name(weights, kind, naming),
        "dtype": dtype_summary(weights),
        "parameters": sum(m.numel() for k, m in weights.metas.items() if not fp8.is_auxiliary(k)),
    }
    if weights.layout == "sharded":
        info["shards"] = len(weights.files)
    details = {"transformer": transformer_details, "vae": vae_details, "text_encoder": text_encoder_details}
    if kind in details:
        info.update(details[kind](weights, hint or str(weights.path)))
    if kind == "transformer" and (expert or expert_hint(weights.path)):
        info["expert"] = expert or expert_hint(weights.path)
    return info


def transformer_details(weights: WeightFiles, hint: str) -> dict:
    shapes = official_shapes(weights)
    arch = architecture(shapes, str(weights.path))
    candidates = infer_variant(shapes, hint=hint)
    data = arch.to_json()
    data["families"] = list(narrow_families(arch.families, hint))
    return {"variant": candidates[0] if len(candidates) == 1 else None, "candidates": candidates,
            "architecture": data}


def vae_details(weights: WeightFiles, hint: str) -> dict:
    metas = weights.metas
    latent = metas.get("conv2.weight", metas.get("post_quant_conv.weight"))
    z_dim = latent.shape[0] if latent is not None else None
    return {"version": {16: "2.1", 48: "2.2"}.get(z_dim), "z_dim": z_dim}


def text_encoder_details(weights: WeightFiles, hint: str) -> dict:
    metas = weights.metas
    embedding = metas.get("token_embedding.weight", metas.get("shared.weight"))
    if embedding is None:
        embedding = metas.get("encoder.embed_tokens.weight")
    layers = {k.split(".")[1] for k in metas if k.startswith("blocks.")}
    layers |= {k.split(".")[2] for k in metas if k.startswith("encoder.block.")}
    return {"model": "umt5", "vocab": embedding.shape[0] if embedding is not None else None,
            "dim": embedding.shape[1] if embedding is not None else None, "layers": len(layers)}


def describe_folder(folder: Path) -> dict:
    """A model folder: its transformer or A14B experts, and the components beside them."""
    experts = _expert_folders(folder)
    info: dict = {"path": str(folder)}
    if experts:
        described = {name: describe_weights(WeightFiles.open(sub), hint="wan2.2", expert=name)
                     for name, sub in experts.items()}
        first = next(iter(described.values()))
        variants = {d["variant"] for d in described.values()}
        candidates = first["candidates"] if len(variants) == 1 else []
        info.update(kind="transformer", format=first["format"], layout="a14b-experts",
                    variant=candidates[0] if len(candidates) == 1 else None, candidates=candidates,
                    dtype=first["dtype"], parameters=sum(d["parameters"] for d in described.values()),
                    experts=described)
    elif _has_own_weights(folder):
        info.update(describe_weights(WeightFiles.open(folder)))
        info["path"] = str(folder)
    elif (folder / "transformer").is_dir():
        info.update(describe_weights(WeightFiles.open(folder / "transformer")))
        info["path"] = str(folder)
    else:
        info.update(kind="folder", format="folder")
    info["components"] = _components(folder)
    if info["kind"] == "folder" and not info["components"]:
        raise UserError(f"{folder}: no Wan checkpoints found in this folder; pass a weights file or model folder")
    return info


def _expert_folders(folder: Path) -> dict[str, Path]:
    for high, low in (EXPERT_FOLDERS, PIPELINE_EXPERTS):
        if (folder / high).is_dir() and (folder / low).is_dir():
            return {"high_noise": folder / high, "low_noise": folder / low}
    return {}


def _has_own_weights(folder: Path) -> bool:
    return (any(folder.glob("*.safetensors.index.json")) or any(folder.glob("diffusion_pytorch_model*.safetensors"))
            or (folder / "model.safetensors").exists())


def _components(folder: Path) -> list[dict]:
    """VAE, text encoder, CLIP and tokenizer files beside a transformer (official and diffusers layouts)."""
    found = []
    for file in sorted(folder.iterdir()):
        if file.is_file() and file.suffix in WEIGHT_SUFFIXES and not _is_transformer_file(file):
            found.append(_describe_component(file))
    for name in PIPELINE_COMPONENTS:
        if (folder / name).is_dir() and any(p.suffix in WEIGHT_SUFFIXES for p in (folder / name).iterdir()):
            found.append(_describe_component(folder / name))
    tokenizers = sorted(folder.rglob("spiece.model")) or sorted(folder.rglob("tokenizer.json"))
    if tokenizers:
        found.append({"path": str(tokenizers[0].parent), "kind": "tokenizer"})
    return found


def _is_transformer_file(file: Path) -> bool:
    return file.name.startswith(("diffusion_pytorch_model", "model.safetensors", "model-0"))


def _describe_component(path: Path) -> dict:
    try:
        weights = WeightFiles.open(path if path.is_file() else _single_weights(path))
        return describe_weights(weights)
    except UserError as exc:
        return {"path": str(path), "kind": "unknown", "error": str(exc)}


def _single_weights(folder: Path) -> Path:
    """A component folder of a diffusers pipeline (vae/, text_encoder/): the folder if it has an index."""
    if any(folder.glob("*.index.json")):
        return folder
    files = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    return files[0]
