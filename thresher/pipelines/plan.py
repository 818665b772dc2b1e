"""Plan-time checks: what a job asks for that can be checked before any document is scored.

`check_plan(job)` runs in `run_job` before the output folder is touched (and so before the
expensive score stage): every filter and selector column (and `dedup.keep.column`, which must
hold numbers) must be one the job's score table WILL have, filter values must fit their column's type, device and dtype settings must be
ones the loaders accept, and model folders the selector reads on this machine must exist.
An error is one `JobError` line naming the job file and the key, with a "did you mean"
suggestion for a misspelt column.

The score table a job will produce: the base columns (`id, _shard, _row, n_chars, n_words`),
the input's own score columns (`input.score_columns`: checked against the first input file,
and against the base and scorers' columns), each scorer's declared columns (`Scorer.output_names()`, with types where `output_schema()`
is cheap), and the global scorers' columns; selectors may also read the input's `text` (and
`prompt`, `response` for instruction data). When re-selecting on saved scores, the saved
score table's own schema is used. `stages.load_select_table` checks columns again after
scoring, as a second line of defence.
"""

from __future__ import annotations

import difflib
import glob
import os
import re
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from thresher.config import JobSpec
from thresher.io import storage
from thresher.io.output import OutputLayout
from thresher.io.readers import input_columns, score_type_ok
from thresher.models.fingerprint import MODEL_KEYS
from thresher.models.loading import DTYPE_NAMES, SPECIAL_REFS, ModelError, resolve_model_ref
from thresher.pipelines.parts import check_output_columns
from thresher.scorers.base import GlobalScorer, Scorer
from thresher.scorers.registry import build_scorer
from thresher.selectors.registry import build_selector
from thresher.specs import JobError

__all__ = ["check_plan", "planned_columns", "PlannedColumns"]

BASE_TYPES: dict[str, pa.DataType] = {"id": pa.string(), "_shard": pa.int32(), "_row": pa.int64(),
                                      "n_chars": pa.int64(), "n_words": pa.int64()}
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


@dataclass
class PlannedColumns:
    """The columns of the score table a job will produce (`types[name]` is None where only the
    name is known) and the prefixes of scorers whose names are known only once their model is."""

    types: dict[str, pa.DataType | None] = field(default_factory=dict)
    trusted_prefixes: list[str] = field(default_factory=list)
    owner: dict[str, str] = field(default_factory=dict)  # column -> the key that produces it

    def has(self, name: str) -> bool:
        return name in self.types or any(name.startswith(p) for p in self.trusted_prefixes)

    def type_of(self, name: str) -> pa.DataType | None:
        return self.types.get(name)

    def add(self, name: str, dtype: pa.DataType | None, owner: str) -> None:
        self.types[name] = dtype
        self.owner[name] = owner


def check_plan(job: JobSpec, reselect: bool = False, in_memory: bool = False) -> PlannedColumns:
    """Check `job` before it runs (see the module docstring); returns the planned columns.

    `reselect`: re-selecting on saved scores (`thresher select`); the saved score table's
    schema stands in for the scorers' declarations. `in_memory`: the input is a table given
    to `run_job`, so `input.path` is not read."""
    source = job.source
    if reselect and source == "<job>":
        source = f"the job saved in {OutputLayout(job.output.path).state}"

    def fail(key: str, message: str) -> JobError:
        return JobError(f"{source}: {key}: {message}")

    if not in_memory:
        _check_input_paths(job, fail)
    _check_settings(job, fail)
    inputs = None if in_memory or reselect or not job.input.score_columns else input_columns(job.input)
    cols = planned_columns(job, fail, saved=_saved_schema(job) if reselect else None, inputs=inputs)
    _check_filters(job, cols, fail)
    _check_dedup_keep(job, cols, fail)
    _check_selector(job, cols, fail)
    check_output_columns(job, cols, in_memory, fail)  # output.columns names columns the parts will have
    return cols


# -- input paths, device, dtype, model folders -----------------------------------------------
def _check_input_paths(job: JobSpec, fail: Any) -> None:
    """Each `input.path` entry exists (or its glob matches); the readers check the rest."""
    raw = job.input.path
    if raw is None:
        raise fail("input.path", "missing (give a file, folder, glob or list)")
    items = [raw] if isinstance(raw, str) else list(raw)
    if not items:
        raise fail("input.path", "an empty list; give a file, folder, glob or list")
    for i, item in enumerate(items):
        key = "input.path" if isinstance(raw, str) else f"input.path.{i}"
        if not item or not item.strip():
            raise fail(key, "an empty path")
        if item.startswith("pkg:") or "://" in item:
            continue  # the readers resolve (or refuse) these
        path = os.path.expanduser(item)
        if any(ch in path for ch in "*?["):
            if not glob.glob(path, recursive=True):
                raise fail(key, f"{item!r}: the pattern matches no file")
        elif not os.path.exists(path):
            raise fail(key, f"{item!r}: no such file or folder")



