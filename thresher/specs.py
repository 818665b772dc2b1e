"""The ground layer: what every other module needs, importing nothing of thresher.

- `JobError`: a job that cannot be used; the message names the file, key, row or path.
- `Strict`: the pydantic base of every spec and parameter model (unknown keys are errors).
- `format_validation_error` / `param_errors`: pydantic errors as one line of `key.path: message`s.
- `config_diff`: which keys differ between two JSON-like configs.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class JobError(ValueError):
    """A job spec that cannot be used; the message names the file and key."""


class Strict(BaseModel):
    """Base for every spec model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=False)


def _message(e: Any) -> str:
    return "unknown key" if e["type"] == "extra_forbidden" else e["msg"]


def _entry(e: Any, where: str = "") -> str:
    """One pydantic error as `key.path: message` (the path under `where`). A validator's own
    ValueError that already names its key (`scorers.0.x: ...`) is kept as it is, without
    pydantic's "Value error, "."""
    loc = ".".join([where] * bool(where) + [str(p) for p in e["loc"]])
    if e["type"] == "value_error" and isinstance(e.get("ctx", {}).get("error"), Exception):
        msg = " ".join(str(e["ctx"]["error"]).split())
        if not loc or msg.startswith((f"{loc}.", f"{loc}:", f"{loc} ")):
            return msg
        return f"{loc}: {msg}"
    return f"{loc or '(top level)'}: {' '.join(_message(e).split())}"


def format_validation_error(err: ValidationError, source: str) -> str:
    """A pydantic error as one line: `source: key.path: message; key.path: message`."""
    return f"{source}: " + "; ".join(_entry(e) for e in err.errors())


def param_errors(err: ValidationError, where: str) -> str:
    """One `where.key: message` entry per error of a parameter model, joined by `; `."""
    return "; ".join(_entry(e, where) for e in err.errors())


def config_diff(old: Any, new: Any, path: str = "") -> list[str]:
    """``key.path: old -> new`` for every value that differs between two JSON-like configs.

    Dicts are compared key by key (a missing key shows as ``(not set)``). Lists
    that hold mappings are compared item by item (``scorers.1.k: 20 -> 30``); a length change
    is one line (``scorers: 2 items -> 3``) followed by the items added or removed, each named
    briefly (``scorers.2: (not set) -> {type: 'heuristics'}``). Any other list is compared whole.
    """
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in old:
                out.append(f"{sub}: (not set) -> {new[key]!r}")
            elif key not in new:
                out.append(f"{sub}: {old[key]!r} -> (not set)")
            else:
                out += config_diff(old[key], new[key], sub)
        return out
    if (isinstance(old, list) and isinstance(new, list)
            and any(isinstance(x, dict) for x in (*old, *new))):
        where = path or "(top level)"
        out = [] if len(old) == len(new) else [f"{where}: {len(old)} items -> {len(new)}"]
        for i in range(max(len(old), len(new))):
            sub = f"{path}.{i}" if path else str(i)
            if i >= len(old):
                out.append(f"{sub}: (not set) -> {_brief(new[i])}")
            elif i >= len(new):
                out.append(f"{sub}: {_brief(old[i])} -> (not set)")
            else:
                out += config_diff(old[i], new[i], sub)
        return out
    return [] if old == new else [f"{path or '(top level)'}: {old!r} -> {new!r}"]


def _brief(value: Any) -> str:
    """A list item named briefly: a mapping by its `type` and `name`, anything else by its repr
    (cut at 60 characters)."""
    if isinstance(value, dict) and ("type" in value or "name" in value):
        keys = [k for k in ("type", "name") if value.get(k) is not None]
        return "{" + ", ".join(f"{k}: {value[k]!r}" for k in keys) + "}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def registered_class(registry: dict[str, str], kind: str, type_name: str) -> type:
    """The class a registry (`type` -> "module:Class", imported lazily) names for `type_name`;
    an unknown type is an error that lists the known ones."""
    import importlib

    if type_name not in registry:
        raise ValueError(f"unknown {kind} type {type_name!r}; known: {sorted(registry)}")
    module, cls = registry[type_name].split(":")
    return getattr(importlib.import_module(module), cls)


def validate_params(params_model: type[BaseModel], entry: dict[str, Any], where: str) -> dict[str, Any]:
    """`entry` validated by a parameter model, with defaults filled in (JSON values); a bad
    key or value is a ValueError with one `where.key: message` per problem."""
    try:
        return params_model.model_validate(entry).model_dump(mode="json")
    except ValidationError as err:
        raise ValueError(param_errors(err, where)) from None
