"""The map stages every engine runs: score a shard, write a shard.

Engines (local, Spark, Beam) differ only in how they call `score_shard` and
`write_shard` over the shards; both are idempotent (a finished shard is skipped by its
completion marker) and deterministic, so a retried or resumed task writes the same bytes.
The select stage between them is `thresher.pipelines.selection.stage`.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.config import JobSpec
from thresher.specs import JobError
from thresher.common.atomic import write_json_atomic
from thresher.common.progress import Report, no_report
from thresher.io import storage
from thresher.io.output import AtomicParquetWriter, OutputLayout
from thresher.io.readers import REJECT_SCHEMA, InputShard, read_shard
from thresher.pipelines.parts import output_columns, shard_part_path
from thresher.pipelines.worker import scorers_for

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
    scores = storage.read_table(layout.scores(shard.index))
    sel = storage.read_table(layout.selection(shard.index))
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
