"""Readers: plan input shards and stream them as normalised Arrow batches.

Supported inputs: Parquet files and folders (globs, row-group streaming), JSONL (plain,
.gz, .zst), a `datasets` folder saved with `save_to_disk`, plain text files (one
document per file), and an in-memory `pyarrow.Table` or `datasets.Dataset`; a path may be
local or a URI (`s3://`, `gs://`, `hdfs://`, `file://`): every input file is listed, opened
and read through `thresher.io.sources` (over `thresher.io.storage`).

A shard is a file, a group of text files, a slice of a table, or a part of a big file: a row
range of a Parquet file (cut at a row-group boundary where one is near, else inside a row
group) or a byte range of an uncompressed JSONL file, about `shard_rows` rows each
(`thresher.io.splits`), so one big file spreads over the workers.

Every batch a reader yields is split into
- `good`: `id`, `text` (and `prompt`, `response` for instruction data), `_row` (the
  record's ordinal in its file: a JSONL line number from 0, a Parquet row; for a table, in
  its slice), the source's other columns (JSONL: a `meta` column with the other keys as JSON);
- `scores`: the `input.score_columns` of the good rows (they reach the output through the
  score table, so `good` leaves them out);
- `rejected`: `_row`, `id`, `reason`, `raw` (the original bytes) for rows that cannot be
  used, so no row disappears without a count and a reason.
Memory is bounded by `batch_rows`, not by the size of the corpus (except a `.json` file
holding one JSON array, which is read whole, up to `JSON_ARRAY_MAX_BYTES`).

A bad file is a one-line `JobError` naming it, raised at plan time where a cheap look at
the file can tell (Parquet footers, Arrow streams, the first bytes of JSONL files,
differing columns between files); a bad row is rejected with its reason.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import importlib.util
import itertools
import json
import math
import os
import re
import zlib
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from thresher.config import InputSpec, JobError
from thresher.io import sources
from thresher.io.splits import block_size, line_ranges, row_ranges, scan_lines

PARQUET_EXT = (".parquet", ".pq")
JSONL_EXT = (".jsonl", ".json", ".ndjson", ".jsonl.gz", ".json.gz", ".ndjson.gz", ".jsonl.zst", ".json.zst",
             ".ndjson.zst")
TEXT_EXT = (".txt",)
RESERVED = ("_row", "_shard", "n_chars", "n_words")

REJECT_SCHEMA = pa.schema([("_row", pa.int64()), ("id", pa.string()), ("reason", pa.string()),
                           ("raw", pa.large_binary())])

_CHUNK = 1 << 20  # bytes read at a time from JSONL files
PROBE_BYTES = 1 << 16  # what planning reads of each JSONL file
PROBE_RECORDS = 100  # records whose keys planning checks against the job's columns
JSON_ARRAY_MAX_BYTES = 1 << 30  # a `.json` array is read whole; larger ones are refused
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"), (codecs.BOM_UTF8, "utf-8"),
         (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))


def _mark_invalid(exc: UnicodeError) -> tuple[str, int]:
    """Decode error handler: a lone surrogate, so the line fails UTF-8 later and is rejected."""
    return "\udcff", exc.end  # type: ignore[attr-defined]


codecs.register_error("thresher.invalid", _mark_invalid)


@dataclass(frozen=True)
class InputShard:
    """One unit of map work: a file, a part of a file (a row range of a Parquet file, a byte
    range of a JSONL file), a group of text files, or a slice of a table."""

    index: int
    kind: str  # parquet | jsonl | json (one JSON array) | arrow | textfiles | memory
    paths: tuple[str, ...]
    fingerprint: str
    rows: int | None = None
    start: int = 0  # first row of a memory slice; of a part of a file, its first row in the file
    root: str = ""  # common folder, for ids and display
    lo: int = 0  # a part of a file: its first row (Parquet: lo == start) or byte (JSONL)
    hi: int | None = None  # ... and the end of that range (exclusive); None: the whole file

    @property
    def name(self) -> str:
        if self.kind == "memory":
            return f"memory[{self.start}:{self.start + (self.rows or 0)}]"
        if len(self.paths) == 1:
            if self.hi is not None:
                return f"{self.paths[0]} [rows {self.start}:{self.start + (self.rows or 0)}]"
            return self.paths[0]
        return f"{self.root} ({len(self.paths)} files)"

    @property
    def id_prefix(self) -> str:
        if self.kind == "memory":
            return "mem"
        return sources.relative(self.paths[0], self.root)


@dataclass
class ReadBatch:
    good: pa.RecordBatch  # usable rows, normalised
    rejected: pa.RecordBatch  # REJECT_SCHEMA: rows that cannot be used, with a reason
    scores: pa.RecordBatch | None = None  # input.score_columns of the good rows (not in `good`)


# -- planning -----------------------------------------------------------------------


def _resolve_pkg(path: str) -> str:
    """`pkg:NAME/sub/path` -> the path inside an installed package (read-only data)."""
    rest = path[len("pkg:"):]
    pkg, _, sub = rest.partition("/")
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise JobError(f"input {path!r}: package {pkg!r} is not installed")
    return os.path.join(list(spec.submodule_search_locations)[0], sub)


def _expand(paths: str | list[str]) -> list[str]:
    items = [paths] if isinstance(paths, str) else list(paths)
    files: list[str] = []
    for raw in items:
        if raw.startswith("pkg:"):
            item = _resolve_pkg(raw)
        else:
            item = raw if sources.is_uri(raw) else os.path.expanduser(raw)
        if any(ch in item for ch in "*?["):
            try:
                matches = sources.glob(item)
            except (OSError, pa.ArrowException) as exc:
                raise JobError(f"input {raw!r}: cannot list ({_one_line(exc)})") from None
            if not matches:
                raise JobError(f"input {raw!r}: the pattern matches no file")
            files.extend(matches)
        elif sources.exists(item):
            files.append(item)
        else:
            raise JobError(f"input {raw!r}: no such file or folder")
    return files


def _kind_of(path: str) -> str | None:
    low = path.lower()
    if low.endswith(PARQUET_EXT):
        return "parquet"
    if low.endswith(JSONL_EXT):
        return "jsonl"
    if low.endswith(TEXT_EXT):
        return "textfiles"
    return None


def _fingerprint(paths: list[str], extra: str = "") -> str:
    return sources.fingerprint(paths, extra)


def plan_shards(spec: InputSpec, table: pa.Table | None = None) -> list[InputShard]:
    """List the input shards of a job, checking each file's format and columns up front."""
    if table is not None:
        return _plan_memory(spec, table)
    if spec.path is None:
        raise JobError("input.path: missing (give a file, folder, glob or list)")
    entries = _expand(spec.path)
    files: list[tuple[str, str]] = []  # (kind, path)
    dataset_dirs: list[str] = []
    for entry in entries:
        if sources.is_dir(entry):
            if sources.exists(sources.join(entry, "state.json")):
                dataset_dirs.append(entry)
                continue
            if sources.exists(sources.join(entry, "dataset_dict.json")):
                raise JobError(f"input {entry!r}: a DatasetDict folder; point input.path at one split's folder")
            found = _walk(entry)
            if not found:
                arrow = any(f.endswith(".arrow") for f in sources.list_names(entry))
                raise JobError(f"input {entry!r}: the folder holds no Parquet, JSONL or text files"
                               + ("; it holds .arrow files but no state.json (a datasets folder saved with "
                                  "save_to_disk has one)" if arrow else ""))
            files.extend((_kind_of(f), f) for f in found)  # type: ignore[misc]
        else:
            kind = _kind_of(entry)
            if kind is None:
                raise JobError(f"input {entry!r}: unknown file type (expected .parquet, .jsonl[.gz|.zst], .txt)")
            files.append((kind, entry))
    if spec.format != "auto":
        wanted = {"datasets": "arrow"}.get(spec.format, spec.format)
        wrong = [p for k, p in files if k != wanted]
        if wrong or (dataset_dirs and wanted != "arrow"):
            raise JobError(f"input.format is {spec.format!r} but found {(wrong or dataset_dirs)[0]!r}")
    kinds = {k for k, _ in files} | ({"arrow"} if dataset_dirs else set())
    if len(kinds) > 1:
        raise JobError(f"input.path mixes formats {sorted(kinds)}; give one format per job")
    shards: list[InputShard] = []
    schemas: list[tuple[str, pa.Schema]] = []  # Parquet and Arrow files: their columns must agree
    for d in dataset_dirs:
        shards.extend(_plan_datasets_dir(spec, d, len(shards), schemas))
    text_files = [p for k, p in files if k == "textfiles"]
    if text_files and spec.score_columns:
        raise JobError(f"{text_files[0]}: text files have no columns; input.score_columns "
                       f"{spec.score_columns} needs Parquet, JSONL, a datasets folder or a table")
    if text_files:
        root = _text_root(text_files)
        for start in range(0, len(text_files), spec.shard_rows):
            group = text_files[start:start + spec.shard_rows]
            shards.append(InputShard(len(shards), "textfiles", tuple(group), _fingerprint(group), len(group),
                                     root=root))
    other = [(k, p) for k, p in files if k != "textfiles"]
    root = sources.common_root([p for _, p in other])
    for kind, p in other:
        rows = None
        if kind == "parquet":
            rows, schema, groups = _check_parquet(spec, p)
            schemas.append((p, schema))
            ranges = row_ranges(groups, spec.shard_rows)
            if len(ranges) > 1:
                for lo, hi in ranges:
                    shards.append(InputShard(len(shards), kind, (p,), _fingerprint([p], f"rows={lo}:{hi}"), hi - lo,
                                             start=lo, root=root, lo=lo, hi=hi))
                continue
        elif kind == "jsonl":
            kind = _probe_json(spec, p)
            ranges = _jsonl_ranges(spec, p) if kind == "jsonl" else None
            if ranges is not None and len(ranges) > 1:
                for lo, hi, first, n in ranges:
                    shards.append(InputShard(len(shards), kind, (p,), _fingerprint([p], f"bytes={lo}:{hi}"), n,
                                             start=first, root=root, lo=lo, hi=hi))
                continue
        shards.append(InputShard(len(shards), kind, (p,), _fingerprint([p]), rows, root=root))
    if not shards:
        raise JobError(f"input {spec.path!r}: no input files")
    _check_same_columns(spec, schemas)
    return shards


