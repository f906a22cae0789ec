"""`wantune caption DIR`: write `.txt` captions with a vision-language model.

Two back ends with one method, `caption(images, instruction) -> str`:
- `HttpCaptioner`: an OpenAI-compatible server (vLLM, Ollama, llama.cpp, LM Studio): POST
  `{endpoint}/chat/completions` with the instruction and the images as base64 JPEG data URLs (a video sends
  N evenly spaced frames). Standard library only; timeouts; retries with exponential backoff on 5xx, 429 and
  connection errors; an unreachable server is a one-line UserError.
- `LocalCaptioner`: a transformers model folder (AutoProcessor + AutoModelForImageTextToText, local files only).

The caption written is `template` filled with {prefix}, {trigger} and {caption} (the model's answer on one line).
Without `--trigger`, `{trigger}` becomes the `[trigger]` placeholder that datasets substitute at training time.
"""

from __future__ import annotations

import base64
import io
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wantune.errors import UserError

IMAGE_INSTRUCTION = (
    "Describe this image as a caption for training a video model: the subject, its appearance and action, the "
    "setting, lighting, colours and camera framing. Answer with one paragraph of plain prose, no preamble.")
VIDEO_INSTRUCTION = (
    "These {n} images are frames, in order, from one video clip. Describe the clip as a caption for training a "
    "video model: the subject, what moves and how, the camera movement, the setting, lighting and colours. "
    "Answer with one paragraph of plain prose, no preamble, and do not mention frames or images.")
TRIGGER_PLACEHOLDER = "[trigger]"
SKIP_DIRS = {"captions", "__pycache__"}


@dataclass
class CaptionOptions:
    """How captions are asked for and written."""

    prefix: str = ""
    """Fixed text put before every caption, e.g. 'Studio Ghibli style. '."""
    trigger: str | None = None
    """Trigger word; filled into {trigger}. None keeps the '[trigger]' placeholder."""
    template: str | None = None
    """Caption layout with {prefix}, {trigger}, {caption}; default '{prefix}{caption}' or, with a trigger,
    '{prefix}{trigger}, {caption}'."""
    instruction: str | None = None
    """Text sent to the model; default IMAGE_INSTRUCTION / VIDEO_INSTRUCTION."""
    overwrite: bool = False
    """Replace existing captions instead of skipping those files."""
    frames: int = 4
    """Evenly spaced frames sent for a video."""
    max_side: int = 768
    """Images and frames are downscaled to at most this many pixels on the longer side."""

    def validate(self) -> None:
        template = self.layout()
        if "{caption}" not in template:
            raise UserError(f"--template {template!r}: must contain {{caption}}")
        if self.frames < 1:
            raise UserError(f"--frames {self.frames}: must be at least 1")
        if self.max_side < 16:
            raise UserError(f"--max-side {self.max_side}: must be at least 16")

    def layout(self) -> str:
        """The template in use."""
        if self.template is not None:
            return self.template
        return "{prefix}{trigger}, {caption}" if self.trigger else "{prefix}{caption}"


def compose(answer: str, options: CaptionOptions) -> str:
    """The caption file's text from the model's answer: one line, template filled."""
    trigger = options.trigger or TRIGGER_PLACEHOLDER
    caption = " ".join(answer.split()).strip().strip('"').strip()
    values = {"prefix": options.prefix.replace("{trigger}", trigger), "trigger": trigger, "caption": caption}
    text = options.layout()
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return " ".join(text.split())


def find_media(root: Path) -> list[Path]:
    """Images and videos under root (recursively), skipping hidden files and captions/ folders."""
    from wantune.data.video import media_kind

    found = []
    for path in sorted(root.rglob("*")):
        parts = path.relative_to(root).parts
        if any(p.startswith(".") or p in SKIP_DIRS for p in parts[:-1]) or path.name.startswith("."):
            continue
        if path.is_file() and media_kind(path):
            found.append(path)
    return found


def caption_target(media: Path) -> Path:
    """Where the caption goes: ../captions/<stem>.txt in the sibling layout, else <stem>.txt beside the file."""
    sibling = media.parent.parent / "captions"
    if media.parent.name in ("images", "videos") and sibling.is_dir():
        return sibling / f"{media.stem}.txt"
    return media.with_suffix(".txt")


def existing_caption(media: Path) -> Path | None:
    """A non-empty caption file the dataset loader would already find for `media`."""
    from wantune.data.captions import caption_candidates

    for path in caption_candidates(media):
        if path.is_file() and path.read_bytes().strip():
            return path
    return None


def load_images(media: Path, frames: int, max_side: int) -> list:
    """PIL RGB images to send: the image itself, or `frames` evenly spaced frames of a video."""
    from PIL import Image

    from wantune.data.video import media_kind, probe, read_frames, read_image

    if media_kind(media) == "image":
        arrays = [read_image(media)]
    else:
        count = probe(media).num_frames
        picks = np.linspace(0, count - 1, min(frames, count)).round().astype(int).tolist()
        arrays = list(read_frames(media, picks))
    images = []
    for array in arrays:
        image = Image.fromarray(array)
        image.thumbnail((max_side, max_side), Image.BICUBIC)
        images.append(image)
    return images


