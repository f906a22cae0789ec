"""On-disk cache store: one safetensors file per key, written atomically.

Layout: `<root>/latents/<k[:2]>/<k>.safetensors`, `<root>/text/<k[:2]>/<k>.safetensors` and
`<root>/cache_info.json` (the encoders a cache was built with). A file is written to a temporary name
in the same folder and renamed into place, so an interrupted run never leaves a half-written entry.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from wantune.errors import UserError

INFO_FILE = "cache_info.json"


class CacheStore:
    """Keyed tensors under a cache folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / f"{key}.safetensors"

    def has(self, kind: str, key: str) -> bool:
        return self.path(kind, key).is_file()

    def save(self, kind: str, key: str, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> Path:
        from safetensors.torch import save_file

        target = self.path(kind, key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        meta = {k: str(v) for k, v in (metadata or {}).items()}
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".safetensors")
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=meta)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return target

    def load(self, kind: str, key: str) -> dict[str, torch.Tensor]:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = self.path(kind, key)
        try:
            return load_file(str(path))
        except FileNotFoundError:
            raise UserError(f"{path}: cache entry missing; run `wantune cache` on this config again") from None
        except (SafetensorError, OSError) as exc:
            raise UserError(f"{path}: unreadable cache entry ({exc}); delete it and run `wantune cache` "
                            f"again") from None

    def write_info(self, info: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        target = self.root / INFO_FILE
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=1, sort_keys=True))
        os.replace(tmp, target)

    def read_info(self) -> dict:
        target = self.root / INFO_FILE
        if not target.is_file():
            raise UserError(f"{self.root}: no cache here ({INFO_FILE} missing); run `wantune cache CONFIG` first")
        return json.loads(target.read_text())
