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


def normalise(raw: pa.RecordBatch, spec: InputSpec, shard: InputShard, first_row: int) -> ReadBatch:
    """Map a raw batch to the thresher schema and split off rows that cannot be used."""
    n = raw.num_rows
    rows = pa.array(range(first_row, first_row + n), type=pa.int64())
    names = raw.schema.names
    _check_schema(spec, raw.schema, shard.name)
    reasons: list[pa.Array] = []  # one string-or-null array per check, first non-null wins
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
        if spec.text_column in names:
            text = text_col(spec.text_column, "empty_text")
        else:
            text = pc.binary_join_element_wise(pc.fill_null(prompt, ""), pc.fill_null(response, ""), "\n\n")
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
    raw_text = raw.column(spec.prompt_column if spec.instruction else spec.text_column)
    rejected = pa.RecordBatch.from_pydict({
        "_row": rows.filter(bad_mask),
        "id": _string32(ids).filter(bad_mask),
        "reason": reason.filter(bad_mask),
        "raw": _to_binary(raw_text).filter(bad_mask),
    }, schema=REJECT_SCHEMA)
    if spec.on_bad_row == "fail":
        raise JobError(f"{shard.name}: row {rejected.column('_row')[0]}: {rejected.column('reason')[0]} "
                       f"(input.on_bad_row is 'fail')")
    return ReadBatch(good, rejected)


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
    """JSONL: one JSON object per line; bad lines are rejected with their line number."""
    path = shard.paths[0]
    text_keys = ([(spec.prompt_column, "prompt"), (spec.response_column, "response")] if spec.instruction
                 else [(spec.text_column, "text")])
    used = {spec.text_column, spec.id_column, spec.prompt_column, spec.response_column, spec.input_column}
    try:
        fh = _open_text(path)
    except OSError as exc:
        raise JobError(f"{path}: cannot open ({exc})") from None
    with fh:
        records: list[dict[str, Any]] = []
        rejects: list[tuple[int, str | None, str, bytes]] = []
        lineno = 0
        try:
            for line in fh:
                row = lineno
                lineno += 1
                stripped = line.rstrip(b"\r\n")
                reason, rec = _parse_line(stripped, text_keys, spec)
                if reason is not None:
                    if spec.on_bad_row == "fail":
                        raise JobError(f"{path}: line {row + 1}: {reason} (input.on_bad_row is 'fail')")
                    rid = None
                    if isinstance(rec, dict) and spec.id_column and rec.get(spec.id_column) is not None:
                        rid = str(rec[spec.id_column])
                    elif not spec.id_column:
                        rid = f"{shard.id_prefix}:{row}"
                    rejects.append((row, rid, f"{reason}", stripped))
                else:
                    rec["__row"] = row  # type: ignore[index]
                    records.append(rec)  # type: ignore[arg-type]
                if len(records) + len(rejects) >= spec.batch_rows:
                    yield _jsonl_batch(records, rejects, spec, shard, used)
                    records, rejects = [], []
        except (OSError, EOFError, ValueError) as exc:
            if isinstance(exc, JobError):
                raise
            raise JobError(f"{path}: read failed near line {lineno + 1} ({type(exc).__name__}: {exc})") from None
        if records or rejects:
            yield _jsonl_batch(records, rejects, spec, shard, used)


def _parse_line(line: bytes, text_keys: list[tuple[str, str]], spec: InputSpec) -> tuple[str | None, Any]:
    """Parse one JSONL line; returns (reason it cannot be used or None, the record)."""
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
    for key, role in text_keys:
        if rec.get(key) is None:
            return f"missing_{role}", rec
        if not isinstance(rec[key], str):
            return f"{role}_not_string", rec
        if not rec[key].strip():
            return f"empty_{role}", rec
    if spec.id_column and rec.get(spec.id_column) is None:
        return "missing_id", rec
    return None, rec


def _jsonl_batch(records: list[dict[str, Any]], rejects: list[tuple[int, str | None, str, bytes]],
                 spec: InputSpec, shard: InputShard, used: set[str | None]) -> ReadBatch:
    rows = [r.pop("__row") for r in records]
    if spec.id_column:
        ids = [str(r[spec.id_column]) for r in records]
    else:
        ids = [f"{shard.id_prefix}:{row}" for row in rows]
    cols: dict[str, Any] = {"id": pa.array(ids, pa.string())}
    if spec.instruction:
        prompts = [r[spec.prompt_column] for r in records]  # type: ignore[index]
        if spec.input_column:
            prompts = [p if not r.get(spec.input_column) else f"{p}\n\n{r[spec.input_column]}"
                       for p, r in zip(prompts, records)]
        responses = [r[spec.response_column] for r in records]  # type: ignore[index]
        texts = [r.get(spec.text_column) if isinstance(r.get(spec.text_column), str) else f"{p}\n\n{a}"
                 for r, p, a in zip(records, prompts, responses)]
        cols["text"] = pa.array(texts, pa.string())
        cols["prompt"] = pa.array(prompts, pa.string())
        cols["response"] = pa.array(responses, pa.string())
    else:
        cols["text"] = pa.array([r[spec.text_column] for r in records], pa.string())
    cols["_row"] = pa.array(rows, pa.int64())
    cols["meta"] = pa.array([json.dumps({k: v for k, v in r.items() if k not in used}, ensure_ascii=False)
                             for r in records], pa.string())
    good = pa.RecordBatch.from_pydict(cols)
    rejected = pa.RecordBatch.from_pydict({
        "_row": pa.array([r[0] for r in rejects], pa.int64()),
        "id": pa.array([r[1] for r in rejects], pa.string()),
        "reason": pa.array([r[2] for r in rejects], pa.string()),
        "raw": pa.array([r[3] for r in rejects], pa.large_binary()),
    }, schema=REJECT_SCHEMA)
    return ReadBatch(good, rejected)


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