def _text_root(paths: list[str]) -> str:
    """The common folder of text files as given (ids are paths relative to it)."""
    if any(sources.is_uri(p) for p in paths):
        return sources.common_root(paths)
    return os.path.commonpath([os.path.dirname(p) for p in paths])


_LINE_INDEX: dict[tuple[str, int, int | None, int], Any] = {}  # (path, size, mtime, block) -> LineIndex


def _jsonl_ranges(spec: InputSpec, path: str) -> list[tuple[int, int, int, int]] | None:
    """Byte ranges (start, end, first line, lines) of an uncompressed UTF-8 JSONL file holding
    more than `shard_rows` lines (see `thresher.io.splits`); None: read it whole."""
    if path.lower().endswith((".gz", ".zst")):
        return None
    size, mtime = sources.stat(path)
    if size <= spec.shard_rows:  # every line takes a byte at least: it cannot hold more lines
        return None
    block = block_size(size)
    key = (path if sources.is_uri(path) else os.path.abspath(path), size, mtime, block)
    index = _LINE_INDEX.get(key)
    if index is None:
        try:
            with sources.open_stream(path) as fh:
                head = fh.read(4)
                if any(head.startswith(bom) for bom, enc in _BOMS if enc != "utf-8"):
                    return None  # UTF-16/32: decoded whole, not cut into byte ranges
                index = scan_lines(itertools.chain([head], iter(lambda: fh.read(_CHUNK), b"")), block)
        except (OSError, pa.ArrowException) as exc:
            raise JobError(f"{path}: cannot read ({_one_line(exc)})") from None
        if len(_LINE_INDEX) > 256:
            _LINE_INDEX.clear()
        _LINE_INDEX[key] = index
    return line_ranges(index, spec.shard_rows)


def input_columns(spec: InputSpec) -> tuple[str, dict[str, pa.DataType | None]] | None:
    """(the job's first input file, its columns with their types) from a cheap look at it (a
    Parquet footer, an Arrow stream's schema, the first records of a JSONL file: types as the
    readers will make them, None where no record has the key); None when there is no such
    look (text files, a JSON array, in-memory data) or the readers will refuse the input."""
    try:
        for entry in _expand(spec.path or []):
            if sources.is_dir(entry):
                if sources.exists(sources.join(entry, "state.json")):
                    state = json.loads(sources.read_bytes(sources.join(entry, "state.json")))
                    path = sources.join(entry, state["_data_files"][0]["filename"])
                    with sources.open_arrow(path) as src:
                        return path, {f.name: f.type for f in pa.ipc.open_stream(src).schema}
                found = _walk(entry)
                if not found:
                    continue
                path = found[0]
            else:
                path = entry
            kind = _kind_of(path)
            if kind == "parquet":
                with sources.parquet_file(path) as pf:
                    return path, {f.name: f.type for f in pf.schema_arrow}
            if kind == "jsonl":
                json_kind, records = _head_records(path)
                if json_kind != "jsonl" or not records:
                    return None
                keys = list(dict.fromkeys(k for r in records for k in r))
                types: dict[str, pa.DataType | None] = {}
                for k in keys:
                    values = [r.get(k) for r in records]
                    types[k] = (_json_scores(values)[0].type
                                if any(isinstance(v, (int, float, list)) for v in values) else None)
                return path, types
            return None
    except Exception:  # the readers say what is wrong, with their own message
        return None
    return None


