"""`generate`: from checkpoint paths and prompts to video files, read top to bottom.

1. resolve the variant (from the checkpoint header, no weights read) and every request's settings, and
   validate them (files, frame counts, sizes, images) before any weights are loaded;
2. encode all prompts and negative prompts with UMT5, then free the text encoder;
3. load the transformer (or the A14B expert pair), attach LoRAs per expert, optionally store it in fp8;
4. per request: image conditioning, seeded noise, the denoising loop, VAE decode, write .mp4 / .png.

Legend: B batch, C channels, F frames, H/W height/width, L text tokens, D text dim.
"""

from __future__ import annotations

import dataclasses
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from wantune.errors import UserError
from wantune.models.variants import WanVariant
from wantune.sample.prompts import PromptSpec
from wantune.sample.schedulers import SAMPLERS

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class ModelSpec:
    """What generates: checkpoints, encoders, LoRAs (paths are local; nothing is downloaded)."""

    model: str
    """Transformer file or folder; for A14B the high-noise expert or a folder holding both experts."""
    vae: str
    """VAE file or folder (Wan 2.1 VAE for 2.1 models and A14B, Wan 2.2 VAE for TI2V-5B)."""
    text_encoder: str
    """UMT5-XXL encoder weights (official .pth, HF or ComfyUI safetensors)."""
    tokenizer: str
    """Folder of the google/umt5-xxl tokenizer."""
    model_low: str | None = None
    """A14B low-noise expert (when --model is the high-noise expert's file)."""
    clip: str | None = None
    """CLIP ViT-H/14 vision weights (Wan 2.1 I2V/FLF2V only)."""
    variant: str | None = None
    """Variant name; inferred from the checkpoint's shapes when None."""
    variant_overrides: dict = field(default_factory=dict)
    """Field overrides of the variant (tiny test models, custom sizes)."""
    loras: list[tuple[str, float]] = field(default_factory=list)
    """(file, strength) LoRAs for the model, or the A14B high-noise expert."""
    loras_low: list[tuple[str, float]] = field(default_factory=list)
    """(file, strength) LoRAs for the A14B low-noise expert."""
    fp8: bool = False
    """Store the blocks' Linear weights in float8_e4m3fn (upcast per matmul)."""


@dataclass
class RunSettings:
    """How it runs: device, precision, sampler, progress."""

    sampler: str = "unipc"
    """unipc (official default) | dpm++ | euler."""
    device: str | None = None
    """cuda when available, else cpu."""
    dtype: str | None = None
    """bf16 | fp16 | fp32 for the transformer (default bf16 on GPU, fp32 on CPU)."""
    progress: bool = True
    """Show a progress bar over the sampling steps."""
    offload: bool = False
    """A14B: keep only the active expert on the GPU (the other on the CPU); the text encoder is always freed."""


def generate(spec: ModelSpec, requests: list[PromptSpec], out: str | Path,
             settings: RunSettings | None = None) -> list[Path]:
    """Generate one video (or image) per request; returns the written paths."""
    settings = settings or RunSettings()
    device, dtype = _device_and_dtype(settings)
    variant = resolve_variant(spec)
    requests = [resolve_request(r, variant) for r in requests]
    outputs = output_paths(Path(out), len(requests))
    validate(spec, variant, requests, outputs, settings)
    loras = read_loras(spec, variant)
    contexts = encode_prompts(spec, variant, requests, device)
    denoiser = load_denoiser(spec, variant, dtype, device, offload=settings.offload, loras=loras)
    vae, clip = load_image_models(spec, variant, device)
    written = []
    for request, (context, negative), path in zip(requests, contexts, outputs):
        latents = denoise(denoiser, variant, request, context, negative, vae, clip, settings, device)
        video_BCFHW = vae.decode(latents.to(device))
        written.append(write_output(path, video_BCFHW, variant, request, spec, settings))
        print(f"wrote {path} (seed {request.seed})", file=sys.stderr)
    return written


def resolve_variant(spec: ModelSpec) -> WanVariant:
    """The variant to generate with: named (and checked against the checkpoint) or inferred from its shapes.

    Only the checkpoint's header is read, so a wrong file is reported before any weights are loaded.
    """
    from wantune.models import checkpoint
    from wantune.models.detect import architecture, check_variant
    from wantune.models.formats import WeightFiles
    from wantune.models.variants import get_variant

    model = Path(spec.model)
    if not model.exists():
        raise UserError(f"{model}: --model not found")
    pair = checkpoint.is_expert_folder(model) or spec.model_low is not None
    location = checkpoint.expert_paths(model, spec.model_low)[0] if pair else checkpoint.transformer_location(model)
    weights = WeightFiles.open(location)
    try:
        shapes = checkpoint.official_shapes(weights)
    finally:
        weights.close()
    if spec.variant is not None:
        variant = get_variant(spec.variant, **spec.variant_overrides)
        check_variant(variant, architecture(shapes, str(location)), str(location))
        return variant
    variant = checkpoint.resolve_variant(None, shapes, location, str(model))
    return variant.replace(**spec.variant_overrides) if spec.variant_overrides else variant


