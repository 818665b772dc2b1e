"""Scorer registry: job-spec `type` -> scorer class, and validation of scorer entries."""

from __future__ import annotations

from typing import Any

from thresher.specs import registered_class, validate_params
from thresher.scorers.base import GlobalScorer, Scorer

# type name -> "module:Class"; imported lazily so a job only imports what it uses
SCORERS: dict[str, str] = {
    "heuristics": "thresher.scorers.heuristics:HeuristicScorer",
    # model scorers (thresher/scorers/<module>.py)
    "perplexity": "thresher.scorers.perplexity:PerplexityScorer",
    "classifier": "thresher.scorers.classifier:ClassifierScorer",
    "fasttext": "thresher.scorers.fasttext_scorer:FastTextScorer",
    "langid": "thresher.scorers.fasttext_scorer:LangIdScorer",
    "embedding": "thresher.scorers.embedding:EmbeddingScorer",
    "icon": "thresher.scorers.icon:IConScorer",
    # global scorers (run on the whole score table)
    "clusters": "thresher.scorers.clusters:ClusterScorer",
}


def scorer_class(type_name: str) -> type[Scorer] | type[GlobalScorer]:
    """The class registered for `type_name` (a clear error lists the known types)."""
    return registered_class(SCORERS, "scorer", type_name)


def validate_scorer_spec(entry: Any, where: str) -> dict[str, Any]:
    """Check one `scorers:` entry; returns it normalised (defaults filled in)."""
    if not isinstance(entry, dict) or "type" not in entry:
        raise ValueError(f"{where}: each scorer needs a `type` key")
    entry = dict(entry)
    type_name = entry.pop("type")
    name = entry.pop("name", None)
    out = {"type": type_name, **validate_params(scorer_class(type_name).Params, entry, where)}
    if name is not None:
        out["name"] = name
    return out


def build_scorer(spec: dict[str, Any]) -> Scorer | GlobalScorer:
    """Instantiate a scorer from a validated spec entry (no model loading happens here)."""
    spec = dict(spec)
    type_name = spec.pop("type")
    name = spec.pop("name", None)
    cls = scorer_class(type_name)
    return cls(cls.Params.model_validate(spec), column_prefix=name)
