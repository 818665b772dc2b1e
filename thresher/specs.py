"""The ground layer: what every other module needs, importing nothing of thresher.

- `JobError`: a job that cannot be used; the message names the file, key, row or path.
- `Strict`: the pydantic base of every spec and parameter model (unknown keys are errors).
- `format_validation_error` / `param_errors`: pydantic errors as `key.path: message` lines.
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


def format_validation_error(err: ValidationError, source: str) -> str:
    """Turn a pydantic error into lines of `source: key.path: message`."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"{source}: {loc}: {_message(e)}")
    return "\n".join(lines)


def param_errors(err: ValidationError, where: str) -> str:
    """One `where.key: message` entry per error of a parameter model, joined by `; `."""
    return "; ".join(f"{where}.{'.'.join(str(p) for p in e['loc'])}: {_message(e)}" for e in err.errors())


def config_diff(old: Any, new: Any, path: str = "") -> list[str]:
    """``key.path: old -> new`` for every value that differs between two JSON-like configs.

    Dicts are compared key by key (a missing key shows as ``(not set)``); anything else,
    lists included, is compared whole.
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
    return [] if old == new else [f"{path or '(top level)'}: {old!r} -> {new!r}"]
