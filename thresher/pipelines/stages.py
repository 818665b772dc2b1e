"""The stage code every engine runs: score a shard, select globally, write a shard.

Engines (local, Spark, Beam) differ only in how they call `score_shard` and
`write_shard` over the shards; both are idempotent (a finished shard is skipped by its
completion marker) and deterministic, so a retried or resumed task writes the same bytes.
`select` runs once, on the narrow score table only.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from thresher.config import FilterSpec, JobSpec
from thresher.specs import JobError
from thresher.common.atomic import write_json_atomic
from thresher.common.progress import Report, no_report
from thresher.io.output import AtomicParquetWriter, OutputLayout
from thresher.io.readers import REJECT_SCHEMA, InputShard, read_shard
from thresher.pipelines.parts import output_columns, shard_part_path
from thresher.pipelines.worker import global_scorers, scorers_for
from thresher.scorers.base import GlobalScorer
from thresher.selectors.base import ParallelMap, SelectContext, SelectionResult, Selector, serial_map
from thresher.selectors.registry import build_selector

BASE_COLUMNS = ("id", "_shard", "_row", "n_chars", "n_words")
STATUS_SCHEMA = pa.schema([("_row", pa.int64()), ("status", pa.string()), ("reason", pa.string())])


def base_columns(batch: pa.RecordBatch, shard: int) -> dict[str, pa.Array]:
    """Columns every score table has: id, position, and cheap lengths."""
    text = batch.column("text")
    trimmed = pc.utf8_trim_whitespace(text)
    n_words = pc.list_value_length(pc.utf8_split_whitespace(trimmed))  # runs of (Unicode) whitespace split
    n_words = pc.if_else(pc.equal(pc.utf8_length(trimmed), 0), 0, n_words)  # "" splits into [""]
    return {
        "id": batch.column("id"),
        "_shard": pa.array(np.full(batch.num_rows, shard, dtype=np.int32)),
        "_row": batch.column("_row"),
        "n_chars": pc.utf8_length(text).cast(pa.int64()),
        "n_words": n_words.cast(pa.int64()),
    }


# -- map stage 1: score ------------------------------------------------------------


def score_shard(job: JobSpec, shard: InputShard, out_root: str, table: pa.Table | None = None,
                report: Report = no_report) -> dict[str, Any]:
    """Score one shard into `_scores/part-i` (+ `_rejected/part-i`); skip if already done.
    `report(n)` is called after each batch with its input rows (progress)."""
    layout = OutputLayout(out_root)
    done = layout.read_marker("score", shard.index)
    if done is not None and done.get("score_hash") == job.score_hash():
        return {**done, "skipped": True}
    start = time.perf_counter()
    scorers = scorers_for(job.scorers)
    before = [(s.rows, s.seconds) for s in scorers]  # scorers live across shards: count this one only
    rejected: Counter[str] = Counter()
    rows_in = 0
    scores_w = AtomicParquetWriter(layout.scores(shard.index), compression=job.output.compression)
    rej_w = AtomicParquetWriter(layout.rejected(shard.index), schema=REJECT_SCHEMA,
                                compression=job.output.compression)
    try:
        for rb in read_shard(shard, job.input, table):
            rows_in += rb.good.num_rows + rb.rejected.num_rows
            if rb.rejected.num_rows:
                rejected.update(rb.rejected.column("reason").to_pylist())
                if job.output.write_rejected:
                    rej_w.write(rb.rejected)
            cols = base_columns(rb.good, shard.index)
            if rb.scores is not None:  # input.score_columns: scores that come with the data, under their names
                for name in rb.scores.schema.names:
                    if name in cols:
                        raise JobError(f"input.score_columns: column {name!r} is one of thresher's base columns")
                    cols[name] = rb.scores.column(name)
            for scorer in scorers:
                for name, arr in scorer(rb.good).items():
                    if name in cols:
                        raise JobError(f"scorer {scorer.name!r}: column {name!r} is already taken; "
                                       f"give the scorer another `name:`")
                    cols[name] = arr
            scores_w.write(pa.RecordBatch.from_pydict(cols))
            report(rb.good.num_rows + rb.rejected.num_rows)
        if scores_w.schema is None:  # an empty shard still gets a score file with a schema
            from thresher.io.readers import score_fields

            scores_w.schema = _empty_score_schema(scorers, score_fields(shard, job.input, table))
        info = scores_w.close()
        rej_info = rej_w.close()
    except BaseException:
        scores_w.abort()
        rej_w.abort()
        raise
    marker = {
        "shard": shard.index, "source": shard.name, "fingerprint": shard.fingerprint,
        "score_hash": job.score_hash(), "rows_in": rows_in, "rows_ok": info["rows"],
        "rejected": dict(rejected), "scores": info, "rejected_file": rej_info,
        "seconds": round(time.perf_counter() - start, 4),
        "scorers": {s.prefix: {"rows": s.rows - r0, "seconds": round(s.seconds - t0, 4)}
                    for s, (r0, t0) in zip(scorers, before)},
    }
    write_json_atomic(marker, layout.marker("score", shard.index))
    return {**marker, "skipped": False}


def _empty_score_schema(scorers: list[Any], inputs: list[pa.Field] | None = None) -> pa.Schema:
    """The score table's schema without a row: base columns, `inputs` (input.score_columns), scorers'."""
    fields = [pa.field("id", pa.string()), pa.field("_shard", pa.int32()), pa.field("_row", pa.int64()),
              pa.field("n_chars", pa.int64()), pa.field("n_words", pa.int64())]
    fields.extend(inputs or [])
    for s in scorers:
        fields.extend(s.output_schema())
    return pa.schema(fields)


# -- global stage: select ------------------------------------------------------------


def _filter_mask(table: pa.Table, f: FilterSpec) -> np.ndarray:
    if f.column not in table.column_names:
        raise JobError(f"filters: column {f.column!r} not in the score table; available: "
                       f"{sorted(table.column_names)}")
    col = table.column(f.column)
    if f.op == "is_null":
        m = pc.is_null(col)
    elif f.op == "not_null":
        m = pc.is_valid(col)
    else:
        fn = {"==": pc.equal, "!=": pc.not_equal, ">": pc.greater, ">=": pc.greater_equal, "<": pc.less,
              "<=": pc.less_equal}[f.op]
        m = pc.fill_null(fn(col, pa.scalar(f.value)), False)
    return np.asarray(m.to_numpy(zero_copy_only=False), dtype=bool)


def read_score_table(layout: OutputLayout, n_shards: int, columns: list[str] | None = None) -> pa.Table:
    """The narrow score table of all shards, in shard and row order."""
    tables = []
    for i in range(n_shards):
        path = layout.scores(i)
        if not path.exists():
            raise JobError(f"{path}: missing; run the score stage first")
        tables.append(pq.read_table(path, columns=columns))
    return pa.concat_tables(tables, promote_options="default") if tables else pa.table({})


def read_text_columns(job: JobSpec, shards: list[InputShard] | None, table: pa.Table | None, columns: list[str],
                      score_rows: pa.ChunkedArray) -> dict[str, pa.ChunkedArray]:
    """Normalised input columns (e.g. `prompt`, `response`) for a selector, read again from
    the input: the good rows of every shard in order, i.e. aligned with the score table.

    `score_rows` is the score table's `_row` column; a mismatch means the input changed."""
    if shards is None:
        raise JobError(f"the selector reads input columns {columns}; this select call got no input shards")
    pieces: dict[str, list[pa.Array]] = {c: [] for c in columns}
    rows: list[pa.Array] = []
    for shard in shards:
        piece = table.slice(shard.start, shard.rows) if table is not None and shard.kind == "memory" else None
        for rb in read_shard(shard, job.input, piece):
            good = rb.good
            missing = [c for c in columns if c not in good.schema.names]
            if missing:
                hint = (" (instruction data: set input.prompt_column and input.response_column)"
                        if {"prompt", "response"} & set(missing) else "")
                raise JobError(f"the selector reads input columns {missing}, which {shard.name} does not give"
                               f"{hint}; columns: {good.schema.names}")
            rows.append(good.column("_row"))
            for c in columns:
                pieces[c].append(good.column(c).cast(pa.string()))
    got = pa.chunked_array(rows, pa.int64()) if rows else pa.chunked_array([], pa.int64())
    if len(got) != len(score_rows) or not got.equals(score_rows.cast(pa.int64())):
        raise JobError("input rows no longer line up with the saved scores (input changed since scoring?); "
                       "re-run with --overwrite")
    return {c: pa.chunked_array(v, pa.string()) for c, v in pieces.items()}


