"""Job specs: one YAML file, validated on load, overridable from the CLI.

A job names its input, columns, scorers, filters, selector and budget, engine, output
and seed. Unknown keys and bad values are an error that names the file and the key.
Scorer and selector entries are validated by the parameter model their class declares,
so a new scorer or selector brings its own validation with it.

The file is parsed with `yaml.safe_load` semantics by a loader that also refuses a key given
twice and alias expansion past `MAX_YAML_NODES` (alias bombs); files over `MAX_JOB_BYTES`,
binary, non-UTF-8 and empty files, and a top level that is not a mapping are refused with a
one-line JobError naming the file. Checks that need the whole job (columns that filters and
the selector name) run at plan time: `thresher.pipelines.plan.check_plan`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from thresher.dedup.spec import DedupSpec
from thresher.scorers.registry import validate_scorer_spec
from thresher.selectors.registry import validate_selector_spec
from thresher.specs import JobError, Strict, format_validation_error
from thresher.training.spec import validate_train_spec

__all__ = ["JobSpec", "load_job", "apply_overrides", "parse_override", "safe_load_yaml", "job_identity"]

MAX_JOB_BYTES = 1 << 20  # a job file is a few KiB; anything over 1 MiB is refused unread
MAX_YAML_NODES = 1_000_000  # nodes after alias expansion (a 1 MiB file has at most ~500k of its own)
MAX_SEED = 2**32 - 1  # every generator (numpy, torch, Python) takes it


class InputSpec(Strict):
    """Where the documents come from and which columns hold what."""

    path: str | list[str] | None = Field(
        None, description="file, folder, glob, or a list of them; unset only for in-memory data "
                          "(thresher.run(job, data=...))")
    format: Literal["auto", "parquet", "jsonl", "datasets", "textfiles"] = Field(
        "auto", description="auto: from the file names; or parquet, jsonl, datasets (a save_to_disk folder), textfiles")
    text_column: str = Field("text", description="source column holding the document text")
    id_column: str | None = Field(
        None, description="source column of unique document ids; default: <file>:<row>, stable across runs")
    prompt_column: str | None = Field(None, description="instruction data: the prompt column")
    response_column: str | None = Field(None, description="instruction data: the response column")
    input_column: str | None = Field(None,
                                     description="instruction data: an optional input column that goes with the prompt")
    on_bad_row: Literal["reject", "fail"] = Field(
        "reject", description="a row that cannot be used (bad JSON, no text, ...): reject it (to _rejected/) "
                              "or fail the job")
    batch_rows: int = Field(2048, gt=0, description="rows read and scored at a time (bounds the memory per worker)")
    shard_rows: int = Field(
        50_000, gt=0, description="rows per shard for Parquet, JSONL and in-memory inputs (files per shard for "
                                  "text-file inputs): a big Parquet file is split into row ranges (at row-group "
                                  "boundaries where one is near, else inside a row group), an uncompressed JSONL "
                                  "file into byte ranges at line starts, a table into slices, so one file spreads "
                                  "over the workers; a shard is one map task (scored by one worker) and one output "
                                  "part unless output.target_rows_per_part is set; lower it for expensive model "
                                  "scorers")
    score_columns: list[str] = Field(
        default_factory=list,
        description="input columns that come with scores (numbers, booleans, or embeddings as lists of floats): "
                    "copied into the score table under the same name, so filters and selectors use them like "
                    "a scorer's columns")

    @field_validator("score_columns")
    @classmethod
    def _distinct_score_columns(cls, value: list[str]) -> list[str]:
        if any(not c or not c.strip() for c in value):
            raise ValueError("an empty column name")
        repeated = sorted({c for c in value if value.count(c) > 1})
        if repeated:
            raise ValueError(f"{repeated} named more than once")
        return value

    @property
    def instruction(self) -> bool:
        return self.prompt_column is not None


class FilterSpec(Strict):
    """Keep a row only where `column op value` holds (applied before the selector)."""

    column: str = Field(..., min_length=1,
                        description="score-table column to test (a scorer's column, n_words, n_chars, ...)")
    op: Literal["==", "!=", ">", ">=", "<", "<=", "is_null", "not_null"] = Field(
        "==", description="comparison; is_null and not_null take no value")
    value: float | int | bool | str | None = Field(None, description="what the column is compared with")

    @model_validator(mode="after")
    def _value_fits_op(self) -> "FilterSpec":
        if self.op in ("is_null", "not_null"):
            if self.value is not None:
                raise ValueError(f"op {self.op!r} takes no value (got {self.value!r})")
        elif self.value is None:
            raise ValueError(f"op {self.op!r} needs a `value` to compare column {self.column!r} with")
        return self


class LocalEngineSpec(Strict):
    workers: int | None = Field(None, gt=0, description="processes; default = cores")
    torch_threads: int | None = Field(None, gt=0, description="torch threads per worker; default = 1 when workers > 1")


class SparkEngineSpec(Strict):
    master: str = Field("local[*]", min_length=1,
                        description="Spark master URL: local[*], local[N], spark://HOST:7077, ...")
    conf: dict[str, str] = Field(default_factory=dict,
                                 description="Spark settings for the session (numbers and booleans are taken as text)")

    @field_validator("conf", mode="before")
    @classmethod
    def _conf_as_strings(cls, value: Any) -> Any:
        """Spark conf values are strings; a number or boolean (`spark.executor.cores: 4`,
        `--set ...=true`) is taken as its text (`"4"`, `"true"`, as Spark spells them)."""
        if not isinstance(value, dict):
            return value
        return {k: (str(v).lower() if isinstance(v, bool) else str(v))
                if isinstance(v, (bool, int, float)) else v for k, v in value.items()}


class BeamEngineSpec(Strict):
    runner: str = Field("DirectRunner", min_length=1,
                        description="Beam runner: DirectRunner, PrismRunner, FlinkRunner, DataflowRunner, ...")
    options: dict[str, Any] = Field(default_factory=dict,
                                    description="Beam pipeline options, passed to PipelineOptions unchanged")


class EngineSpec(Strict):
    name: Literal["local", "spark", "beam"] = Field(
        "local", description="the engine that runs the map stages: local processes, Spark or Beam")
    local: LocalEngineSpec = Field(default_factory=LocalEngineSpec, description="settings of the local engine")
    spark: SparkEngineSpec = Field(default_factory=SparkEngineSpec, description="settings of the Spark engine")
    beam: BeamEngineSpec = Field(default_factory=BeamEngineSpec, description="settings of the Beam engine")


ALWAYS_WRITTEN = ("id", "text")  # output.columns never drops these (nor prompt/response of instruction data)


class OutputColumnsSpec(Strict):
    """Which columns the parts (`part-*.parquet`) hold: `keep` or `drop`, each a list of column
    names or simple globs (`embedding_*`). `id` and the text columns are always written; the
    score and selection tables (`_scores/`, `_selection/`) keep every column either way."""

    keep: list[str] | None = Field(None, description="write only these columns (names or globs such as "
                                                       "`heuristics_*`), besides `id` and the text columns")
    drop: list[str] | None = Field(None, description="write every column but these (names or globs such as "
                                                       "`embedding_*`); `id` and the text columns cannot be dropped")

    @field_validator("keep", "drop")
    @classmethod
    def _patterns(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("an empty list; name at least one column (or a glob such as `embedding_*`)")
            for i, p in enumerate(value):
                if not p.strip():
                    raise ValueError(f"item {i} is an empty column name")
        return value

    @field_validator("drop")
    @classmethod
    def _not_always_written(cls, value: list[str] | None) -> list[str] | None:
        import fnmatch

        for i, p in enumerate(value or []):
            hit = [c for c in ALWAYS_WRITTEN if fnmatch.fnmatchcase(c, p)]
            if hit:
                raise ValueError(f"item {i} ({p!r}) would drop {hit[0]!r}; `id` and the text columns are "
                                 f"always written (drop other columns, or use `keep:`)")
        return value

    @model_validator(mode="after")
    def _one_of(self) -> "OutputColumnsSpec":
        if (self.keep is None) == (self.drop is None):
            raise ValueError("give either `keep: [...]` or `drop: [...]`" +
                             (", not both" if self.keep is not None else ""))
        return self


class OutputSpec(Strict):
    path: str = Field("out/job", min_length=1,
                      description="the output folder (relative: to the current folder); not part of the job's identity")
    overwrite: bool = Field(False, description="discard what the folder holds and start afresh (as --overwrite)")
    compression: Literal["zstd", "snappy", "gzip", "none"] = Field(
        "zstd", description="Parquet compression of every part")
    write_rejected: bool = Field(True, description="write rejected rows (reason and raw bytes) to _rejected/")
    columns: OutputColumnsSpec | None = Field(
        None, description="`{keep: [...]}` or `{drop: [...]}`: the columns the parts hold (names or globs); "
                          "changing it re-runs only the write stage")
    target_rows_per_part: int | None = Field(
        None, gt=0, description="re-chunk the selected rows into parts of this many rows (the last one "
                                "smaller), in (shard, row) order; unset: one part per input shard")
    target_bytes_per_part: int | None = Field(
        None, gt=0, description="re-chunk into parts of about this many bytes (rows per part estimated from "
                                "the written bytes per row); with target_rows_per_part, the smaller part wins")
    storage_options: dict[str, Any] | None = Field(
        None, exclude=True,
        description="settings of the filesystem that holds `path` when it is a URI (s3://: endpoint_url, region, "
                    "key, secret, token, anonymous, ...); credentials otherwise come from the standard "
                    "environment and config files. Never written to the manifest or the run state")


class JobSpec(Strict):
    """A whole job. `scorers` and `selector` are validated against their registries."""

    name: str = Field("job", min_length=1, description="the job's name, shown in the summary and the manifest")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seeds every random stream of the job")
    input: InputSpec = Field(default_factory=InputSpec,
                             description="where the documents come from and which columns hold what")
    scorers: list[dict[str, Any]] = Field(
        default_factory=list, description="scorer entries (type, optional name, parameters), run in order: see Scorers")
    dedup: DedupSpec | None = Field(
        None, description="exact and MinHash near-duplicate removal after scoring, before the filters and the "
                          "selector (see dedup); unset: no dedup stage")
    filters: list[FilterSpec] = Field(default_factory=list,
                                      description="conditions a row must meet before the selector sees it")
    selector: dict[str, Any] = Field(default_factory=lambda: {"type": "all"},
                                     description="the selector entry (type and parameters): see Selectors")
    engine: EngineSpec = Field(default_factory=EngineSpec,
                               description="which engine runs the map stages, and its settings: see Engines")
    output: OutputSpec = Field(default_factory=OutputSpec,
                               description="the output folder and how its parts are written")
    train: dict[str, Any] | None = Field(
        None, description="settings of `thresher train` on this job's output (see train); null: the defaults")
    # the job file this spec came from (error messages name it); not part of any hash
    _source: str | None = PrivateAttr(None)

    @field_validator("scorers")
    @classmethod
    def _check_scorers(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [_keyed(validate_scorer_spec, entry, f"scorers.{i}") for i, entry in enumerate(value)]

    @field_validator("selector")
    @classmethod
    def _check_selector(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _keyed(validate_selector_spec, value, "selector")

    @property
    def source(self) -> str:
        """The job file this spec was loaded from (`<job>` for a dict)."""
        return self._source or "<job>"

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
    # Where the output folder lies (`output.path`) and `output.overwrite` are no part of a
    # job's identity: neither hash reads them, and `job_identity` drops them from the job a
    # folder's state records, so a moved folder is still its own job's.
    def identity(self) -> dict[str, Any]:
        """The job as JSON without the keys that are not part of its identity (`job_identity`)."""
        return job_identity(self.model_dump(mode="json"))

    def score_hash(self) -> str:
        """Hash of everything that changes the score table (input, columns, scorers)."""
        # score_columns only when given, so the hashes of jobs without them stay what they were
        inp = self.input.model_dump(mode="json", exclude=None if self.input.score_columns else {"score_columns"})
        return _hash({"input": inp, "scorers": self.scorers, "seed": self.seed})

    def select_hash(self) -> str:
        """Hash of everything that changes the selection and the output shards."""
        parts: dict[str, Any] = {
            "score": self.score_hash(),
            "filters": [f.model_dump(mode="json") for f in self.filters],
            "selector": self.selector,
            "compression": self.output.compression,
        }
        if self.dedup is not None:  # only when set: jobs without dedup keep their hashes (and folders)
            parts["dedup"] = self.dedup_hash()
        return _hash(parts)

    def dedup_hash(self) -> str | None:
        """Hash of everything that changes the dedup stage's clusters (the scores it reads and
        the `dedup` section); None without a dedup section."""
        if self.dedup is None:
            return None
        return _hash({"score": self.score_hash(), "dedup": self.dedup.model_dump(mode="json")})

    def write_hash(self) -> str:
        """Hash of everything that changes the parts: the selection (`select_hash`) plus
        `output.columns` and the part sizes. A changed write hash re-runs only the write stage.
        Equal to `select_hash()` while those are unset, so older folders resume as they are."""
        o = self.output
        if o.columns is None and o.target_rows_per_part is None and o.target_bytes_per_part is None:
            return self.select_hash()
        return _hash({"select": self.select_hash(),
                      "columns": o.columns.model_dump(mode="json") if o.columns is not None else None,
                      "target_rows_per_part": o.target_rows_per_part,
                      "target_bytes_per_part": o.target_bytes_per_part})


NOT_IDENTITY = (("output", "path"), ("output", "overwrite"))


def job_identity(job: dict[str, Any]) -> dict[str, Any]:
    """A dumped job (`JobSpec.model_dump(mode="json")`, or the `job` of a folder's state) without
    the keys in `NOT_IDENTITY`: where its output folder lies and whether to overwrite it."""
    out = copy.deepcopy(job)
    for section, key in NOT_IDENTITY:
        if isinstance(out.get(section), dict):
            out[section].pop(key, None)
    return out


def _keyed(validate: Any, entry: Any, where: str) -> dict[str, Any]:
    """`validate(entry, where)`, its error prefixed with `where` when it does not name a key."""
    try:
        return validate(entry, where)
    except ValueError as exc:
        msg = str(exc)
        raise ValueError(msg if msg.startswith(where) else f"{where}: {msg}") from None


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _JobYamlLoader(yaml.SafeLoader):
    """`yaml.safe_load` semantics (plain data, no tags that build objects), plus two refusals:
    a key given twice in one mapping, and more than `MAX_YAML_NODES` nodes once every alias is
    expanded (an "alias bomb": ten levels of ten-way anchors are 10^10 nodes). Nodes are counted
    while the document is composed, so a bomb stops after a few thousand nodes of work."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._nodes = 0
        self._expanded: dict[int, int] = {}  # id(collection node) -> its size with aliases expanded

    def _count(self, n: int, mark: Any) -> None:
        self._nodes += n
        if self._nodes > MAX_YAML_NODES:
            where = f" (at line {mark.line + 1})" if mark is not None else ""
            raise _YamlRefused(f"aliases expand to more than {MAX_YAML_NODES:,} values{where}; "
                               "refusing an oversized (alias-bomb) job file")

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            node = super().compose_node(parent, index)
            if not isinstance(node, yaml.ScalarNode) and id(node) not in self._expanded:
                raise _YamlRefused(f"recursive alias at line {mark.line + 1} (an anchor used inside itself)")
            self._count(self._expanded.get(id(node), 1), mark)
            return node
        start, mark = self._nodes, self.peek_event().start_mark
        node = super().compose_node(parent, index)
        self._count(1, mark)
        if not isinstance(node, yaml.ScalarNode):
            self._expanded[id(node)] = self._nodes - start
        return node

    def compose_mapping_node(self, anchor: Any) -> Any:
        node = super().compose_mapping_node(anchor)
        seen: dict[tuple[str, str], int] = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            line = key.start_mark.line + 1
            if (key.tag, key.value) in seen:
                raise _YamlRefused(f"duplicate key {key.value!r} at line {line} "
                                   f"(first given at line {seen[key.tag, key.value]}); give each key once")
            seen[key.tag, key.value] = line
        return node


class _YamlRefused(Exception):
    """A YAML document the job loader refuses (its message is the reason)."""


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error on one line: what, and where (line and column)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    what = " ".join(str(getattr(exc, "problem", None) or exc).split())
    context = getattr(exc, "context", None)
    if context:
        what = f"{' '.join(str(context).split())}: {what}"
    if mark is not None:
        what += f" (line {mark.line + 1}, column {mark.column + 1})"
    if "'\\t'" in what or "\\t" in what:
        what += "; YAML is indented with spaces, never tabs"
    return what


def safe_load_yaml(text: str, source: str) -> Any:
    """Parse YAML text as `yaml.safe_load` does, refusing duplicate keys and alias bombs; any
    problem is a one-line JobError naming `source`."""
    loader = _JobYamlLoader(text)
    try:
        return loader.get_single_data()
    except _YamlRefused as exc:
        raise JobError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        raise JobError(f"{source}: not valid YAML: {_yaml_problem(exc)}") from None
    except RecursionError:
        raise JobError(f"{source}: not valid YAML: nested too deeply") from None
    finally:
        loader.dispose()


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse `a.b.c=value` (value read as YAML, so numbers and lists work).

    A key segment in double or single quotes may hold dots and `=`:
    `engine.spark.conf."spark.executor.memory"=4g` sets the key `spark.executor.memory`."""
    path: list[str] = []
    part, quoted = "", False
    quote: str | None = None
    raw: str | None = None
    for i, ch in enumerate(item):
        if quote is not None:
            if ch == quote:
                quote = None
            else:
                part += ch
        elif ch in "\"'" and not part and not quoted:
            quote, quoted = ch, True
        elif ch == "." or ch == "=":
            if not part:
                raise JobError(f"--set {item!r}: empty key" if ch == "." or not quoted else
                               f"--set {item!r}: an empty quoted key")
            path.append(part)
            part, quoted = "", False
            if ch == "=":
                raw = item[i + 1:]
                break
        elif quoted:
            raise JobError(f"--set {item!r}: text after a quoted key segment; "
                           "a quoted segment stands between dots")
        else:
            part += ch
    if quote is not None:
        raise JobError(f"--set {item!r}: unclosed {quote} quote in the key")
    if raw is None:
        raise JobError(f"--set {item!r}: expected key=value")
    return path, safe_load_yaml(raw, f"--set {item!r}: value") if raw != "" else ""


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--set key.path=value` overrides to a raw job dict (lists indexed by number).

    A path that cannot be followed (an index out of range, a key under a plain value) is a
    JobError naming the override and the key."""
    data = copy.deepcopy(data)
    for item in overrides:
        path, value = parse_override(item)
        node: Any = data
        for i, part in enumerate(path):
            last = i == len(path) - 1
            here = ".".join(path[: i + 1])
            if isinstance(node, list):
                try:
                    index = int(part)
                    node[index]  # noqa: B018 - an index out of range is the user's error
                except (ValueError, IndexError):
                    raise JobError(f"--set {item!r}: {here}: no list item {part!r} "
                                   f"(the list has {len(node)})") from None
                if last:
                    node[index] = value
                else:
                    node = node[index]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    if part not in node or node[part] is None:
                        node[part] = {}
                    node = node[part]
            else:
                above = ".".join(path[:i]) or "(top level)"
                raise JobError(f"--set {item!r}: {above} is a {type(node).__name__} ({node!r}), "
                               f"so it has no key {part!r}")
    return data


def _read_job_file(path: str | os.PathLike[str]) -> Any:
    """The parsed YAML of a job file; an unusable file is a JobError naming it."""
    source = str(path)
    p = Path(path)
    if p.is_dir():
        raise JobError(f"{source}: is a folder, not a job file")
    if not p.is_file():
        raise JobError(f"{source}: job file not found")
    try:
        size = p.stat().st_size
        if size > MAX_JOB_BYTES:
            raise JobError(f"{source}: job file is {size:,} bytes; refusing job files over "
                           f"{MAX_JOB_BYTES:,} bytes (a job is a few KiB of YAML)")
        raw = p.read_bytes()
    except OSError as exc:
        raise JobError(f"{source}: cannot read the job file: {exc.strerror or exc}") from None
    if len(raw) > MAX_JOB_BYTES:  # grew while we looked
        raise JobError(f"{source}: job file is over {MAX_JOB_BYTES:,} bytes; refused")
    if b"\x00" in raw:
        raise JobError(f"{source}: a binary file, not a YAML job file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise JobError(f"{source}: not UTF-8 text (bad byte at line {line}); a job file is YAML text") from None
    if not text.strip():
        raise JobError(f"{source}: the job file is empty")
    data = safe_load_yaml(text, source)
    if data is None:
        raise JobError(f"{source}: the job file holds no settings (only comments or `null`)")
    return data


def load_job(path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None,
             data: dict[str, Any] | None = None) -> JobSpec:
    """Load and validate a job from a YAML file (or a dict), applying CLI overrides."""
    source = str(path) if path is not None else "<job>"
    if data is None:
        if path is None:
            raise JobError("load_job: give a path or a dict")
        data = _read_job_file(path)
    if not isinstance(data, dict):
        kind = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
            type(data), f"a {type(data).__name__}")
        raise JobError(f"{source}: a job must be a mapping of keys (key: value lines), got {kind}")
    try:
        data = apply_overrides(data, overrides or [])
    except JobError as exc:
        raise JobError(f"{source}: {exc}") from None
    try:
        job = JobSpec.model_validate(data)
    except ValidationError as err:
        raise JobError(format_validation_error(err, source)) from None
    job._source = source if path is not None else None
    return job
