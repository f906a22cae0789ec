from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from wantune import config
from wantune.errors import UserError


@dataclass
class Inner:
    """A nested table."""

    rank: int = 16
    mode: Literal["a", "b"] = "a"


@dataclass
class Outer:
    name: str
    lr: float = 1e-4
    path: Path | None = None
    sizes: list[int] = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)
    items: list[Inner] = field(default_factory=list)


def test_round_trip(tmp_path):
    obj = Outer(name="x", lr=2e-4, path=Path("/a b"), sizes=[1, 2], inner=Inner(8, "b"), items=[Inner(4)])
    f = tmp_path / "c.toml"
    f.write_text(config.dumps(obj))
    assert config.load(Outer, f) == obj


def test_unknown_key_names_path_and_suggests():
    with pytest.raises(UserError, match=r"unknown key 'inner.rnak'.*did you mean 'inner.rank'"):
        config.load(Outer, {"name": "x", "inner": {"rnak": 3}})


def test_wrong_type_names_key():
    with pytest.raises(UserError, match=r"key 'items\[0\].rank' must be int"):
        config.load(Outer, {"name": "x", "items": [{"rank": "big"}]})
    with pytest.raises(UserError, match=r"key 'inner.mode' must be one of"):
        config.load(Outer, {"name": "x", "inner": {"mode": "c"}})


@dataclass
class Either:
    count: int | Literal["auto"] = 0


def test_union_takes_either_and_names_both_when_neither():
    assert config.load(Either, {"count": 3}).count == 3 and config.load(Either, {"count": "auto"}).count == "auto"
    with pytest.raises(UserError, match=r"^config: key 'count' must be int or one of 'auto', got 'al'$"):
        config.load(Either, {"count": "al"})


def test_overrides_parse_toml_values():
    obj = config.load(Outer, {"name": "x"}, ["lr=3e-4", "inner.rank=32", "name=bare"])
    assert obj.lr == 3e-4 and obj.inner.rank == 32 and obj.name == "bare"


def test_missing_file_is_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        config.load(Outer, tmp_path / "nope.toml")