@dataclass
class RowStatus:
    """Per-row outcome of the select stage over the score table (status, reason, extra columns)."""

    status: np.ndarray  # "selected" | "not_selected" | "rejected"
    reason: np.ndarray  # None, "duplicate_id", a filter label or "not_chosen"
    columns: dict[str, pa.Array] = field(default_factory=dict)  # full-length, null where not computed

    @classmethod
    def start(cls, n: int) -> "RowStatus":
        return cls(np.full(n, "not_selected", dtype=object), np.full(n, None, dtype=object))


def select(job: JobSpec, layout: OutputLayout, n_shards: int, parallel_map: ParallelMap = serial_map,
           shards: list[InputShard] | None = None, input_table: pa.Table | None = None) -> dict[str, Any]:
    """Run global scorers, filters and the selector; write `_selection/part-i` per shard.

    The steps, in order: load the narrow score table (plus any input columns the selector
    reads), reject duplicate ids, run global scorers, apply filters, size the pool for the
    budget, run the selector, write the per-shard selection files and the marker.
    `parallel_map` is the engine's way to spread a selector's independent pieces of work;
    `shards` (and `input_table` for in-memory input) are needed only by selectors that read
    input columns (`Selector.text_columns()`)."""
    done = layout.read_marker("select")
    if done is not None and done.get("select_hash") == job.select_hash():
        return {**done, "skipped": True}
    start = time.perf_counter()
    selector = build_selector(job.selector)
    gscorers = global_scorers(job.scorers)
    table = load_select_table(job, layout, n_shards, selector, gscorers, shards, input_table)
    rows = RowStatus.start(table.num_rows)
    live_idx = reject_duplicate_ids(table, rows)
    live_table = run_global_scorers(gscorers, table.take(pa.array(live_idx)), job.seed, rows, live_idx)
    elig_idx, filter_counts = apply_filters(job.filters, live_table, rows, live_idx)
    ctx = select_context(job, layout, selector, live_table, parallel_map)
    result = run_selector(selector, live_table.take(pa.array(elig_idx)), ctx)
    picked = np.asarray(result.selected, dtype=bool)
    chosen, not_chosen = live_idx[elig_idx[picked]], live_idx[elig_idx[~picked]]
    rows.status[chosen] = "selected"
    rows.reason[not_chosen] = "not_chosen"
    for name, arr in result.columns.items():
        rows.columns[name] = _scatter(arr, live_idx[elig_idx], table.num_rows)
    write_selection(job, layout, n_shards, table, rows)
    marker = {
        "select_hash": job.select_hash(), "selector": selector.name,
        "rows": table.num_rows, "selected": int((rows.status == "selected").sum()),
        "duplicate_id": int((rows.reason == "duplicate_id").sum()),
        "filtered": filter_counts, "not_chosen": int(len(not_chosen)),
        "selector_stats": result.stats, "seconds": round(time.perf_counter() - start, 4),
    }
    write_json_atomic(marker, layout.marker("select"))
    return {**marker, "skipped": False}