def _walk(folder: str) -> list[str]:
    """The input files under a folder (names starting with `_` or `.` are skipped); a
    datasets folder inside it is an error, not JSONL (its state.json and dataset_info.json)."""
    found: list[str] = []
    for d, dirs, fs in sources.walk(folder):
        dirs[:] = [x for x in dirs if not x.startswith(("_", "."))]
        if d != folder and "state.json" in fs:
            raise JobError(f"input {folder!r}: {d} is a datasets folder; give datasets folders as input.path "
                           f"entries of their own")
        if "dataset_info.json" in fs:
            raise JobError(f"input {folder!r}: {d} looks like a datasets folder (dataset_info.json) but has no "
                           f"state.json; save it again with save_to_disk")
        found.extend(sources.join(d, f) for f in fs if _kind_of(f) is not None and not f.startswith(("_", ".")))
    return sorted(found)


def _one_line(exc: BaseException) -> str:
    """An exception as one short line (Arrow messages can span lines)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


def _check_parquet(spec: InputSpec, path: str) -> tuple[int, pa.Schema, list[int]]:
    """(rows, schema, rows per row group) of a Parquet file, from its footer."""
    try:
        with sources.parquet_file(path) as pf:
            schema = pf.schema_arrow
            meta = pf.metadata
            groups = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    except Exception as exc:
        raise JobError(f"{path}: not a readable Parquet file ({_one_line(exc)})") from None
    _check_schema(spec, schema, path)
    return meta.num_rows, schema, groups


def _used(spec: InputSpec) -> set[str]:
    """The source columns the job reads as id, text, prompt, response or input."""
    return {c for c in (spec.text_column, spec.id_column, spec.prompt_column, spec.response_column,
                        spec.input_column) if c}


def _is_text_type(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)


def _check_schema(spec: InputSpec, schema: pa.Schema, where: str) -> None:
    """The source's columns against the job: present, of usable types, and clashing with no
    column thresher writes itself (such a column would be dropped)."""
    names = schema.names
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise JobError(f"{where}: column names {repeated} occur more than once; rename them")
    needed = [spec.prompt_column, spec.response_column] if spec.instruction else [spec.text_column]
    if spec.id_column:
        needed.append(spec.id_column)
    for col in needed:
        if col not in names:
            raise JobError(f"{where}: column {col!r} not found (columns: {names}); set input.text_column/"
                           f"id_column/prompt_column/response_column")
    texts = needed[:2] if spec.instruction else needed[:1]
    if spec.instruction:  # optional: the input column and a row's own text
        texts += [c for c in (spec.input_column, spec.text_column) if c and c in names and c not in texts]
    for col in texts:
        t = schema.field(col).type
        if not _is_text_type(t):
            raise JobError(f"{where}: column {col!r} has type {t}, expected a string column")
    if spec.id_column:
        t = schema.field(spec.id_column).type
        if not _id_type_ok(t):
            raise JobError(f"{where}: id column {spec.id_column!r} has type {t}; an id must be a string or a number "
                           f"(set input.id_column to another column)")
    clash = [c for c in RESERVED if c in names]
    if clash:
        raise JobError(f"{where}: columns {clash} are reserved by thresher; rename them")
    for col in spec.score_columns:
        if col not in names:
            raise JobError(f"{where}: column {col!r} not found (input.score_columns){_did_you_mean(col, names)}; "
                           f"columns: {names}")
        if col in _used(spec):
            raise JobError(f"{where}: column {col!r} is read as the id or a text (input.*_column); it cannot be "
                           f"one of input.score_columns too")
        t = schema.field(col).type
        if not score_type_ok(t):
            raise JobError(f"{where}: column {col!r} (input.score_columns) has type {t}; a score column holds "
                           f"numbers, booleans, or lists of numbers (embeddings)")
    used = _used(spec)
    for own in ("id", "text", "prompt", "response") if spec.instruction else ("id", "text"):
        if own in names and own not in used:
            raise JobError(f"{where}: column {own!r} clashes with thresher's own {own!r} column and would be "
                           f"dropped; set input.{own}_column: {own} to use it as the {own}, or rename it")


def _did_you_mean(name: str, names: Collection[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def score_type_ok(t: pa.DataType) -> bool:
    """Whether an input column of type `t` can be a score column: a number or boolean, or a
    (fixed-size or variable) list of numbers."""
    if pa.types.is_dictionary(t):
        return False
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        t = t.value_type
        return pa.types.is_integer(t) or pa.types.is_floating(t)
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_decimal(t)


def _id_type_ok(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_nested(t):
        return False
    try:
        pa.array([], type=t).cast(pa.string())
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, TypeError):
        return False
    return True


def _plain_type(t: pa.DataType) -> pa.DataType:
    """A column's type as the output holds it (large strings are written as strings)."""
    return pa.string() if pa.types.is_large_string(t) else t


def _check_same_columns(spec: InputSpec, schemas: list[tuple[str, pa.Schema]]) -> None:
    """Every file must give the same other columns with the same types (order and nullability
    may differ), or the output folder could not be read as one table. The job's own columns
    (id, text, ...) are normalised and may differ in type (string or binary, say)."""
    if len(schemas) < 2:
        return
    used = _used(spec)

    def columns(schema: pa.Schema) -> dict[str, pa.DataType]:
        return {f.name: _plain_type(f.type) for f in schema if f.name not in used}

    first_path, first = schemas[0][0], columns(schemas[0][1])
    for path, schema in schemas[1:]:
        cols = columns(schema)
        if cols == first:
            continue
        for name in [*first, *(n for n in cols if n not in first)]:
            a, b = first.get(name), cols.get(name)
            if a is None or b is None or not a.equals(b):
                raise JobError(f"input files differ in column {name!r}: {a if a is not None else 'missing'} in "
                               f"{first_path} but {b if b is not None else 'missing'} in {path}; every file needs "
                               f"the same columns with the same types")


def _plan_datasets_dir(spec: InputSpec, folder: str, first: int,
                       schemas: list[tuple[str, pa.Schema]]) -> list[InputShard]:
    """One shard per Arrow file of a `save_to_disk` folder; each file is read through once
    (memory-mapped, cheap) so a damaged one is an error now, not halfway through the job."""
    try:
        state = json.loads(sources.read_bytes(sources.join(folder, "state.json")))
        files = [sources.join(folder, f["filename"]) for f in state["_data_files"]]
    except Exception as exc:
        raise JobError(f"{folder}: not a datasets folder saved with save_to_disk (state.json: "
                       f"{_one_line(exc)})") from None
    if not files:
        raise JobError(f"{folder}: state.json lists no data files")
    shards = []
    for i, p in enumerate(files):
        try:
            with sources.open_arrow(p) as src:
                reader = pa.ipc.open_stream(src)
                _check_schema(spec, reader.schema, p)
                rows = sum(b.num_rows for b in reader)
                schemas.append((p, reader.schema))
        except JobError:
            raise
        except Exception as exc:
            raise JobError(f"{p}: not a readable Arrow file ({_one_line(exc)})") from None
        shards.append(InputShard(first + i, "arrow", (p,), _fingerprint([p]), rows, root=folder))
    return shards


