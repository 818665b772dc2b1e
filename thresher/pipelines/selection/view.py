"""One shard as the select stage sees it, rebuilt the same way by every task that needs it.

`SelectPlan` is everything a select task needs (small, picklable: the job, the folders, the
fitted global-scorer states, which shards have routed files). `shard_view` reads one shard's
narrow score columns and applies, in order: duplicate ids (from the routed `dupids` files),
global scorers (their fitted state, and their per-group columns from routed files), filters.
Every pass of the select stage calls it, so a row's status is computed by one piece of code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.config import FilterSpec, JobSpec
from thresher.io import storage
from thresher.io.output import AtomicParquetWriter, OutputLayout
from thresher.io.readers import InputShard
from thresher.pipelines.worker import global_scorers
from thresher.selectors.base import SelectContext, Selector
from thresher.selectors.registry import build_selector
from thresher.specs import JobError

@dataclass
class SelectPlan:
    """What every select task gets."""

    job: JobSpec
    out_root: str
    n_shards: int
    columns: list[str]  # score columns the stage reads (base, selector, filters, global scorers)
    heavy: frozenset[str]  # vector columns only the selector reads: passes that do not need them skip them
    ctx: SelectContext  # pool sizes are filled in once the summary pass ran
    dup_shards: frozenset[int] = frozenset()  # shards with a routed `dupids` file
    states: dict[str, dict[str, Any]] = field(default_factory=dict)  # global scorer prefix -> fitted state
    grouped: dict[str, frozenset[int]] = field(default_factory=dict)  # global scorer prefix -> shards with groups
    selector_state: dict[str, Any] = field(default_factory=dict)  # a rank selector's fitted state
    shards: list[InputShard] | None = None  # for selectors that read input text columns
    input_table: pa.Table | None = None  # in-memory input only (held by the caller anyway)

    @property
    def layout(self) -> OutputLayout:
        return OutputLayout(self.out_root)

    @property
    def scratch(self) -> str:
        """The stage's scratch folder (removed when the stage is done)."""
        return storage.join(self.out_root, "_thresher", "select")

    def scratch_path(self, *parts: str) -> str:
        return storage.join(self.scratch, *parts)

    def selector(self) -> Selector:
        return build_selector(self.job.selector)


def write_table(path: str, table: pa.Table) -> None:
    """Write a select-stage file (local path or URI) atomically."""
    w = AtomicParquetWriter(path, schema=table.schema)
    w.write(table)
    w.close()


@dataclass
class ShardView:
    """One shard's rows: all of them (`table`), the live ones (not a duplicate id) with the
    global scorers' columns, and which of those pass the filters."""

    table: pa.Table
    status: np.ndarray  # per row: "rejected" | "not_selected" (the selector decides later)
    reason: np.ndarray  # None, "duplicate_id" or a filter label
    live_idx: np.ndarray  # rows (into table) that are not duplicate ids
    live: pa.Table  # those rows, with the global scorers' columns appended
    global_columns: dict[str, pa.Array]  # full-length (null for duplicate ids)
    eligible: np.ndarray  # bool over live rows: passes every filter
    filter_counts: dict[str, int]

    @property
    def eligible_table(self) -> pa.Table:
        return self.live.filter(pa.array(self.eligible))

    @property
    def eligible_rows(self) -> np.ndarray:
        """Indices into `table` of the eligible rows."""
        return self.live_idx[self.eligible]


def filter_label(f: FilterSpec) -> str:
    return f"filter:{f.column} {f.op}" + ("" if f.op in ("is_null", "not_null") else f" {f.value}")


def filter_mask(table: pa.Table, f: FilterSpec) -> np.ndarray:
    """Rows of `table` that pass one filter."""
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


def read_scores(plan: SelectPlan, i: int, columns: list[str] | None = None) -> pa.Table:
    path = str(plan.layout.scores(i))
    if not storage.exists(path):
        raise JobError(f"{path}: missing; run the score stage first")
    return storage.read_table(path, columns=columns if columns is not None else plan.columns)


def routed_rows(path: str, rows: np.ndarray) -> tuple[np.ndarray, pa.Table]:
    """A routed file (`_row` + columns, sorted by `_row`) aligned to `rows`: (positions into
    `rows` of the routed rows, the routed table)."""
    t = storage.read_table(path)
    r = t.column("_row").to_numpy()
    pos = np.searchsorted(rows, r)
    if len(r) and (pos.max() >= len(rows) or not np.array_equal(rows[pos], r)):
        raise JobError(f"{path}: rows do not match the shard's scores; re-run with --overwrite")
    return pos, t


