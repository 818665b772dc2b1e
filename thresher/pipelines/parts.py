"""What the output parts hold (`output.columns`) and how big they are (`output.target_rows_per_part`,
`output.target_bytes_per_part`).

Columns. `output.columns` is `{keep: [...]}` or `{drop: [...]}`, names or globs (`embedding_*`,
matched case-sensitively with `fnmatch`). `id` and the text columns (`text`, and `prompt`,
`response` for instruction data) are always written; the other columns keep their order.
`write_shard` applies it (`output_columns`); a pattern that matches no column is an error at
plan time where the plan can know the columns (`check_output_columns`, called by `check_plan`:
the input's columns from its first batch, the scorers' declared columns, the selector's), and
again in the write stage against the real columns.

Part sizes. Without a target, `write_shard` writes one part per input shard, `part-i.parquet`,
as it always has. With a target, the write stage first writes each shard's selected rows to
`_thresher/staged/part-i.parquet` (same code, another name), then `rechunk` cuts the
concatenation of the staged parts, in shard and then row order, into consecutive ranges of
`R` rows (`R` = `target_rows_per_part`, or `target_bytes_per_part` divided by the staged parts'
bytes per row, the smaller of the two when both are set; the last part holds the rest; an empty
selection gives one empty part). The driver only plans: from the staged parts' row counts (the
write markers) it lists, per output part, the (shard, first row, end row) pieces it needs, and
the engine's `parallel_map` runs `write_part` once per output part: a task reads only its pieces,
row group by row group, writes `part-j.parquet` through `AtomicParquetWriter` (temporary, then
rename) and then its marker `_thresher/done/write-part-j.json`. A task whose marker names the
same write hash and the same pieces is skipped, so a killed run resumes part by part and writes
the same bytes. Once every part is written the staged parts are deleted (the markers keep
vouching for them: the parts made from them exist). Every part has the schema unified over the
staged parts, so the parts of one folder agree.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from thresher.common.atomic import write_json_atomic
from thresher.config import ALWAYS_WRITTEN, JobSpec
from thresher.io import storage
from thresher.io.output import AtomicParquetWriter, OutputLayout
from thresher.io.readers import plan_shards, read_shard
from thresher.specs import JobError

PART_MARKER = "write-part"  # _thresher/done/write-part-j.json (cleared with the write stage: write*)


# -- columns -----------------------------------------------------------------------------------
def always_written(job: JobSpec) -> tuple[str, ...]:
    """The columns `output.columns` never removes: `id` and the text columns."""
    return ALWAYS_WRITTEN + (("prompt", "response") if job.input.instruction else ())


def _kind(job: JobSpec) -> tuple[str, list[str]]:
    spec = job.output.columns
    assert spec is not None
    return ("keep", spec.keep) if spec.keep is not None else ("drop", spec.drop or [])


def output_columns(names: list[str], job: JobSpec, where: str | None = None) -> list[str]:
    """The columns of `names` (in their order) that the parts hold under `output.columns`.

    `where` (a shard's name): a pattern that matches none of `names` is a JobError naming it."""
    if job.output.columns is None:
        return list(names)
    kind, patterns = _kind(job)
    hits = {p: {n for n in names if fnmatch.fnmatchcase(n, p)} for p in patterns}
    if where is not None:
        unmatched = [p for p, h in hits.items() if not h]
        if unmatched:
            raise JobError(f"{where}: output.columns.{kind}: {unmatched} match no column of the parts; "
                           f"columns: {names}")
    matched = set().union(*hits.values()) if hits else set()
    keep = set(always_written(job))
    if kind == "keep":
        return [n for n in names if n in keep or n in matched]
    return [n for n in names if n in keep or n not in matched]


def check_output_columns(job: JobSpec, planned: Any, in_memory: bool, fail: Callable[[str, str], JobError]) -> None:
    """Plan-time check of `output.columns` (see the module docstring); `planned` is the plan's
    `PlannedColumns` (the score table's columns). Raises `fail(key, message)`."""
    if job.output.columns is None:
        return
    kind, patterns = _kind(job)
    key = f"output.columns.{kind}"
    if kind == "drop" and job.input.instruction:
        for i, p in enumerate(patterns):
            hit = [c for c in ("prompt", "response") if fnmatch.fnmatchcase(c, p)]
            if hit:
                raise fail(f"{key}.{i}", f"{p!r} would drop {hit[0]!r}; `id` and the text columns "
                                         f"(prompt, response for instruction data) are always written")
    known = list(always_written(job)) + [c for c in planned.types if c not in ("_shard", "_row")]
    known += _selector_columns(job)
    open_ended = bool(planned.trusted_prefixes)  # model scorers whose columns are known only later
    if in_memory:
        open_ended = True  # the table's columns are not known here; the write stage checks them
    else:
        try:
            shards = plan_shards(job.input)
            first = next(iter(read_shard(shards[0], job.input)), None) if shards else None
        except (JobError, OSError, StopIteration, IndexError):
            first = None  # the readers report a bad input at run time, with its own message
        if first is None:
            open_ended = True
        else:
            known += [c for c in first.good.schema.names if c != "_row"]
    known = list(dict.fromkeys(known))
    for i, p in enumerate(patterns):
        if any(fnmatch.fnmatchcase(c, p) for c in known) or open_ended:
            continue
        close = difflib.get_close_matches(p, known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"columns: {known[:40]}{' …' if len(known) > 40 else ''}"
        raise fail(f"{key}.{i}", f"{p!r} matches no column this job writes; {hint}")


def _selector_columns(job: JobSpec) -> list[str]:
    """The extra columns the job's selector writes (`SelectionResult.columns`), where known."""
    from thresher.selectors.registry import build_selector

    try:
        selector = build_selector(job.selector)
    except Exception:  # the selector check of the plan reports it
        return []
    out = []
    result_column = getattr(type(selector), "result_column", None)
    if isinstance(result_column, str):
        out.append(result_column)  # DATAMASK, greedy
    if job.selector.get("type") == "icon" and hasattr(selector, "col"):
        out.append(selector.col("prob"))
    return out


# -- part sizes --------------------------------------------------------------------------------
def rechunks(job: JobSpec) -> bool:
    """Whether the write stage re-chunks its per-shard parts (a part size target is set)."""
    return job.output.target_rows_per_part is not None or job.output.target_bytes_per_part is not None


def shard_part_path(job: JobSpec, layout: OutputLayout, i: int) -> Any:
    """Where `write_shard` writes shard i's selected rows: the part itself, or its staged copy."""
    return layout.staged_part(i) if rechunks(job) else layout.part(i)


def rows_per_part(job: JobSpec, staged: list[dict[str, Any]]) -> int:
    """The rows per output part (`R` of the module docstring) for staged parts `staged`
    (their `{"rows", "bytes"}` as the write markers record them)."""
    o = job.output
    targets = [o.target_rows_per_part] if o.target_rows_per_part is not None else []
    if o.target_bytes_per_part is not None:
        rows = sum(p["rows"] for p in staged)
        size = sum(p["bytes"] for p in staged if p["rows"])
        targets.append(max(1, int(o.target_bytes_per_part * rows // size)) if rows and size else 1 << 62)
    return max(1, min(targets))


def plan_parts(shard_rows: list[int], per_part: int) -> list[list[list[int]]]:
    """Output part j = rows [j*per_part, (j+1)*per_part) of the staged parts in order, as
    [[shard, start, stop], ...] pieces (empty shards are in no piece; no rows: one empty part)."""
    total = sum(shard_rows)
    parts: list[list[list[int]]] = []
    shard, offset = 0, 0  # the next unassigned row: row `offset` of staged part `shard`
    for _ in range(max(1, -(-total // per_part))):
        need, pieces = per_part, []
        while need and shard < len(shard_rows):
            take = min(need, shard_rows[shard] - offset)
            if take > 0:
                pieces.append([shard, offset, offset + take])
                need -= take
                offset += take
            if offset >= shard_rows[shard]:
                shard, offset = shard + 1, 0
        parts.append(pieces)
    return parts


def rechunk(job: JobSpec, layout: OutputLayout, write_res: list[dict[str, Any]],
            parallel_map: Callable[[Callable[[Any], Any], list[Any]], list[Any]]) -> list[dict[str, Any]]:
    """Cut the staged parts into `part-j.parquet` files (see the module docstring); returns one
    `{"part": {file, rows, bytes, sha256}, "skipped": bool, ...}` per part, in order."""
    staged = [r["part"] for r in write_res]
    per_part = rows_per_part(job, staged)
    plan = plan_parts([p["rows"] for p in staged], per_part)
    write_hash = job.write_hash()
    todo = [j for j, pieces in enumerate(plan) if not _done(layout.read_marker(PART_MARKER, j), write_hash, pieces)]
    schema = _unified_schema(layout, len(staged)) if todo and staged else None
    items = [{"root": str(layout.root), "index": j, "pieces": pieces, "write_hash": write_hash,
              "compression": job.output.compression, "rows_per_part": per_part,
              "schema": schema.serialize().to_pybytes() if schema is not None and j in todo else None}
             for j, pieces in enumerate(plan)] if staged else []
    results = parallel_map(write_part, items) if items else []
    names = {r["part"]["file"] for r in results}
    for p in layout.root.glob("part-*.parquet"):  # none unless a folder was tampered with
        if p.name not in names:
            p.unlink()
    storage.remove_tree(layout.staged_part(0).parent)  # every part is written
    return results


def forget_other_parts(job: JobSpec, layout: OutputLayout, n_shards: int) -> bool:
    """Clear the write stage (`OutputLayout.clear_stage`: manifest and card first, then the write
    markers, parts and staged parts) when a write or part marker was written for another write
    identity (`JobSpec.write_hash`: a changed `output.columns` or part size). The scores and the
    selection stay: only the write stage runs again. Returns whether it cleared."""
    want = job.write_hash()
    markers = [layout.read_marker("write", i) for i in range(n_shards)]
    stale = any(m is not None and m.get("write_hash", m.get("select_hash")) != want for m in markers)
    done = layout.marker(PART_MARKER, 0).parent
    if not stale and storage.is_dir(done):
        for path in sorted(done.glob(f"{PART_MARKER}-*.json")):
            index = path.stem.rsplit("-", 1)[1]
            m = layout.read_marker(PART_MARKER, int(index)) if index.isdigit() else None
            if m is None or m.get("write_hash") != want:
                stale = True
                break
    if stale:
        layout.clear_stage("write")
    return stale


def _done(marker: dict[str, Any] | None, write_hash: str, pieces: list[list[int]]) -> bool:
    return marker is not None and marker.get("write_hash") == write_hash and marker.get("pieces") == pieces


def _unified_schema(layout: OutputLayout, n: int) -> pa.Schema:
    schemas = []
    for i in range(n):
        path = layout.staged_part(i)
        if not storage.exists(path):
            raise JobError(f"{path}: missing, but its write marker exists; re-run with --overwrite")
        schemas.append(storage.read_schema(path).remove_metadata())
    try:
        return pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise JobError(f"the shards' parts have columns of different types, so they cannot share parts "
                       f"(unset output.target_rows_per_part): {' '.join(str(exc).split())}") from None


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.Table:
    cols = [batch.column(f.name).cast(f.type) if f.name in batch.schema.names else pa.nulls(batch.num_rows, f.type)
            for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


def write_part(item: dict[str, Any]) -> dict[str, Any]:
    """Write output part `item["index"]` from its pieces of the staged parts, then its marker
    (a map task: runs on a worker; skipped when its marker vouches for it)."""
    layout = OutputLayout(item["root"])
    j, pieces = item["index"], item["pieces"]
    done = layout.read_marker(PART_MARKER, j)
    if _done(done, item["write_hash"], pieces):
        return {**done, "skipped": True}
    if item["schema"] is None:
        raise JobError(f"{layout.part(j)}: no schema to write it with; re-run with --overwrite")
    schema = pa.ipc.read_schema(pa.py_buffer(item["schema"]))
    writer = AtomicParquetWriter(layout.part(j), schema=schema, compression=item["compression"])
    try:
        for shard, start, stop in pieces:
            path = layout.staged_part(shard)
            if not storage.exists(path):
                raise JobError(f"{path}: missing, but its write marker exists; re-run with --overwrite")
            pf = storage.parquet_file(path)
            offset = 0
            for g in range(pf.metadata.num_row_groups):
                n = pf.metadata.row_group(g).num_rows
                lo, hi = max(start, offset), min(stop, offset + n)
                if lo < hi:
                    for rb in pf.read_row_group(g).slice(lo - offset, hi - lo).to_batches():
                        writer.write(_conform(rb, schema))
                offset += n
                if offset >= stop:
                    break
        expected = sum(stop - start for _, start, stop in pieces)
        if writer.rows != expected:
            raise JobError(f"{layout.part(j)}: read {writer.rows} rows for it, planned {expected}; "
                           f"re-run with --overwrite")
        info = writer.close()
    except BaseException:
        writer.abort()
        raise
    marker = {"index": j, "part": info, "pieces": pieces, "write_hash": item["write_hash"],
              "rows_per_part": item["rows_per_part"]}
    write_json_atomic(marker, layout.marker(PART_MARKER, j))
    return {**marker, "skipped": False}
