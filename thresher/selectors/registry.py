"""Selector registry: job-spec `type` -> selector class, and validation of the entry."""

from __future__ import annotations

import importlib
from typing import Any

from pydantic import ValidationError

from thresher.specs import param_errors
from thresher.selectors.base import Selector

SELECTORS: dict[str, str] = {
    "all": "thresher.selectors.baselines:AllSelector",
    "random": "thresher.selectors.baselines:RandomSelector",
    "topk": "thresher.selectors.baselines:TopKSelector",
    "threshold": "thresher.selectors.baselines:ThresholdSelector",
    "datamask": "thresher.selectors.datamask:DataMaskSelector",
    "greedy": "thresher.selectors.greedy:GreedySelector",
    "icon": "thresher.selectors.icon:IConSelector",
}


def selector_class(type_name: str) -> type[Selector]:
    if type_name not in SELECTORS:
        raise ValueError(f"unknown selector type {type_name!r}; known: {sorted(SELECTORS)}")
    module, cls = SELECTORS[type_name].split(":")
    return getattr(importlib.import_module(module), cls)


def validate_selector_spec(entry: Any, where: str) -> dict[str, Any]:
    """Check the `selector:` entry; returns it with defaults filled in."""
    if not isinstance(entry, dict) or "type" not in entry:
        raise ValueError(f"{where}: needs a `type` key (one of {sorted(SELECTORS)})")
    entry = dict(entry)
    type_name = entry.pop("type")
    cls = selector_class(type_name)
    try:
        params = cls.Params.model_validate(entry)
    except ValidationError as err:
        raise ValueError(param_errors(err, where)) from None
    return {"type": type_name, **params.model_dump(mode="json")}


def build_selector(spec: dict[str, Any]) -> Selector:
    spec = dict(spec)
    cls = selector_class(spec.pop("type"))
    return cls(cls.Params.model_validate(spec))