def shard_view(plan: SelectPlan, i: int, with_globals: bool = True, light: bool = False) -> ShardView:
    """Shard `i` with duplicate ids marked, global scorer columns added and filters applied
    (`with_globals=False`: before the global scorers are fitted; filters are then not applied;
    `light`: without the selector's vector columns)."""
    job = plan.job
    table = read_scores(plan, i, [c for c in plan.columns if c not in plan.heavy] if light else None)
    n = table.num_rows
    rows = table.column("_row").to_numpy()
    status = np.full(n, "not_selected", dtype=object)
    reason = np.full(n, None, dtype=object)
    dup = np.zeros(n, dtype=bool)
    if i in plan.dup_shards:
        pos, _ = routed_rows(plan.scratch_path("dupids", f"s-{i:05d}.parquet"), rows)
        dup[pos] = True
        status[dup] = "rejected"
        reason[dup] = "duplicate_id"
    dedup_cols: dict[str, pa.Array] = {}
    if job.dedup is not None:  # the dedup stage's clusters: rows it removed are rejected with its reason
        dedup_cols, why = dedup_columns(plan, i, rows)
        hit = (why != None) & ~dup  # noqa: E711 - elementwise over an object array
        status[hit] = "rejected"
        reason[hit] = why[hit]
        dup |= hit
    live_idx = np.flatnonzero(~dup)
    live = table.take(pa.array(live_idx)) if dup.any() else table
    gcols: dict[str, pa.Array] = {}
    if not with_globals:
        return ShardView(table, status, reason, live_idx, live, gcols, np.ones(len(live_idx), bool), {})
    gcols.update(dedup_cols)
    for g in global_scorers(job.scorers):
        cols = g.transform(live, plan.states[g.prefix])
        for name, arr in group_columns(plan, g, i, live, cols).items():
            cols[name] = arr
        for f in g.output_schema():
            live = live.append_column(f.name, cols[f.name].cast(f.type))
            gcols[f.name] = scatter(cols[f.name].cast(f.type), live_idx, n)
    eligible = np.ones(len(live_idx), dtype=bool)
    counts: dict[str, int] = {}
    for f in job.filters:
        keep = filter_mask(live, f)
        newly = eligible & ~keep
        label = filter_label(f)
        counts[label] = int(newly.sum())
        reason[live_idx[newly]] = label
        eligible &= keep
    return ShardView(table, status, reason, live_idx, live, gcols, eligible, counts)


def dedup_folder(out_root: str) -> str:
    """The dedup stage's folder (`_thresher/dedup`: its scratch files and per-shard results)."""
    return storage.join(out_root, "_thresher", "dedup")


def dedup_columns(plan: SelectPlan, i: int, rows: np.ndarray) -> tuple[dict[str, pa.Array], np.ndarray]:
    """Shard i's `dup_cluster` (the kept document's id; null outside a cluster), `dup_cluster_size`
    and `dup_keep` from the dedup stage's routed result, and each row's removal reason (None,
    `exact_duplicate` or `near_duplicate`)."""
    marker = plan.layout.read_marker("dedup")
    if marker is None or marker.get("dedup_hash") != plan.job.dedup_hash():
        raise JobError(f"{plan.out_root}: the dedup stage has not run for this job's `dedup:` section; "
                       f"run the job (thresher run), which runs it before selecting")
    n = len(rows)
    cluster = pa.nulls(n, pa.string())
    size = np.ones(n, dtype=np.int64)
    keep = np.ones(n, dtype=bool)
    why = np.full(n, None, dtype=object)
    if i in marker.get("routed", []):
        pos, t = routed_rows(storage.join(dedup_folder(plan.out_root), "result", f"s-{i:05d}.parquet"), rows)
        take = np.full(n, -1, dtype=np.int64)
        take[pos] = np.arange(len(pos))
        cluster = t.column("dup_cluster").take(pa.array(take, mask=take < 0))
        size[pos] = t.column("dup_cluster_size").to_numpy()
        keep[pos] = t.column("dup_keep").to_numpy(zero_copy_only=False)
        why[pos] = t.column("dup_reason").to_numpy(zero_copy_only=False)
    return {"dup_cluster": cluster, "dup_cluster_size": pa.array(size), "dup_keep": pa.array(keep)}, why


def group_columns(plan: SelectPlan, g: Any, i: int, live: pa.Table, cols: dict[str, pa.Array]
                  ) -> dict[str, pa.Array]:
    """A global scorer's per-group columns for shard i's live rows (null where a row is in no group)."""
    if g.group_column is None:
        return {}
    names = [f for f in g.output_schema() if f.name not in cols]
    out = {f.name: pa.nulls(live.num_rows, f.type) for f in names}
    if i not in plan.grouped.get(g.prefix, frozenset()):
        return out
    rows = live.column("_row").to_numpy()
    pos, t = routed_rows(plan.scratch_path(f"groups-{g.prefix}", f"s-{i:05d}.parquet"), rows)
    take = np.full(live.num_rows, -1, dtype=np.int64)
    take[pos] = np.arange(len(pos))
    idx = pa.array(take, mask=take < 0)
    return {f.name: t.column(f.name).take(idx).cast(f.type) for f in names}


def scatter(arr: pa.Array | pa.ChunkedArray, idx: np.ndarray, n: int) -> pa.Array:
    """Place `arr` at rows `idx` of an n-row column, null elsewhere."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if len(idx) == n:
        return arr
    positions = np.full(n, -1, dtype=np.int64)
    positions[idx] = np.arange(len(idx))
    return arr.take(pa.array(positions, mask=positions < 0))