def _plan_memory(spec: InputSpec, table: pa.Table) -> list[InputShard]:
    _check_schema(spec, table.schema, "input table")
    h = hashlib.sha256(f"{table.num_rows}|{table.schema}".encode())
    shards = []
    n = table.num_rows
    for i, start in enumerate(range(0, max(n, 1), spec.shard_rows)):
        rows = min(spec.shard_rows, n - start)
        piece = table.slice(start, min(rows, 64))
        h2 = h.copy()
        h2.update(str(start).encode())
        for col in piece.columns:
            h2.update(str(col.to_pylist()).encode())
        shards.append(InputShard(i, "memory", (), h2.hexdigest()[:16], rows, start=start))
    return shards


def as_arrow_table(data: Any) -> pa.Table:
    """Accept a pyarrow Table or a `datasets.Dataset` (zero-copy where possible)."""
    if isinstance(data, pa.Table):
        return data
    if hasattr(data, "data") and hasattr(data, "features"):  # datasets.Dataset
        tbl = data.data
        tbl = getattr(tbl, "table", tbl)
        if getattr(data, "_indices", None) is not None:
            tbl = data.with_format("arrow")[:]
        return tbl
    raise TypeError(f"expected a pyarrow.Table or datasets.Dataset, got {type(data).__name__}")


# -- reading ------------------------------------------------------------------------


def read_shard(shard: InputShard, spec: InputSpec, table: pa.Table | None = None) -> Iterator[ReadBatch]:
    """Stream one shard as normalised batches (see the module docstring).

    For a memory shard, `table` is that shard's slice of the input table."""
    if shard.kind in ("jsonl", "json"):
        yield from _read_jsonl(shard, spec)
        return
    if shard.kind == "textfiles":
        yield from _read_textfiles(shard, spec)
        return
    row = 0 if shard.kind == "memory" else shard.start  # file rows are numbered through the file
    for raw in _raw_batches(shard, spec, table):
        yield normalise(raw, spec, shard, row)
        row += raw.num_rows


def score_fields(shard: InputShard, spec: InputSpec, table: pa.Table | None = None) -> list[pa.Field]:
    """The fields of `input.score_columns` in a shard's score table when the shard has no row:
    the source's types (Parquet, Arrow, a table), or the null type where only rows tell (JSONL),
    which a concatenation with the other shards' score tables promotes."""
    if not spec.score_columns:
        return []
    schema: pa.Schema | None = None
    try:
        if shard.kind == "memory" and table is not None:
            schema = table.schema
        elif shard.kind == "parquet":
            with sources.parquet_file(shard.paths[0]) as pf:
                schema = pf.schema_arrow
        elif shard.kind == "arrow":
            with sources.open_arrow(shard.paths[0]) as src:
                schema = pa.ipc.open_stream(src).schema
    except (OSError, pa.ArrowException):
        schema = None
    return [schema.field(c) if schema is not None and c in schema.names else pa.field(c, pa.null())
            for c in spec.score_columns]


def _raw_batches(shard: InputShard, spec: InputSpec, table: pa.Table | None) -> Iterator[pa.RecordBatch]:
    if shard.kind == "memory":
        if table is None or table.num_rows != shard.rows:
            raise ValueError(f"{shard.name}: needs its slice of the input table")
        yield from table.to_batches(max_chunksize=spec.batch_rows)
        return
    path = shard.paths[0]
    try:
        if shard.kind == "parquet":
            with sources.parquet_file(path) as pf:
                if shard.hi is None:
                    yield from pf.iter_batches(batch_size=spec.batch_rows)
                else:
                    yield from _parquet_range(pf, shard.lo, shard.hi, spec.batch_rows)
        elif shard.kind == "arrow":
            with sources.open_arrow(path) as src:
                for b in pa.ipc.open_stream(src):
                    for start in range(0, b.num_rows, spec.batch_rows):
                        yield b.slice(start, spec.batch_rows)
        else:
            raise ValueError(f"unknown shard kind {shard.kind}")
    except (OSError, pa.ArrowException) as exc:
        raise JobError(f"{path}: read failed ({_one_line(exc)})") from None