def resolve_request(request: PromptSpec, variant: WanVariant) -> PromptSpec:
    """Fill unset settings from the variant's official defaults; pick a random seed when none is given.

    With an image and no size, the size follows the image's aspect ratio at the variant's default area, as the
    official I2V code does (floored to the pixel multiple).
    """
    if request.image is not None and request.width is None and request.height is None:
        request = dataclasses.replace(request, **_size_from_image(request.image, variant))
    filled = request.with_defaults(
        width=variant.width, height=variant.height, frames=variant.frames, steps=variant.steps,
        guidance=variant.guidance, shift=variant.shift, negative_prompt=variant.negative_prompt,
        seed=random.randrange(2**31))
    if variant.is_expert_pair and filled.guidance_low is None:
        low = variant.guidance_low if request.guidance is None else request.guidance
        filled = dataclasses.replace(filled, guidance_low=low)
    return filled


def _size_from_image(image: str, variant: WanVariant) -> dict:
    """{width, height} with the image's aspect ratio and about the variant's default pixel area."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(image) as img:
            w, h = img.size
    except (OSError, UnidentifiedImageError):
        return {}  # validation reports the missing or unreadable image
    area, m = variant.width * variant.height, variant.pixel_multiple
    return {"width": max(m, int((area * w / h) ** 0.5) // m * m),
            "height": max(m, int((area * h / w) ** 0.5) // m * m)}


def output_paths(out: Path, count: int) -> list[Path]:
    """`out` for one request; `out_000.mp4`, `out_001.mp4`, ... for several."""
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{i:03d}{out.suffix}") for i in range(count)]


def validate(spec: ModelSpec, variant: WanVariant, requests: list[PromptSpec], outputs: list[Path],
             settings: RunSettings) -> None:
    """One-line UserErrors for every bad input, before any weights are read."""
    from wantune.sample.validate import check_files, check_request

    check_files(spec, variant)
    if settings.sampler not in SAMPLERS:
        raise UserError(f"--sampler {settings.sampler!r}: choose one of {', '.join(SAMPLERS)}")
    for request, path in zip(requests, outputs):
        check_request(request, variant, path)


def _device_and_dtype(settings: RunSettings) -> tuple[torch.device, torch.dtype]:
    try:
        device = torch.device(settings.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise UserError(f"--device {settings.device!r}: not a device; use cuda, cuda:N or cpu") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {settings.device}: no CUDA GPU is available here; use --device cpu")
    name = settings.dtype or ("bf16" if device.type == "cuda" else "fp32")
    if name not in DTYPES:
        raise UserError(f"--dtype {name!r}: choose one of {', '.join(DTYPES)}")
    return device, DTYPES[name]


def encode_prompts(spec: ModelSpec, variant: WanVariant, requests: list[PromptSpec],
                   device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(context, negative context) per request, each (1, text_len, D); the text encoder is freed after."""
    from wantune.models.text_encoder import load_text_encoder, pad_context

    encoder = load_text_encoder(spec.text_encoder, spec.tokenizer, dtype=torch.float32
                                if device.type == "cpu" else torch.bfloat16, device=device)
    texts = sorted({r.prompt for r in requests} | {r.negative_prompt for r in requests})
    embeds = dict(zip(texts, encoder.encode(texts)))
    del encoder
    _free(device)
    return [(pad_context([embeds[r.prompt]], variant.text_len).float(),
             pad_context([embeds[r.negative_prompt]], variant.text_len).float()) for r in requests]


