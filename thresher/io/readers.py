"""Readers: plan input shards and stream them as normalised Arrow batches.

Supported inputs: Parquet files and folders (globs, row-group streaming), JSONL (plain,
.gz, .zst), a `datasets` folder saved with `save_to_disk`, plain text files (one
document per file), and an in-memory `pyarrow.Table` or `datasets.Dataset`.

Every batch a reader yields is split into
- `good`: `id`, `text` (and `prompt`, `response` for instruction data), `_row` (the
  record's ordinal in its shard) and the source's other columns (JSONL: a `meta` column
  with the other keys as JSON);
- `rejected`: `_row`, `id`, `reason`, `raw` (the original bytes) for rows that cannot be
  used, so no row disappears without a count and a reason.
Memory is bounded by `batch_rows`, not by the size of the corpus.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import importlib.util
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from thresher.config import InputSpec, JobError

PARQUET_EXT = (".parquet", ".pq")
JSONL_EXT = (".jsonl", ".json", ".ndjson", ".jsonl.gz", ".json.gz", ".ndjson.gz", ".jsonl.zst", ".json.zst",
             ".ndjson.zst")
TEXT_EXT = (".txt",)
RESERVED = ("_row", "_shard", "n_chars", "n_words")

REJECT_SCHEMA = pa.schema([("_row", pa.int64()), ("id", pa.string()), ("reason", pa.string()),
                           ("raw", pa.large_binary())])


@dataclass(frozen=True)
class InputShard:
    """One unit of map work: a file, a group of text files, or a slice of a table."""

    index: int
    kind: str  # parquet | jsonl | arrow | textfiles | memory
    paths: tuple[str, ...]
    fingerprint: str
    rows: int | None = None
    start: int = 0  # first row of a memory slice
    root: str = ""  # common folder, for ids and display

    @property
    def name(self) -> str:
        if self.kind == "memory":
            return f"memory[{self.start}:{self.start + (self.rows or 0)}]"
        if len(self.paths) == 1:
            return self.paths[0]
        return f"{self.root} ({len(self.paths)} files)"

    @property
    def id_prefix(self) -> str:
        if self.kind == "memory":
            return "mem"
        rel = os.path.relpath(self.paths[0], self.root) if self.root else os.path.basename(self.paths[0])
        return rel


@dataclass
class ReadBatch:
    good: pa.RecordBatch  # usable rows, normalised
    rejected: pa.RecordBatch  # REJECT_SCHEMA: rows that cannot be used, with a reason


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
        item = _resolve_pkg(raw) if raw.startswith("pkg:") else os.path.expanduser(raw)
        if any(ch in item for ch in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise JobError(f"input {raw!r}: the pattern matches no file")
            files.extend(matches)
        elif os.path.isdir(item):
            files.append(item)
        elif os.path.isfile(item):
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


def _fingerprint(paths: list[str]) -> str:
    h = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        h.update(f"{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


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
        if os.path.isdir(entry):
            if os.path.exists(os.path.join(entry, "state.json")):
                dataset_dirs.append(entry)
                continue
            if os.path.exists(os.path.join(entry, "dataset_dict.json")):
                raise JobError(f"input {entry!r}: a DatasetDict folder; point input.path at one split's folder")
            found = sorted(
                os.path.join(d, f) for d, _, fs in os.walk(entry) for f in fs
                if _kind_of(f) is not None and not any(part.startswith(("_", ".")) for part in
                                                        os.path.relpath(os.path.join(d, f), entry).split(os.sep))
            )
            if not found:
                raise JobError(f"input {entry!r}: the folder holds no Parquet, JSONL or text files")
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
    for d in dataset_dirs:
        shards.extend(_plan_datasets_dir(spec, d, len(shards)))
    text_files = [p for k, p in files if k == "textfiles"]
    if text_files:
        root = os.path.commonpath([os.path.dirname(p) for p in text_files])
        for start in range(0, len(text_files), spec.shard_rows):
            group = text_files[start:start + spec.shard_rows]
            shards.append(InputShard(len(shards), "textfiles", tuple(group), _fingerprint(group), len(group),
                                     root=root))
    other = [(k, p) for k, p in files if k != "textfiles"]
    root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for _, p in other]) if other else ""
    for kind, p in other:
        rows = _check_parquet(spec, p) if kind == "parquet" else None
        shards.append(InputShard(len(shards), kind, (p,), _fingerprint([p]), rows, root=root))
    if not shards:
        raise JobError(f"input {spec.path!r}: no input files")
    return shards


def _check_parquet(spec: InputSpec, path: str) -> int:
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:
        raise JobError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc})") from None
    _check_schema(spec, pf.schema_arrow, path)
    return pf.metadata.num_rows


def _check_schema(spec: InputSpec, schema: pa.Schema, where: str) -> None:
    names = schema.names
    needed = [spec.prompt_column, spec.response_column] if spec.instruction else [spec.text_column]
    if spec.id_column:
        needed.append(spec.id_column)
    for col in needed:
        if col not in names:
            raise JobError(f"{where}: column {col!r} not found (columns: {names}); set input.text_column/"
                           f"id_column/prompt_column/response_column")
    for col in needed[:2] if spec.instruction else needed[:1]:
        t = schema.field(col).type
        if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
                or pa.types.is_large_binary(t)):
            raise JobError(f"{where}: column {col!r} has type {t}, expected a string column")
    clash = [c for c in RESERVED if c in names]
    if clash:
        raise JobError(f"{where}: columns {clash} are reserved by thresher; rename them")


def _plan_datasets_dir(spec: InputSpec, folder: str, first: int) -> list[InputShard]:
    try:
        state = json.loads(Path(folder, "state.json").read_text())
        files = [os.path.join(folder, f["filename"]) for f in state["_data_files"]]
    except Exception as exc:
        raise JobError(f"{folder}: not a datasets folder saved with save_to_disk ({exc})") from None
    shards = []
    for i, p in enumerate(files):
        try:
            with pa.memory_map(p) as src:
                reader = pa.ipc.open_stream(src)
                _check_schema(spec, reader.schema, p)
        except JobError:
            raise
        except Exception as exc:
            raise JobError(f"{p}: not a readable Arrow file ({type(exc).__name__}: {exc})") from None
        shards.append(InputShard(first + i, "arrow", (p,), _fingerprint([p]), None, root=folder))
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
    if shard.kind == "jsonl":
        yield from _read_jsonl(shard, spec)
        return
    if shard.kind == "textfiles":
        yield from _read_textfiles(shard, spec)
        return
    row = 0
    for raw in _raw_batches(shard, spec, table):
        yield normalise(raw, spec, shard, row)
        row += raw.num_rows


def _raw_batches(shard: InputShard, spec: InputSpec, table: pa.Table | None) -> Iterator[pa.RecordBatch]:
    if shard.kind == "memory":
        if table is None or table.num_rows != shard.rows:
            raise ValueError(f"{shard.name}: needs its slice of the input table")
        yield from table.to_batches(max_chunksize=spec.batch_rows)
        return
    path = shard.paths[0]
    try:
        if shard.kind == "parquet":
            pf = pq.ParquetFile(path)
            yield from pf.iter_batches(batch_size=spec.batch_rows)
        elif shard.kind == "arrow":
            with pa.memory_map(path) as src:
                for b in pa.ipc.open_stream(src):
                    for start in range(0, b.num_rows, spec.batch_rows):
                        yield b.slice(start, spec.batch_rows)
        else:
            raise ValueError(f"unknown shard kind {shard.kind}")
    except (OSError, pa.ArrowException) as exc:
        raise JobError(f"{path}: read failed ({type(exc).__name__}: {exc})") from None


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
        ids = ids.cast(pa.string()) if not pa.types.is_string(ids.type) else ids
        reasons.append(pc.if_else(pc.is_null(ids), pa.scalar("missing_id"), pa.scalar(None, pa.string())))
    else:
        ordinal = pc.add(rows, shard.start) if shard.start else rows  # memory ids number the whole table
        ids = pc.binary_join_element_wise(pa.scalar(shard.id_prefix), pc.cast(ordinal, pa.string()), ":")
    reason = _first_reason(reasons, n)
    used = {spec.text_column, spec.id_column, spec.prompt_column, spec.response_column, spec.input_column}
    out = {"id": ids, "text": text, **cols, "_row": rows}
    for name in names:
        if name not in used and name not in out:
            out[name] = raw.column(name)
    table = pa.RecordBatch.from_pydict({k: _string32(v) for k, v in out.items()})
    ok = pc.is_null(reason)
    good = table.filter(ok)
    bad_mask = pc.invert(ok)
    if not pc.any(bad_mask).as_py():
        return ReadBatch(good, _empty_rejects())
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
    return ReadBatch(good, rejected)


def _fail(shard: InputShard, row: int, reason: str) -> None:
    """The error of `on_bad_row: fail`: the file and the line (JSONL, 1-based) or row."""
    where = f"line {row + 1}" if shard.kind == "jsonl" else f"row {row}"
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


def _open_text(path: str) -> io.BufferedIOBase:
    if path.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if path.endswith(".zst"):
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb")))  # type: ignore[arg-type]
    return open(path, "rb")


def _read_jsonl(shard: InputShard, spec: InputSpec) -> Iterator[ReadBatch]:
    """JSONL: one JSON object per line. A line that is not a JSON object is rejected here with
    its line number; the records go through `normalise`, the same rules as every format."""
    path = shard.paths[0]
    try:
        fh = _open_text(path)
    except OSError as exc:
        raise JobError(f"{path}: cannot open ({exc})") from None
    with fh:
        lines: list[tuple[int, bytes, dict[str, Any]]] = []
        rejects: list[tuple[int, str, bytes]] = []
        lineno = 0
        try:
            for line in fh:
                row = lineno
                lineno += 1
                stripped = line.rstrip(b"\r\n")
                reason, rec = _parse_line(stripped)
                if reason is not None:
                    if spec.on_bad_row == "fail":
                        _fail(shard, row, reason)
                    rejects.append((row, reason, stripped))
                else:
                    lines.append((row, stripped, rec))
                if len(lines) + len(rejects) >= spec.batch_rows:
                    yield _jsonl_batch(lines, rejects, spec, shard)
                    lines, rejects = [], []
        except (OSError, EOFError, ValueError) as exc:
            if isinstance(exc, JobError):
                raise
            raise JobError(f"{path}: read failed near line {lineno + 1} ({type(exc).__name__}: {exc})") from None
        if lines or rejects:
            yield _jsonl_batch(lines, rejects, spec, shard)


def _parse_line(line: bytes) -> tuple[str | None, Any]:
    """Parse one JSONL line; returns (the reason it is not a JSON object, or None; the record)."""
    if not line.strip():
        return "blank_line", None
    try:
        s = line.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid_utf8", None
    try:
        rec = json.loads(s)
    except json.JSONDecodeError as exc:
        return f"bad_json: {exc.msg} at column {exc.colno}", None
    if not isinstance(rec, dict):
        return "bad_json: not an object", None
    return None, rec


def _jsonl_batch(lines: list[tuple[int, bytes, dict[str, Any]]], rejects: list[tuple[int, str, bytes]],
                 spec: InputSpec, shard: InputShard) -> ReadBatch:
    """The records of one batch as a raw Arrow batch (the job's columns as strings, the other
    keys as a `meta` JSON column) through `normalise`, plus the lines that were not records."""
    records = [rec for _, _, rec in lines]
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
        cols[spec.id_column] = pa.array([None if r.get(spec.id_column) is None else str(r[spec.id_column])
                                         for r in records], pa.string())
    used = {spec.text_column, spec.id_column, spec.prompt_column, spec.response_column, spec.input_column}
    cols["meta"] = pa.array([json.dumps({k: v for k, v in r.items() if k not in used}, ensure_ascii=False)
                             for r in records], pa.string())
    raw = pa.RecordBatch.from_pydict(cols)
    out = normalise(raw, spec, shard, rows=pa.array([row for row, _, _ in lines], pa.int64()), reasons=reasons,
                    raw_bytes=pa.array([b for _, b, _ in lines], pa.large_binary()))
    if not rejects:
        return out
    bad = pa.RecordBatch.from_pydict({
        "_row": pa.array([r[0] for r in rejects], pa.int64()),
        "id": pa.array([None if spec.id_column else f"{shard.id_prefix}:{r[0]}" for r in rejects], pa.string()),
        "reason": pa.array([r[1] for r in rejects], pa.string()),
        "raw": pa.array([r[2] for r in rejects], pa.large_binary()),
    }, schema=REJECT_SCHEMA)
    both = pa.Table.from_batches([out.rejected, bad], schema=REJECT_SCHEMA).sort_by("_row").combine_chunks()
    return ReadBatch(out.good, both.to_batches()[0] if both.num_rows else _empty_rejects())


def _read_textfiles(shard: InputShard, spec: InputSpec) -> Iterator[ReadBatch]:
    """One document per text file; id = path relative to the input root."""
    for start in range(0, len(shard.paths), spec.batch_rows):
        group = shard.paths[start:start + spec.batch_rows]
        blobs = []
        for p in group:
            try:
                blobs.append(Path(p).read_bytes())
            except OSError as exc:
                raise JobError(f"{p}: cannot read ({exc})") from None
        rel = [os.path.relpath(p, shard.root) for p in group]
        raw = pa.RecordBatch.from_pydict({
            spec.text_column: pa.array(blobs, pa.binary()),
            spec.id_column or "path": pa.array(rel, pa.string()),
        })
        sub = spec.model_copy(update={"id_column": spec.id_column or "path"})
        yield normalise(raw, sub, shard, start)