def _parquet_range(pf: pq.ParquetFile, lo: int, hi: int, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Rows [lo, hi) of a Parquet file (file-global row numbers): its row groups that overlap
    the range, read in order, each batch sliced to the range."""
    meta = pf.metadata
    groups, pos, first = [], 0, None  # first: the file row of the first row of the groups read
    for g in range(meta.num_row_groups):
        n = meta.row_group(g).num_rows
        if n and pos < hi and pos + n > lo:
            groups.append(g)
            first = pos if first is None else first
        pos += n
    if first is None:
        raise OSError(f"the file holds {pos} rows, not rows {lo}:{hi} (it changed since planning?)")
    pos = first
    for b in pf.iter_batches(batch_size=batch_rows, row_groups=groups):
        end = pos + b.num_rows
        if end > lo and b.num_rows:
            a = max(lo - pos, 0)
            yield b.slice(a, min(end, hi) - pos - a)
        pos = end
        if pos >= hi:
            return
    if pos < hi:
        raise OSError(f"the file ends at row {pos}, before row {hi} (it changed since planning?)")


def _as_text(arr: pa.Array) -> tuple[pa.Array, pa.Array | None]:
    """Cast a string/binary column to string; returns (strings, mask of invalid UTF-8)."""
    if pa.types.is_string(arr.type):
        return arr, None
    if pa.types.is_large_string(arr.type):
        return arr.cast(pa.string()) if _fits_32(arr) else arr, None
    try:
        return arr.cast(pa.large_string()), None
    except pa.ArrowInvalid:
        values = arr.to_pylist()
        bad = []
        out = []
        for v in values:
            if v is None:
                out.append(None)
                bad.append(False)
                continue
            try:
                out.append(v.decode("utf-8"))
                bad.append(False)
            except UnicodeDecodeError:
                out.append(None)
                bad.append(True)
        return pa.array(out, type=pa.large_string()), pa.array(bad)


def _fits_32(arr: pa.Array) -> bool:
    return (pc.sum(pc.binary_length(arr)).as_py() or 0) < 2**31 - 1


def normalise(raw: pa.RecordBatch, spec: InputSpec, shard: InputShard, first_row: int = 0, *,
              rows: pa.Array | None = None, reasons: list[pa.Array] | None = None,
              raw_bytes: pa.Array | None = None) -> ReadBatch:
    """Map a raw batch to the thresher schema and split off rows that cannot be used.

    The one set of row rules for every format. `rows` gives each row's ordinal in its shard
    (default: consecutive from `first_row`); `reasons` are format-specific checks that come
    first (JSONL: a missing or non-string key); `raw_bytes` is what a rejected row keeps
    (default: its text column's bytes)."""
    n = raw.num_rows
    if rows is None:
        rows = pa.array(range(first_row, first_row + n), type=pa.int64())
    names = raw.schema.names
    _check_schema(spec, raw.schema, shard.name)
    reasons = list(reasons or [])  # one string-or-null array per check, first non-null wins
    cols: dict[str, pa.Array] = {}

    def text_col(name: str, empty_reason: str) -> pa.Array:
        arr, bad_utf8 = _as_text(raw.column(name))
        if bad_utf8 is not None:
            reasons.append(pc.if_else(bad_utf8, pa.scalar("invalid_utf8"), pa.scalar(None, pa.string())))
        empty = pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(arr)), 0), True)
        reasons.append(pc.if_else(empty, pa.scalar(empty_reason), pa.scalar(None, pa.string())))
        return arr

    if spec.instruction:
        prompt = text_col(spec.prompt_column, "empty_prompt")  # type: ignore[arg-type]
        response = text_col(spec.response_column, "empty_response")  # type: ignore[arg-type]
        if spec.input_column and spec.input_column in names:
            extra, _ = _as_text(raw.column(spec.input_column))
            extra = pc.fill_null(extra, "")
            prompt = pc.if_else(pc.equal(pc.utf8_length(extra), 0), prompt,
                                pc.binary_join_element_wise(prompt, extra, "\n\n"))
        cols["prompt"], cols["response"] = prompt, response
        # instruction data: a row's own text where it has one, else prompt and response
        text = pc.binary_join_element_wise(pc.fill_null(prompt, ""), pc.fill_null(response, ""), "\n\n")
        if spec.text_column in names:
            given, _ = _as_text(raw.column(spec.text_column))
            has_text = pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(given)), 0), False)
            text = pc.if_else(has_text, given.cast(text.type), text)
    else:
        text = text_col(spec.text_column, "empty_text")
    if spec.id_column:
        ids = raw.column(spec.id_column)
        if pa.types.is_dictionary(ids.type):
            ids = ids.cast(ids.type.value_type)
        if _is_text_type(ids.type):  # bytes that are not UTF-8 make an invalid id, not a failed job
            ids, bad_id = _as_text(ids)
            if bad_id is not None:
                reasons.append(pc.if_else(bad_id, pa.scalar("invalid_id"), pa.scalar(None, pa.string())))
        else:
            ids = ids.cast(pa.string())
        reasons.append(pc.if_else(pc.is_null(ids), pa.scalar("missing_id"), pa.scalar(None, pa.string())))
    else:
        # memory ids number the whole table; a file's rows are numbered through the file already
        ordinal = pc.add(rows, shard.start) if shard.kind == "memory" and shard.start else rows
        ids = pc.binary_join_element_wise(pa.scalar(shard.id_prefix), pc.cast(ordinal, pa.string()), ":")
    reason = _first_reason(reasons, n)
    used = {spec.text_column, spec.id_column, spec.prompt_column, spec.response_column, spec.input_column,
            *spec.score_columns}
    out = {"id": ids, "text": text, **cols, "_row": rows}
    for name in names:
        if name not in used and name not in out:
            out[name] = raw.column(name)
    table = pa.RecordBatch.from_pydict({k: _string32(v) for k, v in out.items()})
    ok = pc.is_null(reason)
    good = table.filter(ok)
    scores = None
    if spec.score_columns:  # they reach the output through the score table, under the same names
        scores = pa.RecordBatch.from_pydict({c: raw.column(c) for c in spec.score_columns}).filter(ok)
    bad_mask = pc.invert(ok)
    if not pc.any(bad_mask).as_py():
        return ReadBatch(good, _empty_rejects(), scores)
    if raw_bytes is None:
        raw_bytes = raw.column(spec.prompt_column if spec.instruction else spec.text_column)
    rejected = pa.RecordBatch.from_pydict({
        "_row": rows.filter(bad_mask),
        "id": _string32(ids).filter(bad_mask),
        "reason": reason.filter(bad_mask),
        "raw": _to_binary(raw_bytes).filter(bad_mask),
    }, schema=REJECT_SCHEMA)
    if spec.on_bad_row == "fail":
        _fail(shard, rejected.column("_row")[0].as_py(), rejected.column("reason")[0].as_py())
    return ReadBatch(good, rejected, scores)


def _fail(shard: InputShard, row: int, reason: str) -> None:
    """The error of `on_bad_row: fail`: the file and the line (JSONL, 1-based), the element
    (a `.json` array, 0-based) or the row."""
    where = {"jsonl": f"line {row + 1}", "json": f"element {row}"}.get(shard.kind, f"row {row}")
    raise JobError(f"{shard.name}: {where}: {reason} (input.on_bad_row is 'fail')")


def _string32(arr: pa.Array) -> pa.Array:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_large_string(arr.type) and _fits_32(arr):
        return arr.cast(pa.string())
    return arr


def _to_binary(arr: pa.Array) -> pa.Array:
    if pa.types.is_large_binary(arr.type):
        return arr
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type) or pa.types.is_binary(arr.type):
        return arr.cast(pa.large_binary())
    return pa.array([None if v is None else str(v).encode() for v in arr.to_pylist()], type=pa.large_binary())


def _first_reason(reasons: list[pa.Array], n: int) -> pa.Array:
    out = pa.nulls(n, pa.string())
    for r in reversed(reasons):
        out = pc.if_else(pc.is_null(r), out, r)
    return out


def _empty_rejects() -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({f.name: pa.array([], type=f.type) for f in REJECT_SCHEMA},
                                      schema=REJECT_SCHEMA)


# -- JSONL and JSON arrays ------------------------------------------------------------


class _StreamError(OSError):
    """A compressed stream that cannot be read: not that format, damaged or truncated."""


def _stream_message(exc: OSError) -> str:
    if isinstance(exc, _StreamError):
        return str(exc)
    return f"cannot read ({getattr(exc, 'strerror', None) or _one_line(exc)})"


def _raw_chunks(path: str, size: int | None = None) -> Iterator[bytes]:
    """The (decompressed) bytes of a file in chunks of `size` (default `_CHUNK`); a bad gzip
    or zstd stream is a `_StreamError`."""
    size = size or _CHUNK
    low = path.lower()
    with sources.open_stream(path) as fh:
        if low.endswith(".gz"):
            src = gzip.GzipFile(fileobj=fh)
            try:
                while chunk := src.read(size):
                    yield chunk
            except gzip.BadGzipFile as exc:
                raise _StreamError(f"not a valid gzip file ({exc})") from None
            except EOFError as exc:
                raise _StreamError(f"truncated gzip file ({exc})") from None
            except zlib.error as exc:
                raise _StreamError(f"damaged gzip data ({exc})") from None
        elif low.endswith(".zst"):
            yield from _zstd_chunks(fh, size)
        else:
            while chunk := fh.read(size):
                yield chunk


def _zstd_chunks(fh: Any, size: int) -> Iterator[bytes]:
    """zstd frames one after another; a stream that stops inside a frame is an error (the
    zstandard stream reader would end quietly)."""
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    obj, inside = dctx.decompressobj(), False
    while data := fh.read(size):
        while data:
            try:
                out = obj.decompress(data)
            except zstandard.ZstdError as exc:
                raise _StreamError(f"not valid zstd data ({exc})") from None
            inside = True
            if out:
                yield out
            if not obj.eof:
                break
            data, obj, inside = obj.unused_data, dctx.decompressobj(), False
    if inside:
        raise _StreamError("truncated zstd file (it ends inside a frame)")


