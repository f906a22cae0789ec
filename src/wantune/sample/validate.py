"""Checks of a generation request before any weights are read: one UserError line per mistake."""

from __future__ import annotations

from pathlib import Path

from wantune.errors import UserError
from wantune.models.variants import WanVariant
from wantune.sample.prompts import PromptSpec

OUTPUT_SUFFIXES = (".mp4", ".png")


def nearest_valid_frames(frames: int) -> int:
    """The 4n+1 frame count closest to `frames` (ties go up)."""
    return max(1, 4 * int((frames - 1) / 4 + 0.5) + 1)


def nearest_multiple(value: int, multiple: int) -> int:
    """The multiple of `multiple` closest to `value` (ties go up, at least `multiple`)."""
    return max(multiple, multiple * int(value / multiple + 0.5))


def _exists(path: str | None, flag: str, what: str) -> None:
    if path is not None and not Path(path).exists():
        raise UserError(f"{path}: {flag} not found; give the path to {what}")


def check_files(spec, variant: WanVariant) -> None:
    """Every path of the model spec exists, and the ones the variant needs are given."""
    _exists(spec.model, "--model", "the transformer checkpoint")
    _exists(spec.model_low, "--model-low", "the A14B low-noise expert")
    for flag, path, what in (("--vae", spec.vae, "the VAE"), ("--text-encoder", spec.text_encoder, "UMT5-XXL"),
                             ("--tokenizer", spec.tokenizer, "the umt5-xxl tokenizer folder")):
        if path is None:
            raise UserError(f"{flag} is required: the path to {what}")
        _exists(path, flag, what)
    if variant.has_image_embedding:
        if spec.clip is None:
            raise UserError(f"{variant.name} needs --clip: the CLIP ViT-H/14 vision weights (Wan 2.1 I2V/FLF2V)")
        _exists(spec.clip, "--clip", "the CLIP vision weights")
    if variant.is_expert_pair:
        from wantune.models.checkpoint import expert_paths

        expert_paths(spec.model, spec.model_low)
    elif spec.model_low or spec.loras_low:
        flag = "--model-low" if spec.model_low else "--lora-low"
        raise UserError(f"{flag}: {variant.name} has one transformer; only A14B variants have a low-noise expert")
    for path, _ in list(spec.loras) + list(spec.loras_low):
        _exists(path, "--lora", "the LoRA file")


def check_request(request: PromptSpec, variant: WanVariant, out: Path) -> None:
    """Frames, sizes, steps, images and the output file of one request fit the variant."""
    frames, multiple = request.frames, variant.pixel_multiple
    if frames < 1 or (frames - 1) % 4:
        raise UserError(f"--frames {frames}: must be 4n+1; nearest valid: {nearest_valid_frames(frames)}")
    for flag, value in (("--width", request.width), ("--height", request.height)):
        if value < multiple or value % multiple:
            raise UserError(f"{flag} {value}: must be a multiple of {multiple} for {variant.name}; "
                            f"nearest: {nearest_multiple(value, multiple)}")
    if request.steps < 1:
        raise UserError(f"--steps {request.steps}: must be at least 1")
    if request.shift <= 0:
        raise UserError(f"--shift {request.shift}: must be > 0")
    for flag, value in (("--guidance", request.guidance), ("--guidance-low", request.guidance_low)):
        if value is not None and value < 0:
            raise UserError(f"{flag} {value}: must be >= 0 (1 turns guidance off; the variant's default is "
                            f"{variant.guidance})")
    _check_images(request, variant)
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UserError(f"{out}: --out must end in .mp4 (video) or .png (one frame)")
    if out.suffix.lower() == ".png" and frames != 1:
        raise UserError(f"{out}: a .png holds one frame; use --frames 1 or an .mp4 output")


def _check_images(request: PromptSpec, variant: WanVariant) -> None:
    kind = variant.model_type
    if variant.needs_image and request.image is None:
        raise UserError(f"{variant.name} is an image-to-video model: give the first frame with --image")
    if kind == "flf2v" and request.last_image is None:
        raise UserError(f"{variant.name} needs --last-image (the last frame) as well as --image")
    if kind == "t2v" and request.image is not None:
        raise UserError(f"--image: {variant.name} is a text-to-video model; use an I2V or TI2V model")
    if request.last_image is not None and kind not in ("i2v", "flf2v"):
        raise UserError(f"--last-image: {variant.name} cannot take a last frame; use an I2V/FLF2V model")
    if request.last_image is not None and request.frames < 2:
        raise UserError("--last-image needs at least 5 frames")
    _exists(request.image, "--image", "the first-frame image")
    _exists(request.last_image, "--last-image", "the last-frame image")