def read_loras(spec: ModelSpec, variant: WanVariant) -> dict[str, list]:
    """{'high': [(LoraWeights, strength)], 'low': [...]}, each checked against the variant's Linear shapes.

    LoRA files are small: reading them before the big weights reports a LoRA made for another model at once.
    """
    if not spec.loras and not spec.loras_low:
        return {"high": [], "low": []}
    if variant.is_expert_pair and bool(spec.loras) != bool(spec.loras_low):
        side, other = ("high-noise", "--lora-low") if spec.loras else ("low-noise", "--lora")
        print(f"note: LoRAs apply to the {side} expert only; give the other expert its own with {other} "
              "(the same file may go to both)", file=sys.stderr)
    from wantune.lora import load_lora
    from wantune.lora.merge import check_fits, linear_weight_shapes
    from wantune.models.transformer import WanModel

    with torch.device("meta"):
        shapes = linear_weight_shapes(WanModel(variant))
    out = {}
    for name, items in (("high", spec.loras), ("low", spec.loras_low)):
        out[name] = [(load_lora(path), strength) for path, strength in items]
        for weights, _ in out[name]:
            check_fits(weights, shapes)
    return out


def load_denoiser(spec: ModelSpec, variant: WanVariant, dtype: torch.dtype, device: torch.device,
                  offload: bool = False, loras: dict[str, list] | None = None):
    """The WanModel (or A14B ExpertPair) with its LoRAs attached, optionally stored in fp8."""
    from wantune.models.checkpoint import load_expert_pair, load_transformer
    from wantune.sample.experts import ExpertPair

    loras = read_loras(spec, variant) if loras is None else loras
    offload = offload and variant.is_expert_pair and device.type != "cpu"
    if variant.is_expert_pair:
        high, low = load_expert_pair(spec.model, spec.model_low, variant=variant, dtype=dtype,
                                     device="cpu" if offload else device)
        experts = {"high": high, "low": low}
    else:
        experts = {"high": load_transformer(spec.model, variant=variant, dtype=dtype, device=device)}
    for name, model in experts.items():
        model.eval().requires_grad_(False)
        if loras[name]:
            from wantune.lora import attach_loras

            attach_loras(model, loras[name])
        if spec.fp8:
            from wantune.sample.fp8 import quantize_blocks_fp8

            quantize_blocks_fp8(model)
    if variant.is_expert_pair:
        return ExpertPair(experts["high"], experts["low"], variant.boundary,
                          offload_device=device if offload else None)
    return experts["high"]


def load_image_models(spec: ModelSpec, variant: WanVariant, device: torch.device):
    """(VAE, CLIP or None): the VAE always (decode), CLIP for Wan 2.1 I2V/FLF2V."""
    from wantune.models.vae import load_vae

    vae = load_vae(spec.vae, version=variant.vae, dtype=torch.float32 if device.type == "cpu"
                   else torch.bfloat16, device=device)
    clip = None
    if variant.has_image_embedding:
        from wantune.models.clip import load_clip

        clip = load_clip(spec.clip, dtype=torch.float32 if device.type == "cpu" else torch.float16,
                         device=device)
    return vae, clip


def denoise(denoiser, variant: WanVariant, request: PromptSpec, context: torch.Tensor, negative: torch.Tensor,
            vae, clip, settings: RunSettings, device: torch.device) -> torch.Tensor:
    """The final latents (1, C, F, H, W) for one request."""
    from wantune.sample import conditioning as cond
    from wantune.sample.sampler import latent_shape, make_noise, sample_video
    from wantune.sample.schedulers import make_scheduler

    extra = {}
    if request.image is not None:
        first = cond.load_image(request.image, request.width, request.height).to(device)
        last = None if request.last_image is None else \
            cond.load_image(request.last_image, request.width, request.height).to(device)
        if variant.model_type == "ti2v":
            extra["first_frame_BCFHW"] = cond.first_frame_latent(vae, first)
        else:
            extra["y_BCFHW"] = cond.image_condition(vae, first, last, request.frames)
        if clip is not None:
            extra["clip_fea_BKD"] = cond.clip_features(clip, first, last)
    noise = make_noise(latent_shape(variant, request.frames, request.height, request.width), request.seed)
    guidance = (request.guidance, request.guidance_low) if variant.is_expert_pair else request.guidance
    return sample_video(denoiser, noise.to(device), context.to(device), negative.to(device), guidance,
                        make_scheduler(settings.sampler, request.shift), request.steps,
                        progress=settings.progress, **extra)


def write_output(path: Path, video_BCFHW: torch.Tensor, variant: WanVariant, request: PromptSpec,
                 spec: ModelSpec, settings: RunSettings) -> Path:
    """Write the video (.mp4 at the variant's fps) or single frame (.png) with the settings as metadata."""
    from wantune.sample.output import save_png, save_video, settings_json, to_frames

    frames_FHWC = to_frames(video_BCFHW[0])
    meta = settings_json(variant, request, spec, settings)
    if path.suffix.lower() == ".png":
        return save_png(path, frames_FHWC[0], meta)
    return save_video(path, frames_FHWC, variant.fps, meta)


def _free(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