def _sniff_encoding(path: str, head: bytes) -> tuple[str | None, bytes]:
    """The encoding a BOM names (None: UTF-8) and the bytes after the BOM. UTF-16/32 without
    a BOM (NUL bytes where JSON text has ASCII) is refused."""
    for bom, enc in _BOMS:
        if head.startswith(bom):
            return (None if enc == "utf-8" else enc), head[len(bom):]
    guess = None
    if len(head) >= 4 and head[0] and not any(head[1:4]):
        guess = "UTF-32-LE"
    elif len(head) >= 4 and not any(head[:3]) and head[3]:
        guess = "UTF-32-BE"
    elif len(head) >= 2 and head[0] and not head[1]:
        guess = "UTF-16-LE"
    elif len(head) >= 2 and not head[0] and head[1]:
        guess = "UTF-16-BE"
    if guess:
        raise JobError(f"{path}: looks like {guess} text without a byte-order mark; convert it to UTF-8 "
                       f"(or give it a BOM)")
    return None, head


def _utf8_chunks(path: str, chunks: Iterator[bytes]) -> Iterator[bytes]:
    """A text stream as UTF-8 bytes: a UTF-8 BOM is dropped, UTF-16/32 with a BOM decoded
    (units that do not decode come out as bytes that are not UTF-8, so their line is rejected)."""
    head = b""
    for chunk in chunks:
        head += chunk
        if len(head) >= 4:
            break
    enc, head = _sniff_encoding(path, head)
    if enc is None:
        if head:
            yield head
        yield from chunks
        return
    dec = codecs.getincrementaldecoder(enc)("thresher.invalid")
    for chunk in itertools.chain([head], chunks):
        yield dec.decode(chunk).encode("utf-8", "surrogatepass")
    yield dec.decode(b"", final=True).encode("utf-8", "surrogatepass")


def _strip_bom(blob: bytes) -> bytes:
    """A whole text file as UTF-8 (see `_utf8_chunks`)."""
    for bom, enc in _BOMS:
        if blob.startswith(bom):
            body = blob[len(bom):]
            return body if enc == "utf-8" else body.decode(enc, "thresher.invalid").encode("utf-8", "surrogatepass")
    return blob


def _lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Lines without their endings; a line ends at \\r\\n, \\n or a lone \\r."""
    pending: list[bytes] = []  # the start of a line that has not ended yet
    for chunk in chunks:
        if b"\n" not in chunk and b"\r" not in chunk:
            pending.append(chunk)
            continue
        pieces = (b"".join(pending) + chunk if pending else chunk).splitlines(keepends=True)
        pending = [pieces.pop()]  # it may end in a \r whose \n opens the next chunk
        for piece in pieces:
            yield piece.rstrip(b"\r\n")
    if pending:
        yield from b"".join(pending).splitlines()


class _BadRecord(Exception):
    """JSON that parses but cannot be a record; the message is the reject reason."""


def _object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise _BadRecord(f"bad_json: duplicate key {dup[:40]!r}")
    return obj


def _no_constant(name: str) -> Any:
    raise _BadRecord(f"bad_json: {name} is not valid JSON")


_DECODER = json.JSONDecoder(object_pairs_hook=_object_pairs, parse_constant=_no_constant)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_WS = re.compile(r"[ \t\n\r]*")
_STRUCTURAL = re.compile(r'["\[\]{},]')
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


def _decode_json(s: str, start: int | None = None) -> tuple[Any, int]:
    """Parse a whole line (`start` None) or the value at `start`. JSON that cannot be a record
    (too deep, NaN, a repeated key, a huge number) raises `_BadRecord`; bad syntax
    `json.JSONDecodeError`."""
    try:
        if start is None:
            return _DECODER.decode(s), len(s)
        return _DECODER.raw_decode(s, start)
    except RecursionError:
        raise _BadRecord("bad_json: nesting too deep") from None
    except json.JSONDecodeError:
        raise
    except ValueError as exc:  # an integer longer than sys.get_int_max_str_digits()
        raise _BadRecord("bad_json: number too long" if "digits" in str(exc) else f"bad_json: {exc}") from None


def _as_record(value: Any, text: str, used: Collection[str] | None) -> tuple[str | None, str | None]:
    """(the reason a parsed value cannot be a record, or None; its `meta` JSON, the keys the
    job does not read, when `used` is given)."""
    if not isinstance(value, dict):
        return "bad_json: not an object", None
    try:
        if _SURROGATE_ESCAPE.search(text):  # a `\ud800` escape can leave a lone surrogate
            try:
                json.dumps(value, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError:
                return "invalid_unicode", None
        if used is None:
            return None, None
        meta = {k: v for k, v in value.items() if k not in used}
        return None, json.dumps(meta, ensure_ascii=False, allow_nan=False)
    except RecursionError:
        return "bad_json: nesting too deep", None
    except ValueError:  # a number beyond float range (1e400) reads as inf, which JSON cannot hold
        return "bad_json: number out of range", None


def _parse_line(line: bytes, used: Collection[str] | None = None) -> tuple[str | None, Any, str | None]:
    """Parse one JSONL line: (the reason it is not a record, or None; the record; its meta JSON)."""
    if not line.strip():
        return "blank_line", None, None
    try:
        s = line.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid_utf8", None, None
    s = s.removeprefix("\ufeff")  # the BOM of a file concatenated onto another
    try:
        rec, _ = _decode_json(s)
    except _BadRecord as exc:
        return str(exc), None, None
    except json.JSONDecodeError as exc:
        return f"bad_json: {exc.msg} at column {exc.colno}", None, None
    reason, meta = _as_record(rec, s, used)
    return reason, (rec if reason is None else None), meta


def _probe_json(spec: InputSpec, path: str) -> str:
    """Check a JSONL or JSON file from its first bytes; returns its shard kind: `json` for a
    `.json` file holding one JSON array, else `jsonl`. Refused with an error naming the file:
    a bad gzip/zstd stream, a compressed file without its suffix, UTF-16/32 without a BOM,
    pretty-printed JSON, and records none of which has one of the job's keys."""
    kind, records = _head_records(path)
    if kind == "jsonl":
        _check_keys(spec, records, path)
    return kind