def _walk(obj: Any, where: str):  # yields (key path, key, value) for every key of nested dicts
    if isinstance(obj, dict):
        for k, v in obj.items():
            path = f"{where}.{k}"
            yield path, k, v
            yield from _walk(v, path)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{where}.{i}")


def _check_settings(job: JobSpec, fail: Any) -> None:
    sections = [(f"scorers.{i}", s) for i, s in enumerate(job.scorers)] + [("selector", job.selector)]
    if job.train:
        sections.append(("train", job.train))
    for where, section in sections:
        for path, key, value in _walk(section, where):
            if key == "device" and value is not None:
                if not isinstance(value, str) or not _DEVICE.match(value.strip().lower()):
                    raise fail(path, f"bad device {value!r}; use auto, cpu, cuda or cuda:N")
            elif key == "dtype" and isinstance(value, str) and value.strip().lower() not in DTYPE_NAMES:
                raise fail(path, f"bad dtype {value!r}; use one of {list(DTYPE_NAMES)}")
    # the selector runs here, on the driver: the model folders it names must be here
    for path, key, value in _walk(job.selector, "selector"):
        if key in MODEL_KEYS and isinstance(value, str) and value not in SPECIAL_REFS:
            try:
                resolve_model_ref(value)
            except ModelError as exc:
                raise fail(path, str(exc)) from None


# -- the score table the job will produce -----------------------------------------------------
def _saved_schema(job: JobSpec) -> pa.Schema | None:
    path = OutputLayout(job.output.path).scores(0)
    try:
        return storage.read_schema(path) if path.exists() else None
    except Exception:  # a damaged file: the select stage reports it
        return None


def planned_columns(job: JobSpec, fail: Any = None, saved: pa.Schema | None = None,
                    inputs: tuple[str, dict[str, pa.DataType | None]] | None = None) -> PlannedColumns:
    """The score-table columns `job` will produce (global scorers' columns included).
    `inputs`: (the first input file, its columns and types), to check `input.score_columns`."""
    if fail is None:
        def fail(key: str, message: str) -> JobError:
            return JobError(f"{job.source}: {key}: {message}")
    cols = PlannedColumns()
    for name, dtype in BASE_TYPES.items():
        cols.add(name, dtype, "the base columns")
    if saved is None:
        _add_input_scores(job, cols, inputs, fail)
    built: list[tuple[int, Scorer | GlobalScorer]] = []
    for i, spec in enumerate(job.scorers):
        try:
            built.append((i, build_scorer(spec)))
        except ImportError as exc:
            if job.engine.name == "local" and saved is None:
                raise fail(f"scorers.{i}", str(exc)) from None
            # the workers may have it (scoring says so if not), or the scores are saved
            cols.trusted_prefixes.append(f"{spec.get('name') or spec['type']}_")
    if saved is not None:
        for f in saved:
            cols.add(f.name, f.type, "the saved scores")
    else:
        for i, scorer in built:
            if isinstance(scorer, Scorer):
                _add_scorer(cols, i, scorer, fail)
    for i, scorer in built:
        if isinstance(scorer, GlobalScorer):
            where = f"scorers.{i}"
            for col in scorer.required_columns():
                if not cols.has(col):
                    raise fail(_key_for(job.scorers[i], col, where), _missing(col, cols))
            for f in scorer.output_schema():
                _add_unique(cols, f.name, f.type, where, fail)
    return cols


def _add_input_scores(job: JobSpec, cols: PlannedColumns, inputs: tuple[str, dict[str, pa.DataType | None]] | None,
                      fail: Any) -> None:
    """`input.score_columns`: not a base column, present in the input (its first file; the readers
    check every file), of a score type; they join the score table under their own names."""
    for i, name in enumerate(job.input.score_columns):
        key = f"input.score_columns.{i}"
        if name in cols.types:
            raise fail(key, f"{name!r} is one of thresher's own columns {list(BASE_TYPES)}; rename the input column")
        dtype = None
        if inputs is not None:
            path, types = inputs
            if name not in types:
                close = difflib.get_close_matches(name, list(types), n=1, cutoff=0.6)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise fail(key, f"no column {name!r} in {path}; {hint}columns: {list(types)[:40]}")
            dtype = types[name]
            if dtype is not None and not score_type_ok(dtype):
                raise fail(key, f"column {name!r} of {path} holds {dtype}; a score column holds numbers, "
                                f"booleans, or lists of numbers (embeddings)")
        cols.add(name, dtype, "input.score_columns")


