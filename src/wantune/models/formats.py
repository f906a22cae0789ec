"""Checkpoint files on disk: which files hold the weights, their key layout and kind, read lazily.

Nothing here builds a model. `WeightFiles.open(path)` finds the weight files of a file or folder and maps
every stored key to its file without reading a tensor; `shapes()` gives meta tensors (shape + dtype only);
`tensor(key)` reads one tensor. `classify(keys)` names the kind (transformer, vae, text_encoder, clip,
lora) and the naming scheme (official, diffusers, hf) of a key set.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from wantune.errors import UserError

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
    "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}
SHORT_DTYPE_NAMES = {
    torch.float64: "fp64", torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
    torch.float8_e4m3fn: "fp8_e4m3fn", torch.float8_e5m2: "fp8_e5m2",
}
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
TRANSFORMER_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
"""ComfyUI repackaged files may prefix every transformer key with one of these."""

# key that proves a kind / naming scheme (after any prefix is stripped)
_SIGNATURES = (
    ("transformer", "official", re.compile(r"^blocks\.\d+\.self_attn\.q\.weight$")),
    ("transformer", "diffusers", re.compile(r"^blocks\.\d+\.attn1\.to_q\.weight$")),
    ("vae", "official", re.compile(r"^decoder\.head\.\d+\.weight$")),
    ("vae", "diffusers", re.compile(r"^decoder\.conv_out\.weight$")),
    ("text_encoder", "official", re.compile(r"^blocks\.\d+\.attn\.q\.weight$")),
    ("text_encoder", "hf", re.compile(r"^encoder\.block\.\d+\.layer\.0\.SelfAttention\.q\.weight$")),
    ("clip", "official", re.compile(r"^visual\.transformer\.\d+\.")),
    ("clip", "hf", re.compile(r"^vision_model\.encoder\.layers\.\d+\.")),
)
_LORA_KEY = re.compile(r"(lora_[AB]\.|lora_down\.|lora_up\.|\.lora\.(down|up)\.)")


def short_dtype(dtype: torch.dtype) -> str:
    """bf16, fp16, fp32, fp8_e4m3fn, ... (the names users see in file names)."""
    return SHORT_DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def read_safetensors_header(file: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Shapes and dtypes of a .safetensors file as meta tensors, plus its metadata; reads only the header."""
    try:
        with open(file, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            if size > 100_000_000:
                raise ValueError("header too large")
            header = json.loads(handle.read(size))
    except (OSError, ValueError, struct.error) as exc:
        raise UserError(f"{file}: not a readable safetensors file ({exc}); check the path") from None
    metadata = header.pop("__metadata__", None) or {}
    shapes = {}
    for key, info in header.items():
        dtype = SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise UserError(f"{file}: tensor {key!r} has unsupported dtype {info['dtype']}")
        shapes[key] = torch.empty(info["shape"], dtype=dtype, device="meta")
    return shapes, metadata


def load_torch_file(file: Path) -> dict[str, torch.Tensor]:
    """A .pth/.pt state dict, memory-mapped (weights_only); unwraps {"state_dict": ...} style wrappers."""
    is_zip = zipfile.is_zipfile(file)  # mmap needs the zip format; legacy torch.save files are read without it
    try:
        data = torch.load(file, map_location="cpu", weights_only=True, mmap=is_zip)
    except Exception as exc:  # torch raises many types for a bad pickle or zip
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if not is_zip:  # garbage reads as a legacy pickle and fails with a misleading message
            first_line = "not a torch.save file"
        raise UserError(f"{file}: cannot read as a PyTorch checkpoint ({first_line})") from None
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(data, dict) and isinstance(data.get(wrapper), dict) and len(data) <= 3:
            data = data[wrapper]
    if not isinstance(data, dict):
        raise UserError(f"{file}: holds a {type(data).__name__}, not a state dict of tensors")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


def read_weight_file(file: Path) -> dict[str, torch.Tensor]:
    """Every tensor of one .safetensors / .pth / .pt / .bin file."""
    if file.suffix != ".safetensors":
        return load_torch_file(file)
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except Exception as e:  # safetensors raises its own error types
        raise UserError(f"{file}: not a readable safetensors file ({e})") from None


def read_component_weights(path: Path, what: str) -> dict[str, torch.Tensor]:
    """All tensors of a component's weight file, or of every weight file in its folder (one format: safetensors,
    else .pth, else .bin); `what` names the component in errors ("VAE", "CLIP", "text encoder")."""
    if not path.exists():
        raise UserError(f"{path}: no such {what} file or folder")
    files = [path]
    if path.is_dir():
        files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.pth")) or sorted(path.glob("*.bin"))
        if not files:
            raise UserError(f"{path}: folder holds no {what} weights (*.safetensors / *.pth / *.bin)")
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        sd.update(read_weight_file(f))
    return sd


def component_location(path: Path, subfolder: str, official_names: tuple[str, ...]) -> Path:
    """The file/folder holding one component: a diffusers pipeline's `subfolder`, an official Wan folder's
    file (e.g. `Wan2.1_VAE.pth`), or `path` itself."""
    if not path.is_dir():
        return path
    if (path / subfolder).is_dir():
        return path / subfolder
    return next((path / n for n in official_names if (path / n).is_file()), path)


def file_identity(path: Path) -> str:
    """name:size:hash of the first MiB of each file (a folder: all its files), for cache keys."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest, size = hashlib.sha256(), 0
    for f in files:
        size += f.stat().st_size
        with open(f, "rb") as fh:
            digest.update(fh.read(1 << 20))
    return f"{path.name}:{size}:{digest.hexdigest()[:16]}"


def common_prefix(keys) -> str:
    """The ComfyUI transformer prefix every key carries, or ''."""
    keys = list(keys)
    for prefix in TRANSFORMER_PREFIXES:
        if keys and all(k.startswith(prefix) or k == "scaled_fp8" for k in keys):
            return prefix
    return ""


def classify(keys) -> tuple[str, str]:
    """(kind, naming) of a key set with its prefix stripped, e.g. ("transformer", "diffusers")."""
    keys = list(keys)
    if any(_LORA_KEY.search(k) for k in keys):
        return "lora", "lora"
    for kind, naming, pattern in _SIGNATURES:
        if any(pattern.match(k) for k in keys):
            return kind, naming
    return "unknown", "unknown"


@dataclass
class WeightFiles:
    """The weight files behind one model (a file, or a folder of shards), keyed lazily."""

    path: Path
    """What the user named (file or folder)."""
    files: list[Path]
    """Weight files, in shard order."""
    layout: str
    """How the files are laid out: single | sharded | pth."""
    prefix: str = ""
    """Prefix stripped from every stored key (ComfyUI: `model.diffusion_model.`)."""
    metas: dict[str, torch.Tensor] = field(default_factory=dict)
    """Stripped key -> meta tensor (shape, dtype) of what is stored."""
    origin: dict[str, tuple[Path, str]] = field(default_factory=dict)
    """Stripped key -> (file, stored key)."""
    metadata: dict[str, str] = field(default_factory=dict)
    """safetensors `__metadata__` of the first file."""
    _pth: dict[Path, dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)
    _handles: dict[Path, object] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, path: str | Path) -> WeightFiles:
        path = Path(path)
        if not path.exists():
            raise UserError(f"{path}: no such file or folder; check the path")
        if path.is_dir():
            files, layout = weight_files_in_folder(path)
        elif path.suffix == ".gguf":
            raise UserError(f"{path}: GGUF quantised files are not supported; use a .safetensors checkpoint "
                            "(fp16, bf16, fp8 or fp8_scaled)")
        elif path.suffix in WEIGHT_SUFFIXES:
            files, layout = [path], "pth" if path.suffix != ".safetensors" else "single"
        else:
            raise UserError(f"{path}: not a checkpoint file (expected .safetensors, .pth or .pt)")
        weights = cls(path, files, layout)
        weights._index()
        return weights

    def _index(self) -> None:
        stored: dict[str, tuple[Path, torch.Tensor]] = {}
        for file in self.files:
            if file.suffix == ".safetensors":
                metas, metadata = read_safetensors_header(file)
                self.metadata = self.metadata or metadata
            else:
                self._pth[file] = load_torch_file(file)
                metas = {k: v.to("meta") for k, v in self._pth[file].items()}
            stored.update({k: (file, m) for k, m in metas.items()})
        self.prefix = common_prefix(stored)
        for key, (file, meta) in stored.items():
            short = key.removeprefix(self.prefix)
            self.metas[short] = meta
            self.origin[short] = (file, key)

    @property
    def kind_and_naming(self) -> tuple[str, str]:
        return classify(self.metas)

    def tensor(self, key: str) -> torch.Tensor:
        """Read one tensor (by stripped key) into memory; .pth tensors stay memory-mapped."""
        file, stored_key = self.origin[key]
        if file in self._pth:
            return self._pth[file][stored_key]
        if file not in self._handles:
            from safetensors import safe_open

            self._handles[file] = safe_open(str(file), framework="pt", device="cpu")
        return self._handles[file].get_tensor(stored_key)

    def close(self) -> None:
        self._handles.clear()
        self._pth.clear()


def weight_files_in_folder(folder: Path) -> tuple[list[Path], str]:
    """The weight files of a model folder: the shards an index names, or its single weights file."""
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if indexes:
        try:
            weight_map = json.loads(indexes[0].read_text())["weight_map"]
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"{indexes[0]}: not a valid shard index ({exc})") from None
        files = [folder / name for name in dict.fromkeys(sorted(weight_map.values()))]
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise UserError(f"{indexes[0]}: names shards that are missing: {', '.join(missing[:3])}")
        return files, "sharded"
    for name in ("diffusion_pytorch_model.safetensors", "model.safetensors"):
        if (folder / name).exists():
            return [folder / name], "single"
    shards = sorted(folder.glob("diffusion_pytorch_model-*-of-*.safetensors"))
    if shards:
        return shards, "sharded"
    raise UserError(
        f"{folder}: no model weights found (expected diffusion_pytorch_model*.safetensors with an index, "
        "or a high_noise_model/ and low_noise_model/ pair); pass a weights file or a model folder")