def _head_records(path: str) -> tuple[str, list[dict[str, Any]]]:
    """(shard kind, the first records) of a JSONL or JSON file, from its first bytes (a JSON
    array gives no records here); the file-level refusals of `_probe_json`."""
    raw = _raw_chunks(path, PROBE_BYTES)
    chunks = _utf8_chunks(path, raw)
    head, eof = b"", True
    try:
        for chunk in chunks:
            head += chunk
            if len(head) >= PROBE_BYTES:
                eof = False
                break
    except OSError as exc:
        raise JobError(f"{path}: {_stream_message(exc)}") from None
    finally:
        chunks.close()
        raw.close()
    low = path.lower()
    if not low.endswith((".gz", ".zst")):
        for magic, codec, suffix in ((b"\x1f\x8b", "gzip", ".gz"), (b"\x28\xb5\x2f\xfd", "zstd", ".zst")):
            if head.startswith(magic):
                raise JobError(f"{path}: the file is {codec}-compressed; name it with a {suffix} suffix")
    body = head.lstrip()
    if low.removesuffix(".gz").removesuffix(".zst").endswith(".json") and body.startswith(b"["):
        return "json", []
    lines = body.splitlines()
    if not eof:
        lines = lines[:-1]  # it may be cut short
    if lines and lines[0].strip() in (b"{", b"["):
        raise JobError(f"{path}: the first line is a lone {lines[0].strip().decode()!r}: pretty-printed JSON, "
                       f"not JSON Lines (one record per line; a .json file may hold one array of records)")
    records = []
    for line in lines:
        rec = _parse_line(line)[1]
        if rec is not None:
            records.append(rec)
            if len(records) >= PROBE_RECORDS:
                break
    return "jsonl", records


def _check_keys(spec: InputSpec, records: list[dict[str, Any]], where: str) -> bool:
    """A key of the job (text, prompt, response, id) that none of the first records has is a
    typo in the job, not a file of bad rows: an error naming the key and the keys seen.
    Returns whether there were records to check."""
    if not records:
        return False
    keys = ([("prompt_column", spec.prompt_column), ("response_column", spec.response_column)] if spec.instruction
            else [("text_column", spec.text_column)])
    if spec.id_column:
        keys.append(("id_column", spec.id_column))
    keys += [("score_columns", c) for c in spec.score_columns]
    for setting, key in keys:
        if not any(key in r for r in records):
            seen = sorted({k for r in records for k in r})
            raise JobError(f"{where}: no record has the key {key!r} (input.{setting}){_did_you_mean(key, seen)}; "
                           f"keys in the first {len(records)} records: {seen[:20]}")
    return True


_Item = tuple[int, bytes, "str | None", Any, "str | None"]  # row, raw bytes, reason, record, meta JSON


def _read_jsonl(shard: InputShard, spec: InputSpec) -> Iterator[ReadBatch]:
    """JSONL: one JSON object per line (a line ends at \\r\\n, \\n or \\r; a BOM is dropped,
    UTF-16/32 with a BOM decoded), or for a `json` shard one JSON array of objects. A line or
    element that is not a record is rejected here with its row; the records go through
    `normalise`, the same rules as every format."""
    used = _used(spec)
    items = _array_items(shard.paths[0], used) if shard.kind == "json" else _line_items(shard.paths[0], used, shard)
    lines: list[tuple[int, bytes, dict[str, Any], str]] = []
    rejects: list[tuple[int, str, bytes]] = []
    checked = False
    for row, raw, reason, rec, meta in items:
        if reason is not None:
            if spec.on_bad_row == "fail":
                _fail(shard, row, reason)
            rejects.append((row, reason, raw))
        else:
            lines.append((row, raw, rec, meta))  # type: ignore[arg-type]
        if len(lines) + len(rejects) >= spec.batch_rows:
            checked = checked or _check_keys(spec, [x[2] for x in lines], shard.name)
            yield _jsonl_batch(lines, rejects, spec, shard)
            lines, rejects = [], []
    if lines or rejects:
        if not checked:
            _check_keys(spec, [x[2] for x in lines], shard.name)
        yield _jsonl_batch(lines, rejects, spec, shard)


def _line_items(path: str, used: Collection[str], shard: InputShard | None = None) -> Iterator[_Item]:
    """The lines of a JSONL file, or of a shard's byte range of it (numbered through the file)."""
    row = shard.start if shard is not None and shard.hi is not None else 0
    try:
        if shard is not None and shard.hi is not None:
            chunks = _range_chunks(path, shard.lo, shard.hi)
            if shard.lo == 0:  # the file's start: its BOM (the planner cuts UTF-8 files only)
                chunks = _utf8_chunks(path, chunks)
        else:
            chunks = _utf8_chunks(path, _raw_chunks(path))
        for line in _lines(chunks):
            reason, rec, meta = _parse_line(line, used)
            yield row, line, reason, rec, meta
            row += 1
    except (OSError, pa.ArrowException) as exc:
        raise JobError(f"{path}: {_stream_message(exc)} (at line {row + 1})") from None


def _range_chunks(path: str, lo: int, hi: int) -> Iterator[bytes]:
    """Bytes [lo, hi) of a file, in chunks of `_CHUNK`."""
    with sources.open_file(path) as fh:
        fh.seek(lo)
        left = hi - lo
        while left > 0:
            chunk = fh.read(min(_CHUNK, left))
            if not chunk:
                raise OSError(f"the file ends before byte {hi} (it changed since planning?)")
            left -= len(chunk)
            yield chunk


def _array_items(path: str, used: Collection[str]) -> Iterator[_Item]:
    """The elements of a `.json` file holding one JSON array; an element's index is its row.
    The file is read whole (at most JSON_ARRAY_MAX_BYTES). An element that parses but cannot
    be a record is rejected; broken syntax is an error naming the line and column."""
    parts, size = [], 0
    try:
        for chunk in _utf8_chunks(path, _raw_chunks(path)):
            size += len(chunk)
            if size > JSON_ARRAY_MAX_BYTES:
                raise JobError(f"{path}: a JSON array over {JSON_ARRAY_MAX_BYTES >> 20} MiB; a .json file is read "
                               f"whole, convert it to JSON Lines")
            parts.append(chunk)
    except OSError as exc:
        raise JobError(f"{path}: {_stream_message(exc)}") from None
    data = b"".join(parts)
    del parts
    try:
        s, dirty = data.decode("utf-8"), False
    except UnicodeDecodeError:  # keep the bad bytes as surrogates: their elements are rejected
        s, dirty = data.decode("utf-8", "surrogateescape"), True
    del data
    for row, (start, end, reason, value) in enumerate(_array_elements(s, path)):
        text = s[start:end]
        if dirty:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                reason = "invalid_utf8"
        meta = None
        if reason is None:
            reason, meta = _as_record(value, text, used)
        yield row, text.encode("utf-8", "surrogateescape"), reason, (value if reason is None else None), meta


def _where(s: str, i: int) -> str:
    return f"line {s.count(chr(10), 0, i) + 1} column {i - s.rfind(chr(10), 0, i)}"