def data_url(image) -> str:
    """A PIL image as a base64 JPEG data URL."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class HttpCaptioner:
    """Captions through an OpenAI-compatible /chat/completions endpoint."""

    def __init__(self, endpoint: str, model: str, api_key_env: str | None = None, max_tokens: int = 300,
                 timeout: float = 120.0, retries: int = 3, backoff: float = 0.5):
        if not endpoint.startswith(("http://", "https://")):
            raise UserError(f"--endpoint {endpoint!r}: expected an http:// or https:// URL, e.g. "
                            f"http://127.0.0.1:8000/v1")
        self.url = endpoint.rstrip("/") + "/chat/completions"
        self.model, self.max_tokens, self.timeout = model, max_tokens, timeout
        self.retries, self.backoff = retries, backoff
        self.headers = {"Content-Type": "application/json"}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise UserError(f"--api-key-env {api_key_env}: the environment variable is not set")
            self.headers["Authorization"] = f"Bearer {key}"

    def caption(self, images: list, instruction: str) -> str:
        content = [{"type": "text", "text": instruction}]
        content += [{"type": "image_url", "image_url": {"url": data_url(im)}} for im in images]
        body = {"model": self.model, "messages": [{"role": "user", "content": content}],
                "max_tokens": self.max_tokens, "temperature": 0.2}
        reply = self._post(json.dumps(body).encode("utf-8"))
        try:
            answer = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise UserError(f"{self.url}: unexpected reply (no choices[0].message.content): "
                            f"{json.dumps(reply)[:200]}") from None
        if isinstance(answer, list):  # some servers return content parts
            answer = " ".join(p.get("text", "") for p in answer if isinstance(p, dict))
        if not isinstance(answer, str) or not answer.strip():
            raise UserError(f"{self.url}: the model returned an empty caption")
        return answer

    def _post(self, data: bytes) -> dict:
        """POST with retries on 5xx/429/connection errors; UserError once retries are spent."""
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url, data=data, headers=self.headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read()
            except urllib.error.HTTPError as exc:
                detail = " ".join(exc.read().decode("utf-8", "replace").split())[:200]
                if exc.code >= 500 or exc.code == 429:
                    problem = f"HTTP {exc.code} {detail}"
                    continue
                raise UserError(f"{self.url}: HTTP {exc.code} {detail}; check --model and the server") from None
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
                problem = " ".join(str(getattr(exc, "reason", exc)).split())
                continue
            try:
                return json.loads(raw)
            except json.JSONDecodeError:
                raise UserError(f"{self.url}: reply is not JSON: {raw[:100]!r}") from None
        raise UserError(f"{self.url}: caption server unreachable or failing after {self.retries + 1} tries "
                        f"({problem}); start it or fix --endpoint")


class LocalCaptioner:
    """Captions with a local transformers vision-language model folder (no downloads)."""

    def __init__(self, path: Path, max_tokens: int = 300):
        path = Path(path)
        if not (path / "config.json").is_file():
            raise UserError(f"{path}: not a transformers model folder (no config.json); give the folder that "
                            f"holds config.json, the weights and the processor files")
        from transformers import AutoModelForImageTextToText, AutoProcessor

        try:
            self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
            self.model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True, dtype="auto")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path}: cannot load a vision-language model ({' '.join(str(exc).split())[:200]})"
                            f"; it must load with AutoModelForImageTextToText") from None
        self.model.eval()
        self.max_tokens = max_tokens

    def caption(self, images: list, instruction: str) -> str:
        import torch

        content = [{"type": "image", "image": im} for im in images] + [{"type": "text", "text": instruction}]
        messages = [{"role": "user", "content": content}]
        inputs = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                    return_dict=True, return_tensors="pt").to(self.model.device)
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_tokens, do_sample=False)
        return self.processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def caption_folder(root: Path, captioner, options: CaptionOptions, progress: bool = True) -> dict:
    """Caption every image/video under root; returns {'written', 'skipped', 'failed': {path: reason}}."""
    from tqdm import tqdm

    from wantune.data.prep import atomic_write_text
    from wantune.data.video import media_kind

    options.validate()
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: folder not found")
    media = find_media(root)
    if not media:
        raise UserError(f"{root}: no images or videos in it")
    summary: dict = {"written": [], "skipped": [], "failed": {}}
    for path in tqdm(media, desc="caption", unit="file", disable=not progress):
        if not options.overwrite and existing_caption(path) is not None:
            summary["skipped"].append(str(path))
            continue
        try:
            images = load_images(path, options.frames, options.max_side)
        except UserError as exc:
            summary["failed"][str(path)] = str(exc)
            continue
        instruction = options.instruction or (VIDEO_INSTRUCTION if media_kind(path) == "video"
                                              else IMAGE_INSTRUCTION)
        answer = captioner.caption(images, instruction.replace("{n}", str(len(images))))
        target = caption_target(path)
        atomic_write_text(target, compose(answer, options) + "\n")
        summary["written"].append(str(target))
    return summary