def load_select_table(job: JobSpec, layout: OutputLayout, n_shards: int, selector: Selector,
                      gscorers: list[GlobalScorer], shards: list[InputShard] | None,
                      input_table: pa.Table | None) -> pa.Table:
    """The columns of the score table that the selector, filters and global scorers need
    (a clear error names any that no scorer produced), plus the input columns the selector reads."""
    needed = set(BASE_COLUMNS) | set(selector.required_columns()) | {f.column for f in job.filters}
    for g in gscorers:
        needed |= set(g.required_columns())
    produced = {f.name for g in gscorers for f in g.output_schema()}
    schema = pq.read_schema(layout.scores(0)) if n_shards else pa.schema([])
    missing = sorted(c for c in needed - produced if c not in schema.names)
    if missing:
        raise JobError(f"selector/filters need columns {missing} that no scorer produced; "
                       f"score columns: {sorted(schema.names)}")
    table = read_score_table(layout, n_shards, [c for c in schema.names if c in needed])
    text_cols = [c for c in selector.text_columns() if c not in table.column_names]
    if text_cols:
        for name, arr in read_text_columns(job, shards, input_table, text_cols, table.column("_row")).items():
            table = table.append_column(name, arr)
    return table


def reject_duplicate_ids(table: pa.Table, rows: RowStatus) -> np.ndarray:
    """Reject every later occurrence of an id (the first, in shard and row order, stays);
    returns the indices of the rows that stay."""
    ids = table.column("id").to_numpy(zero_copy_only=False).astype(str)
    _, first = np.unique(ids, return_index=True)
    dup = np.ones(table.num_rows, dtype=bool)
    dup[first] = False
    rows.status[dup] = "rejected"
    rows.reason[dup] = "duplicate_id"
    return np.flatnonzero(~dup)