def _array_elements(s: str, path: str) -> Iterator[tuple[int, int, str | None, Any]]:
    """(start, end, reason or None, value) for each element of the JSON array in `s`."""
    i = _WS.match(s).end()  # type: ignore[union-attr]
    if s[i:i + 1] != "[":
        raise JobError(f"{path}: not a JSON array")
    i = _WS.match(s, i + 1).end()  # type: ignore[union-attr]
    end = i + 1
    if s[i:i + 1] != "]":
        while True:
            start = i
            try:
                value, end = _decode_json(s, i)
                reason = None
            except _BadRecord as exc:
                value, reason, end = None, str(exc), _value_end(s, i, path)
            except json.JSONDecodeError as exc:
                raise JobError(f"{path}: not a valid JSON array: {exc.msg} at {_where(s, exc.pos)}") from None
            yield start, end, reason, value
            i = _WS.match(s, end).end()  # type: ignore[union-attr]
            if s[i:i + 1] == ",":
                i = _WS.match(s, i + 1).end()  # type: ignore[union-attr]
                continue
            if s[i:i + 1] != "]":
                raise JobError(f"{path}: not a valid JSON array: expected ',' or ']' at {_where(s, i)}")
            end = i + 1
            break
    tail = _WS.match(s, end).end()  # type: ignore[union-attr]
    if tail != len(s):
        raise JobError(f"{path}: not a valid JSON array: more data after it at {_where(s, tail)}")


def _value_end(s: str, start: int, path: str) -> int:
    """Where the JSON value at `start` ends, found without parsing it (it may be too deep to
    parse): brackets are counted outside strings."""
    depth, i = 0, start
    while True:
        m = _STRUCTURAL.search(s, i)
        if m is None:
            raise JobError(f"{path}: not a valid JSON array: it ends inside an element")
        j, c = m.start(), m.group()
        if c == '"':
            sm = _STRING.match(s, j)
            if sm is None:
                raise JobError(f"{path}: not a valid JSON array: unterminated string at {_where(s, j)}")
            i = sm.end()
            continue
        if c in "[{":
            depth += 1
        elif depth == 0:  # the "," or "]" after a scalar
            end = j
            while end > start and s[end - 1] in " \t\n\r":
                end -= 1
            return end
        elif c in "]}":
            depth -= 1
            if depth == 0:
                return j + 1
        i = j + 1


def _json_scores(values: list[Any]) -> tuple[pa.Array, list[bool]]:
    """A JSONL score key as one Arrow column of a type that does not drift between batches:
    numbers as float64, booleans as bool (a key that holds booleans holds nothing else), lists
    of numbers as list<float32>. A value of another kind is null, and flagged (the row is rejected)."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.array(values, pa.bool_()), [False] * len(values)
    if any(isinstance(v, list) for v in present):
        def vec(v: Any) -> bool:
            return isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
        bad = [v is not None and not vec(v) for v in values]
        return pa.array([None if b else v for v, b in zip(values, bad)], pa.list_(pa.float32())), bad

    out: list[float | None] = []
    bad: list[bool] = []
    for v in values:
        f = None
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            try:
                f = float(v)
            except OverflowError:  # an integer beyond float range
                f = None
        out.append(f)
        bad.append(v is not None and f is None)
    return pa.array(out, pa.float64()), bad


def _json_id(value: Any) -> tuple[str | None, str | None]:
    """A JSON id as a string (numbers as Python writes them), or the reason it cannot be one."""
    if value is None or isinstance(value, str):
        return value, None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value), None
    if isinstance(value, float) and math.isfinite(value):
        return str(value), None
    return None, "invalid_id"


def _jsonl_batch(lines: list[tuple[int, bytes, dict[str, Any], str]], rejects: list[tuple[int, str, bytes]],
                 spec: InputSpec, shard: InputShard) -> ReadBatch:
    """The records of one batch as a raw Arrow batch (the job's columns as strings, the other
    keys as a `meta` JSON column) through `normalise`, plus the lines that were not records."""
    records = [rec for _, _, rec, _ in lines]
    roles = ([(spec.prompt_column, "prompt"), (spec.response_column, "response")] if spec.instruction
             else [(spec.text_column, "text")])
    cols: dict[str, pa.Array] = {}
    reasons: list[pa.Array] = []
    for key, role in roles:  # a missing or non-string key is named as such
        values = [r.get(key) for r in records]
        reasons.append(pa.array([f"missing_{role}" if v is None else None if isinstance(v, str)
                                 else f"{role}_not_string" for v in values], pa.string()))
        cols[key] = pa.array([v if isinstance(v, str) else None for v in values], pa.string())
    if spec.instruction and spec.text_column not in cols:
        cols[spec.text_column] = pa.array([r.get(spec.text_column) if isinstance(r.get(spec.text_column), str)
                                           else None for r in records], pa.string())
    if spec.input_column and spec.input_column not in cols:
        cols[spec.input_column] = pa.array([str(r[spec.input_column]) if r.get(spec.input_column) else None
                                            for r in records], pa.string())
    if spec.id_column:
        ids = [_json_id(r.get(spec.id_column)) for r in records]
        reasons.append(pa.array([why for _, why in ids], pa.string()))
        cols[spec.id_column] = pa.array([v for v, _ in ids], pa.string())
    for c in spec.score_columns:
        arr, bad = _json_scores([r.get(c) for r in records])
        reasons.append(pa.array([f"bad_score: {c}" if b else None for b in bad], pa.string()))
        cols[c] = arr
    cols["meta"] = pa.array([meta for *_, meta in lines], pa.string())
    raw = pa.RecordBatch.from_pydict(cols)
    out = normalise(raw, spec, shard, rows=pa.array([row for row, *_ in lines], pa.int64()), reasons=reasons,
                    raw_bytes=pa.array([b for _, b, *_ in lines], pa.large_binary()))
    if not rejects:
        return out
    bad = pa.RecordBatch.from_pydict({
        "_row": pa.array([r[0] for r in rejects], pa.int64()),
        "id": pa.array([None if spec.id_column else f"{shard.id_prefix}:{r[0]}" for r in rejects], pa.string()),
        "reason": pa.array([r[1] for r in rejects], pa.string()),
        "raw": pa.array([r[2] for r in rejects], pa.large_binary()),
    }, schema=REJECT_SCHEMA)
    both = pa.Table.from_batches([out.rejected, bad], schema=REJECT_SCHEMA).sort_by("_row").combine_chunks()
    return ReadBatch(out.good, both.to_batches()[0] if both.num_rows else _empty_rejects(), out.scores)


def _read_textfiles(shard: InputShard, spec: InputSpec) -> Iterator[ReadBatch]:
    """One document per text file; id = path relative to the input root."""
    for start in range(0, len(shard.paths), spec.batch_rows):
        group = shard.paths[start:start + spec.batch_rows]
        blobs = []
        for p in group:
            try:
                blobs.append(_strip_bom(sources.read_bytes(p)))
            except (OSError, pa.ArrowException) as exc:
                raise JobError(f"{p}: cannot read ({exc})") from None
        rel = [sources.relative(p, shard.root) for p in group]
        raw = pa.RecordBatch.from_pydict({
            spec.text_column: pa.array(blobs, pa.binary()),
            spec.id_column or "path": pa.array(rel, pa.string()),
        })
        sub = spec.model_copy(update={"id_column": spec.id_column or "path"})
        yield normalise(raw, sub, shard, start)
