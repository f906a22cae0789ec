"""Shared test helpers: paths to ../shared fixtures and manifests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FIXTURES = SHARED / "fixtures"
MANIFESTS = SHARED / "manifests"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"{FIXTURES} is missing: the tests need ../shared beside the checkout")
    return FIXTURES


@pytest.fixture(scope="session")
def fixture_index(fixtures_dir) -> dict:
    return json.loads((fixtures_dir / "index.json").read_text())


def manifest(name: str) -> dict[str, tuple[list[int], str]]:
    """Tensor name -> (shape, dtype) of a full-size checkpoint manifest."""
    data = json.loads((MANIFESTS / f"{name}.json").read_text())["tensors"]
    return {k: (list(v[0]), v[1]) for k, v in data.items()}