def _add_scorer(cols: PlannedColumns, i: int, scorer: Scorer, fail: Any) -> None:
    where = f"scorers.{i}"
    try:
        if type(scorer).output_names is Scorer.output_names:  # the schema is cheap: names and types
            fields = [(f.name, f.type) for f in scorer.output_schema()]
        else:
            names = scorer.output_names()
            if names is None:
                cols.trusted_prefixes.append(scorer.col(""))
                return
            fields = [(n, None) for n in names]
    except ModelError as exc:
        raise fail(where, str(exc)) from None
    for name, dtype in fields:
        _add_unique(cols, name, dtype, where, fail)


def _add_unique(cols: PlannedColumns, name: str, dtype: pa.DataType | None, where: str, fail: Any) -> None:
    if name in cols.types:
        if cols.owner[name] == "input.score_columns":
            raise fail(where, f"its column {name!r} is also an input score column (input.score_columns); "
                              f"give the scorer another `name:` or drop {name!r} from input.score_columns")
        raise fail(where, f"its column {name!r} is already taken by {cols.owner[name]}; "
                          f"give the scorer another `name:`")
    cols.add(name, dtype, where)


# -- filters and the selector ----------------------------------------------------------------
def _missing(col: str, cols: PlannedColumns) -> str:
    known = sorted(cols.types)
    close = difflib.get_close_matches(col, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else f"columns: {known[:40]}{' …' if len(known) > 40 else ''}"
    return f"no column {col!r} in the score table this job will produce; {hint}"


def _kind(t: pa.DataType) -> str | None:
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "number"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if pa.types.is_boolean(t):
        return "boolean"
    if (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)
            or pa.types.is_struct(t) or pa.types.is_map(t)):
        return "list"
    return None  # dates, binary, ...: not checked here


def _value_kind(v: Any) -> str:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    return "string"


_HINTS = {("string", "number"): " (write the number without quotes)",
          ("boolean", "string"): " (YAML reads true/false/yes/no/on/off as booleans: quote it)",
          ("number", "string"): " (quote it to compare as text)",
          ("string", "boolean"): " (write true or false without quotes)"}


def _check_filters(job: JobSpec, cols: PlannedColumns, fail: Any) -> None:
    for i, f in enumerate(job.filters):
        where = f"filters.{i}"
        if not cols.has(f.column):
            raise fail(f"{where}.column", _missing(f.column, cols))
        dtype = cols.type_of(f.column)
        if dtype is None or f.op in ("is_null", "not_null"):
            continue
        kind = _kind(dtype)
        if kind == "list":
            raise fail(where, f"column {f.column!r} holds {dtype}, which `{f.op}` cannot compare with a value; "
                              f"filter on a number, string or boolean column")
        if kind is not None and _value_kind(f.value) != kind:
            got = _value_kind(f.value)
            raise fail(f"{where}.value", f"{f.value!r} is a {got}, but column {f.column!r} holds {kind}s "
                                         f"({dtype}){_HINTS.get((got, kind), '')}")


def _check_dedup_keep(job: JobSpec, cols: PlannedColumns, fail: Any) -> None:
    """`dedup.keep.column`: a numeric column of the score table (a scorer's or an input score column)."""
    keep = job.dedup.keep if job.dedup is not None else None
    if keep is None or isinstance(keep, str):
        return
    key = "dedup.keep.column"
    if not cols.has(keep.column):
        raise fail(key, _missing(keep.column, cols))
    dtype = cols.type_of(keep.column)
    if dtype is not None and _kind(dtype) in ("string", "list"):
        raise fail(key, f"column {keep.column!r} holds {dtype}; the keep rule keeps the highest number")


def _key_for(spec: dict[str, Any], col: str, where: str) -> str:
    """The key of `spec` that names column `col` (for error messages), else `where`."""
    for k, v in spec.items():
        if v == col or (isinstance(v, list) and col in v):
            return f"{where}.{k}"
        if isinstance(v, dict) and col in v:
            return f"{where}.{k}.{col}"
    return where


def _check_selector(job: JobSpec, cols: PlannedColumns, fail: Any) -> None:
    selector = build_selector(job.selector)
    for col in selector.required_columns():
        key = _key_for(job.selector, col, "selector")
        if not cols.has(col):
            raise fail(key, _missing(col, cols))
        dtype = cols.type_of(col)
        if dtype is None:
            continue
        if key.rsplit(".", 1)[-1] == "embedding":
            if _kind(dtype) != "list":
                raise fail(key, f"column {col!r} holds {dtype}; an embedding column holds vectors (lists of floats)")
        elif _kind(dtype) in ("string", "list"):
            raise fail(key, f"column {col!r} holds {dtype}; the selector reads numbers from it")
    text = {"text"} | ({"prompt", "response"} if job.input.instruction else set())
    for col in selector.text_columns():
        if col not in text:
            hint = (" (instruction data: set input.prompt_column and input.response_column)"
                    if col in ("prompt", "response") else "")
            raise fail("selector", f"the {job.selector['type']} selector reads the input column {col!r}, "
                                   f"which this job's input does not give{hint}")
