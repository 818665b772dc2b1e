"""Job specs: one YAML file, validated on load, overridable from the CLI.

A job names its input, columns, scorers, filters, selector and budget, engine, output
and seed. Unknown keys and bad values are an error that names the file and the key.
Scorer and selector entries are validated by the parameter model their class declares,
so a new scorer or selector brings its own validation with it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from thresher.scorers.registry import validate_scorer_spec
from thresher.selectors.registry import validate_selector_spec
from thresher.specs import JobError, Strict, format_validation_error
from thresher.training.spec import validate_train_spec

__all__ = ["JobSpec", "load_job", "apply_overrides", "parse_override"]


class InputSpec(Strict):
    """Where the documents come from and which columns hold what."""

    path: str | list[str] | None = None
    format: Literal["auto", "parquet", "jsonl", "datasets", "textfiles"] = "auto"
    text_column: str = "text"
    id_column: str | None = None
    prompt_column: str | None = None
    response_column: str | None = None
    input_column: str | None = None
    on_bad_row: Literal["reject", "fail"] = "reject"
    batch_rows: int = Field(2048, gt=0)
    shard_rows: int = Field(50_000, gt=0, description="rows (or files) per shard for in-memory and text-file inputs")

    @property
    def instruction(self) -> bool:
        return self.prompt_column is not None


class FilterSpec(Strict):
    """Keep a row only where `column op value` holds (applied before the selector)."""

    column: str
    op: Literal["==", "!=", ">", ">=", "<", "<=", "is_null", "not_null"] = "=="
    value: float | int | bool | str | None = None


class LocalEngineSpec(Strict):
    workers: int | None = Field(None, gt=0, description="processes; default = cores")
    torch_threads: int | None = Field(None, gt=0, description="torch threads per worker; default = 1 when workers > 1")


class SparkEngineSpec(Strict):
    master: str = "local[*]"
    conf: dict[str, str] = Field(default_factory=dict)


class BeamEngineSpec(Strict):
    runner: str = "DirectRunner"
    options: dict[str, Any] = Field(default_factory=dict)


class EngineSpec(Strict):
    name: Literal["local", "spark", "beam"] = "local"
    local: LocalEngineSpec = Field(default_factory=LocalEngineSpec)
    spark: SparkEngineSpec = Field(default_factory=SparkEngineSpec)
    beam: BeamEngineSpec = Field(default_factory=BeamEngineSpec)


class OutputSpec(Strict):
    path: str = "out/job"
    overwrite: bool = False
    compression: Literal["zstd", "snappy", "gzip", "none"] = "zstd"
    write_rejected: bool = True


class JobSpec(Strict):
    """A whole job. `scorers` and `selector` are validated against their registries."""

    name: str = "job"
    seed: int = 0
    input: InputSpec = Field(default_factory=InputSpec)
    scorers: list[dict[str, Any]] = Field(default_factory=list)
    filters: list[FilterSpec] = Field(default_factory=list)
    selector: dict[str, Any] = Field(default_factory=lambda: {"type": "all"})
    engine: EngineSpec = Field(default_factory=EngineSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)
    train: dict[str, Any] | None = None

    @field_validator("scorers")
    @classmethod
    def _check_scorers(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [validate_scorer_spec(entry, f"scorers.{i}") for i, entry in enumerate(value)]

    @field_validator("selector")
    @classmethod
    def _check_selector(cls, value: dict[str, Any]) -> dict[str, Any]:
        return validate_selector_spec(value, "selector")

    @field_validator("train")
    @classmethod
    def _check_train(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        return validate_train_spec(value, "train")

    @model_validator(mode="after")
    def _check_names(self) -> "JobSpec":
        names = [s.get("name") or s["type"] for s in self.scorers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"scorers: names must be unique, repeated: {dupes} (set `name:` on one)")
        return self

    # -- hashes ---------------------------------------------------------------------
    def score_hash(self) -> str:
        """Hash of everything that changes the score table (input, columns, scorers)."""
        return _hash({"input": self.input.model_dump(mode="json"), "scorers": self.scorers, "seed": self.seed})

    def select_hash(self) -> str:
        """Hash of everything that changes the selection and the output shards."""
        return _hash(
            {
                "score": self.score_hash(),
                "filters": [f.model_dump(mode="json") for f in self.filters],
                "selector": self.selector,
                "compression": self.output.compression,
            }
        )


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse `a.b.c=value` (value read as YAML, so numbers and lists work)."""
    if "=" not in item:
        raise JobError(f"--set {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    if not key:
        raise JobError(f"--set {item!r}: empty key")
    return key.split("."), yaml.safe_load(raw) if raw != "" else ""


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--set key.path=value` overrides to a raw job dict (lists indexed by number)."""
    data = copy.deepcopy(data)
    for item in overrides:
        path, value = parse_override(item)
        node: Any = data
        for i, part in enumerate(path[:-1]):
            if isinstance(node, list):
                node = node[int(part)]
                continue
            if part not in node or node[part] is None:
                node[part] = {}
            node = node[part]
        last = path[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return data


def load_job(path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None,
             data: dict[str, Any] | None = None) -> JobSpec:
    """Load and validate a job from a YAML file (or a dict), applying CLI overrides."""
    source = str(path) if path is not None else "<job>"
    if data is None:
        if path is None:
            raise JobError("load_job: give a path or a dict")
        p = Path(path)
        if not p.is_file():
            raise JobError(f"{source}: job file not found")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise JobError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise JobError(f"{source}: a job must be a mapping of keys, got {type(data).__name__}")
    try:
        data = apply_overrides(data, overrides or [])
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        raise JobError(f"{source}: bad --set override: {exc}") from None
    try:
        job = JobSpec.model_validate(data)
    except ValidationError as err:
        raise JobError(format_validation_error(err, source)) from None
    return job