def run_global_scorers(gscorers: list[GlobalScorer], live_table: pa.Table, seed: int, rows: RowStatus,
                       live_idx: np.ndarray) -> pa.Table:
    """Add each global scorer's columns to the live rows (and to the written selection)."""
    for g in gscorers:
        for name, arr in g.fit_transform(live_table, seed).items():
            live_table = live_table.append_column(name, arr)
            rows.columns[name] = _scatter(arr, live_idx, len(rows.status))
    return live_table


def apply_filters(filters: list[FilterSpec], live_table: pa.Table, rows: RowStatus, live_idx: np.ndarray
                  ) -> tuple[np.ndarray, dict[str, int]]:
    """Apply the job's filters in order; a row is labelled by the first filter that drops it.
    Returns the indices (into the live rows) of the eligible rows and the count per filter."""
    eligible = np.ones(len(live_idx), dtype=bool)
    counts: dict[str, int] = {}
    for f in filters:
        keep = _filter_mask(live_table, f)
        label = f"filter:{f.column} {f.op}" + ("" if f.op in ("is_null", "not_null") else f" {f.value}")
        newly = eligible & ~keep
        counts[label] = int(newly.sum())
        rows.reason[live_idx[newly]] = label
        eligible &= keep
    return np.flatnonzero(eligible), counts


def select_context(job: JobSpec, layout: OutputLayout, selector: Selector, live_table: pa.Table,
                   parallel_map: ParallelMap) -> SelectContext:
    """What the selector knows besides its rows: the pool the budget is a fraction of (valid
    documents, and their tokens by the selector's token column), the seed and the engine."""
    pool_tokens = 0.0
    token_col = selector.token_column()
    if token_col is not None and token_col in live_table.column_names:
        pool_tokens = float(pc.sum(live_table.column(token_col)).as_py() or 0)
    return SelectContext(seed=job.seed, pool_docs=live_table.num_rows, pool_tokens=pool_tokens,
                         parallel_map=parallel_map, scorers=list(job.scorers),
                         artifacts_dir=str(layout.selection(0).parent))


def run_selector(selector: Selector, table: pa.Table, ctx: SelectContext) -> SelectionResult:
    """Call the selector on the eligible rows; it must return one flag per row."""
    result = selector.select(table, ctx)
    if len(result.selected) != table.num_rows:
        raise JobError(f"selector {selector.name!r} returned {len(result.selected)} flags for {table.num_rows} rows")
    return result


def write_selection(job: JobSpec, layout: OutputLayout, n_shards: int, table: pa.Table, rows: RowStatus) -> None:
    """Write `_selection/part-i` (row, status, reason, selector columns) for every shard."""
    sel_table = pa.table({"_row": table.column("_row"), "status": pa.array(rows.status.tolist(), pa.string()),
                          "reason": pa.array(rows.reason.tolist(), pa.string()), **rows.columns})
    bounds = np.searchsorted(table.column("_shard").to_numpy(), np.arange(n_shards + 1))
    for i in range(n_shards):
        piece = sel_table.slice(int(bounds[i]), int(bounds[i + 1] - bounds[i]))
        w = AtomicParquetWriter(layout.selection(i), schema=sel_table.schema, compression=job.output.compression)
        w.write(piece)
        w.close()


