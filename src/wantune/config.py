"""Typed configs: TOML files are serialised dataclass instances.

`load(cls, path_or_dict, overrides)` builds `cls` from TOML, failing with the key's dotted path and a
suggestion on unknown keys or wrong types. `dumps(obj)` writes an instance back to TOML so a run folder
can hold its resolved config. Supported field types: bool, int, float, str, Path, Literal, Optional,
list[...] / tuple[...] of those, nested dataclasses and lists of dataclasses.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from wantune.errors import UserError

T = TypeVar("T")


def load(cls: type[T], source: str | Path | dict, overrides: list[str] | None = None) -> T:
    """Build `cls` from a TOML file (or an already-parsed dict), applying `key.path=value` overrides."""
    if isinstance(source, dict):
        data, where = source, "config"
    else:
        data, where = read_toml(source), str(Path(source))
    for item in overrides or []:
        _apply_override(data, item)
    return _build(cls, data, prefix="", where=where)


def read_toml(path: str | Path) -> dict:
    """The parsed TOML file at `path`; a missing or malformed file is a one-line `UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid TOML ({exc}); fix the file") from None


def _apply_override(data: dict, item: str) -> None:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {item!r}: expected key.path=value")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word is a string
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {key}: {part!r} is not a table")
    node[parts[-1]] = value


def _build(cls: type, data: Any, prefix: str, where: str) -> Any:
    if not isinstance(data, dict):
        raise UserError(f"{where}: key '{prefix or '<root>'}' must be a table, got {type(data).__name__}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            path = f"{prefix}{key}"
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; known keys: {', '.join(fields)}"
            raise UserError(f"{where}: unknown key '{path}'{hint}")
    kwargs = {name: _convert(hints[name], data[name], f"{prefix}{name}", where)
              for name in fields if name in data}
    try:
        obj = cls(**kwargs)
    except TypeError as exc:
        raise UserError(f"{where}: table '{prefix or '<root>'}' is incomplete ({exc})") from None
    check = getattr(obj, "validate", None)
    if check is not None:
        check()
    return obj


def _convert(tp: Any, value: Any, path: str, where: str) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, path, where)
            except UserError as exc:
                errors.append(str(exc))
        if len(errors) == 1:
            raise UserError(errors[0])
        expected = " or ".join(_describe(a) for a in args if a is not type(None))
        raise UserError(f"{where}: key '{path}' must be {expected}, got {value!r}")
    if origin is Literal:
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UserError(f"{where}: key '{path}' must be one of {', '.join(map(repr, args))}, got {value!r}{hint}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise UserError(f"{where}: key '{path}' must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise UserError(f"{where}: key '{path}' must have {len(args)} items, got {len(value)}")
            return tuple(_convert(a, v, f"{path}[{i}]", where) for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [_convert(item, v, f"{path}[{i}]", where) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: key '{path}' must be a table, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, prefix=f"{path}.", where=where)
    return _scalar(tp, value, path, where)


def _describe(tp: Any) -> str:
    """What a value of this field type looks like, for the one-line error ("int", "one of 'auto'")."""
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(map(repr, get_args(tp)))
    return getattr(tp, "__name__", str(tp))


def _scalar(tp: Any, value: Any, path: str, where: str) -> Any:
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Path:
        if isinstance(value, str):
            return Path(value)
    else:
        raise TypeError(f"unsupported config type {tp!r} at {path}")
    raise UserError(f"{where}: key '{path}' must be {tp.__name__}, got {value!r}")


def to_dict(obj: Any) -> Any:
    """A dataclass instance as plain TOML-ready data (None values dropped, Paths as strings)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if getattr(obj, f.name) is not None}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dumps(obj: Any) -> str:
    """Serialise a dataclass instance (or dict) to TOML text that `load` reads back."""
    return _dump_table(to_dict(obj), [])


def _dump_table(table: dict, path: list[str]) -> str:
    lines, subtables, arrays = [], [], []
    for key, value in table.items():
        if isinstance(value, dict):
            subtables.append((key, value))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            arrays.append((key, value))
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for key, value in subtables:
        name = ".".join(_key(k) for k in [*path, key])
        out += f"\n[{name}]\n" + _dump_table(value, [*path, key])
    for key, items in arrays:
        name = ".".join(_key(k) for k in [*path, key])
        for item in items:
            out += f"\n[[{name}]]\n" + _dump_table(item, [*path, key])
    return out


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else _value(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")
