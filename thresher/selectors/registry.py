"""Selector registry: job-spec `type` -> selector class, and validation of the entry."""

from __future__ import annotations

from typing import Any

from thresher.specs import registered_class, validate_params
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
    """The class registered for `type_name` (a clear error lists the known types)."""
    return registered_class(SELECTORS, "selector", type_name)


def validate_selector_spec(entry: Any, where: str) -> dict[str, Any]:
    """Check the `selector:` entry; returns it with defaults filled in."""
    if not isinstance(entry, dict) or "type" not in entry:
        raise ValueError(f"{where}: needs a `type` key (one of {sorted(SELECTORS)})")
    entry = dict(entry)
    type_name = entry.pop("type")
    return {"type": type_name, **validate_params(selector_class(type_name).Params, entry, where)}


def build_selector(spec: dict[str, Any]) -> Selector:
    """Instantiate a selector from a validated spec."""
    spec = dict(spec)
    cls = selector_class(spec.pop("type"))
    return cls(cls.Params.model_validate(spec))