def _scatter(arr: pa.Array, idx: np.ndarray, n: int) -> pa.Array:
    """Place `arr` at rows `idx` of an n-row column, null elsewhere."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    positions = np.full(n, -1, dtype=np.int64)
    positions[idx] = np.arange(len(idx))
    take_idx = pa.array(positions, mask=positions < 0)
    return arr.take(take_idx)


# -- map stage 2: write ------------------------------------------------------------


def write_shard(job: JobSpec, shard: InputShard, out_root: str, table: pa.Table | None = None,
                report: Report = no_report) -> dict[str, Any]:
    """Join the selection back onto the wide rows of one shard and write `part-i`.
    `report(n)` is called after each batch with its input rows (progress)."""
    layout = OutputLayout(out_root)
    done = layout.read_marker("write", shard.index)
    if done is not None and done.get("write_hash", done.get("select_hash")) == job.write_hash():
        return {**done, "skipped": True}
    start = time.perf_counter()
    scores = pq.read_table(layout.scores(shard.index))
    sel = pq.read_table(layout.selection(shard.index))
    if scores.num_rows != sel.num_rows:
        raise JobError(f"shard {shard.index}: score and selection row counts differ; re-run with --overwrite")
    score_cols = [c for c in scores.column_names if c not in ("id", "_shard", "_row")]
    sel_cols = [c for c in sel.column_names if c not in ("_row", "status", "reason")]
    selected = pc.equal(sel.column("status"), "selected")
    # the part itself, or (output.target_rows_per_part) its staged copy that parts.rechunk cuts up
    writer = AtomicParquetWriter(shard_part_path(job, layout, shard.index), compression=job.output.compression)
    offset = 0
    rows_in = 0
    names: list[str] | None = None  # the columns the part holds (output.columns)
    try:
        for rb in read_shard(shard, job.input, table):
            good = rb.good
            rows_in += good.num_rows + rb.rejected.num_rows
            k = good.num_rows
            if k == 0 and writer.schema is not None:
                continue
            sc = scores.slice(offset, k)
            if not pc.all(pc.equal(sc.column("_row"), good.column("_row"))).as_py() and k:
                raise JobError(f"{shard.name}: input changed since scoring (rows do not line up); "
                               f"re-run with --overwrite")
            cols = {name: good.column(name) for name in good.schema.names if name != "_row"}
            for name in score_cols + sel_cols:
                if name in cols:
                    raise JobError(f"{shard.name}: input column {name!r} clashes with a score column")
            cols.update({name: sc.column(name) for name in score_cols})
            s = sel.slice(offset, k)
            cols.update({name: s.column(name) for name in sel_cols})
            names = names or output_columns(list(cols), job, where=shard.name)
            out = pa.table({name: cols[name] for name in names}).filter(selected.slice(offset, k))
            writer.write(out)
            offset += k
            report(good.num_rows + rb.rejected.num_rows)
        if writer.schema is None:
            schema = pa.schema([("id", pa.string()), ("text", pa.string())] +
                               [scores.schema.field(c) for c in score_cols] +
                               [sel.schema.field(c) for c in sel_cols])
            writer.schema = pa.schema([schema.field(c) for c in output_columns(schema.names, job)])
        if offset != scores.num_rows:
            raise JobError(f"{shard.name}: read {offset} rows but {scores.num_rows} were scored; input changed? "
                           f"re-run with --overwrite")
        info = writer.close()
    except BaseException:
        writer.abort()
        raise
    marker = {"shard": shard.index, "select_hash": job.select_hash(), "part": info, "rows_in": rows_in,
              "seconds": round(time.perf_counter() - start, 4)}
    if job.write_hash() != job.select_hash():  # output.columns or a part size: the parts' own identity
        marker["write_hash"] = job.write_hash()
    write_json_atomic(marker, layout.marker("write", shard.index))
    return {**marker, "skipped": False}
