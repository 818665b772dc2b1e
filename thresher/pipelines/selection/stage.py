"""The select stage as engine tasks: nothing per-document is held by the driver.

Steps (each a pass of map tasks over the score shards, or an engine shuffle):
1. duplicate ids: ids shuffled into hash buckets; each bucket marks every later occurrence (in
   shard and row order); the marks are routed back to their shards;
2. global scorers (k-means clusters): fit on a bounded sample (by a hash of the id) on the
   driver, assign in the map tasks, per-group columns (SemDeDup) in one task per cluster;
3. a summary pass: counts per shard (rows, duplicates, live rows and tokens, filtered,
   eligible) and, for block selectors, sums of quality and embeddings;
4. the selector: `rows` selectors decide per shard; `rank` selectors (topk, random, icon) are
   cut exactly to the budget (`cut.py`), after a fit on a small sample where they learn
   (ICon); `blocks` selectors (DATAMASK, greedy) get their eligible rows shuffled into blocks
   (block = a pure function of (seed, id)), one task solves each block, and its decisions are
   routed back to the shards;
5. a final pass writes `_selection/part-i` per shard and returns the sums for the statistics.
Scratch files live in `_thresher/select/` and are removed when the stage is done.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa

from thresher.common.atomic import write_json_atomic
from thresher.common.progress import print_done
from thresher.config import JobSpec
from thresher.io import storage
from thresher.io.output import OutputLayout
from thresher.io.readers import InputShard
from thresher.pipelines.engine import Engine
from thresher.pipelines.selection import cut as cuts
from thresher.pipelines.selection import tasks as T
from thresher.pipelines.selection.view import SelectPlan
from thresher.pipelines.stages import BASE_COLUMNS
from thresher.pipelines.worker import global_scorers
from thresher.selectors.base import BudgetParams, SelectContext, Selector, budget_target, serial_map
from thresher.selectors.datamask.blocks import allocate, block_count, stats_from_sums
from thresher.selectors.registry import build_selector
from thresher.specs import JobError

IDS_PER_BUCKET = 1_000_000  # ids per duplicate-check task
CUT_POINTS = 1024  # sketch points per shard and round
CUT_COLLECT = 200_000  # rows the driver collects to finish a cut


def select(job: JobSpec, layout: OutputLayout, n_shards: int, engine: Engine,
           shards: list[InputShard] | None = None, input_table: pa.Table | None = None) -> dict[str, Any]:
    """Run duplicate-id checks, global scorers, filters and the selector over the score shards;
    write `_selection/part-i` per shard and the stage's marker (see the module docstring)."""
    done = layout.read_marker("select")
    if done is not None and done.get("select_hash") == job.select_hash():
        if getattr(engine, "progress", False):
            print("select: resumed, 0 docs selected (selected earlier)", file=sys.stderr, flush=True)
        return {**done, "skipped": True}
    start = time.perf_counter()
    selector = build_selector(job.selector)
    ctx = SelectContext(seed=job.seed, pool_docs=0, pool_tokens=0.0, parallel_map=serial_map,
                        scorers=list(job.scorers), artifacts_dir=str(layout.selection(0).parent))
    columns, heavy = needed_columns(job, layout, n_shards, selector)
    plan = SelectPlan(job, str(layout.root), n_shards, columns, heavy, ctx, shards=shards, input_table=input_table)
    storage.remove_tree(plan.scratch)
    items = list(range(n_shards))
    spill = plan.scratch_path("spill")
    total = sum(int((layout.read_marker("score", i) or {}).get("rows_ok", 0)) for i in items)

    # 1. duplicate ids
    buckets = max(1, math.ceil(total / IDS_PER_BUCKET))
    res = engine.shuffle("ids", partial(T.ids_emit, plan, buckets), items, partial(T.ids_reduce, plan), spill)
    plan.dup_shards = route(engine, plan, "dupids", [k for k, r in res.items() if r["dups"]])

    # 2. global scorers
    for gi, g in enumerate(global_scorers(job.scorers)):
        plan.states[g.prefix] = fit_global(engine, plan, items, gi, total)
        if g.group_column is not None:
            folder = f"groups-{g.prefix}"
            res = engine.shuffle(folder, partial(T.group_emit, plan, gi), items, partial(T.group_reduce, plan, gi),
                                 spill)
            plan.grouped[g.prefix] = route(engine, plan, folder, sorted(res), prefix="g")

    # 3. counts
    summary = engine.parallel_map(T.task(T.summary_task, plan, label="select: count"), items)
    plan.ctx = replace(ctx, pool_docs=sum(s["live"] for s in summary),
                       pool_tokens=sum(s["live_tokens"] for s in summary))
    eligible = sum(s["eligible"] for s in summary)

    # 4. the selector, 5. the selection files
    if selector.kind == "rows":
        finals = engine.parallel_map(T.task(T.final_task, plan, {}, label="select: write"), items)
        stats: dict[str, Any] = {}
    elif selector.kind == "rank":
        stats_of, decision = rank_decision(engine, plan, items, selector, eligible)
        finals = engine.parallel_map(T.task(T.final_task, plan, decision, label="select: write"), items)
        stats = stats_of(sum(f["selected"] for f in finals))
    else:
        decision, blocks = block_decision(engine, plan, items, selector, eligible)
        finals = engine.parallel_map(T.task(T.final_task, plan, decision, label="select: write"), items)
        stats = block_stats(plan, selector, summary, finals, blocks, time.perf_counter() - start)
    storage.remove_tree(plan.scratch)

    filtered: dict[str, int] = {}
    for s in summary:
        for label, count in s["filtered"].items():
            filtered[label] = filtered.get(label, 0) + count
    selected = sum(f["selected"] for f in finals)
    marker = {
        "select_hash": job.select_hash(), "selector": selector.name,
        "rows": sum(s["rows"] for s in summary), "selected": selected,
        "duplicate_id": sum(s["duplicate_id"] for s in summary),
        "filtered": filtered, "not_chosen": eligible - selected,
        "selector_stats": stats, "seconds": round(time.perf_counter() - start, 4),
    }
    write_json_atomic(marker, layout.marker("select"))
    print_done("select", marker["rows"], time.perf_counter() - start, enabled=getattr(engine, "progress", False))
    return {**marker, "skipped": False}


def needed_columns(job: JobSpec, layout: OutputLayout, n_shards: int, selector: Selector
                   ) -> tuple[list[str], frozenset[str]]:
    """The score columns the stage reads (a clear error names any that no scorer produced), and
    the vector columns among them that only the selector reads."""
    gscorers = global_scorers(job.scorers)
    needed = set(BASE_COLUMNS) | set(selector.required_columns()) | {f.column for f in job.filters}
    for g in gscorers:
        needed |= set(g.required_columns())
    produced = {f.name for g in gscorers for f in g.output_schema()}
    schema = storage.read_schema(str(layout.scores(0))) if n_shards else pa.schema([])
    missing = sorted(c for c in needed - produced if c not in schema.names)
    if missing:
        raise JobError(f"selector/filters need columns {missing} that no scorer produced; "
                       f"score columns: {sorted(schema.names)}")
    others = set(BASE_COLUMNS) | {f.column for f in job.filters} | {c for g in gscorers for c in g.required_columns()}
    token = selector.token_column()
    heavy = {c for c in set(selector.required_columns()) - others - {token}
             if c in schema.names and pa.types.is_list(schema.field(c).type)
             or c in schema.names and pa.types.is_fixed_size_list(schema.field(c).type)}
    return [c for c in schema.names if c in needed], frozenset(heavy)


def route(engine: Engine, plan: SelectPlan, folder: str, keys: list[int], prefix: str = "b") -> frozenset[int]:
    """Send the rows of the group files `folder/<prefix>-<key>` back to their shards
    (`folder/s-<shard>`, sorted by row); returns the shards that got rows."""
    if not keys:
        return frozenset()
    files = [plan.scratch_path(folder, f"{prefix}-{k:06d}.parquet") for k in sorted(keys)]
    res = engine.shuffle(f"{folder}-route", T.route_emit, files, partial(T.route_reduce, plan.scratch_path(folder)),
                         plan.scratch_path("spill"))
    return frozenset(int(k) for k in res)


def fit_global(engine: Engine, plan: SelectPlan, items: list[int], gi: int, total: int) -> dict[str, Any]:
    """Fit global scorer `gi` on its bounded sample: rows whose id hash is below the share, at
    most `cap` of them (the smallest hashes), in shard and row order."""
    g = global_scorers(plan.job.scorers)[gi]
    fraction, cap = g.sample_size()
    threshold = min(fraction, 1.5 * cap / max(total, 1) + 1e-9) if cap else fraction
    counts = engine.parallel_map(T.task(T.sample_task, plan, gi, threshold, label=f"select: {g.prefix} sample"), items)
    if cap and sum(counts) < cap and threshold < fraction:  # too few below the pre-thinned share: take all
        threshold = fraction
        counts = engine.parallel_map(T.task(T.sample_task, plan, gi, threshold, label=f"select: {g.prefix} sample"),
                                     items)
    parts = [storage.read_table(plan.scratch_path(f"sample-{g.prefix}", f"part-{i:05d}.parquet")) for i in items]
    sample = pa.concat_tables(parts) if parts else pa.table({})
    if cap and sample.num_rows > cap:
        u = sample.column("_u").to_numpy()
        sample = sample.filter(pa.array(u <= np.sort(u)[cap - 1]))
    if "_u" in sample.column_names:
        sample = sample.drop_columns(["_u"])
    return g.fit(sample, plan.job.seed)


def find_cut(engine: Engine, plan: SelectPlan, items: list[int], target: float, ranker: str, rows: int
             ) -> tuple[tuple | None, list[bool]]:
    """The key of the last row within `target` (see `cut.py`), and the keys' descending flags."""
    lo = hi = None
    collect = rows <= CUT_COLLECT
    while not collect:
        res = engine.parallel_map(T.task(T.cut_task, plan, lo, hi, CUT_POINTS, False, ranker, label="select: cut"),
                                  items)
        if sum(r["count"] for r in res) <= CUT_COLLECT:
            break
        nlo, nhi = cuts.bracket(res, target)
        nlo, nhi = nlo if nlo is not None else lo, nhi if nhi is not None else hi
        if (nlo, nhi) == (lo, hi):
            break
        lo, hi = nlo, nhi
    res = engine.parallel_map(T.task(T.cut_task, plan, lo, hi, CUT_POINTS, True, ranker, label="select: cut"), items)
    return cuts.finish(res, target, lo), next((r["desc"] for r in res if r.get("desc") is not None), [])


def decode(key: tuple | None, desc: list[bool]) -> list[float] | None:
    """A cut key's original values (one per rank key; NaN where the key was NaN)."""
    if key is None:
        return None
    out = []
    for j, d in enumerate(desc):
        flag, value = key[2 * j], key[2 * j + 1]
        out.append(float("nan") if flag else (-value if d else value))
    return out


def rank_decision(engine: Engine, plan: SelectPlan, items: list[int], selector: Selector, eligible: int
                  ) -> tuple[Any, dict[str, Any]]:
    """Fit (on the selector's small sample, if it learns), score each shard once if fitted, and
    find the exact cut; returns (a function of the selected count giving the stats, decision)."""
    fit_stats: dict[str, Any] = {}
    if type(selector).fit is not Selector.fit:
        engine.parallel_map(T.task(T.fit_task, plan, label="select: fit sample"), items)
        parts = [storage.read_table(plan.scratch_path("fit", f"part-{i:05d}.parquet")) for i in items]
        rows = pa.concat_tables(parts, promote_options="default") if parts else pa.table({})
        state, fit_stats = selector.fit(rows, replace(plan.ctx, parallel_map=engine.parallel_map))
        plan.selector_state = state
        engine.parallel_map(T.task(T.rank_task, plan, label="select: rank"), items)
        plan.selector_state = {**state, "materialised": True}
    target = budget_target(selector.params, plan.ctx)  # type: ignore[arg-type]
    key, desc = find_cut(engine, plan, items, target, "selector", eligible)
    cut = decode(key, desc)
    return (lambda selected: selector.rank_stats(fit_stats, cut, selected)), {"cut": key}


def block_decision(engine: Engine, plan: SelectPlan, items: list[int], selector: Selector, eligible: int
                   ) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """Shuffle the eligible rows into blocks, solve each in its own task, route the decisions
    back to the shards; also the quality top-k cut the statistics compare against."""
    p = selector.params
    blocks = block_count(eligible, p.block_size)  # type: ignore[attr-defined]
    sizes = engine.parallel_map(T.task(T.block_sizes_task, plan, blocks, label="select: block sizes"), items)
    docs = np.sum([s["docs"] for s in sizes], axis=0) if sizes else np.zeros(blocks)
    target = budget_target(p, plan.ctx)  # type: ignore[arg-type]
    if isinstance(p, BudgetParams) and p.budget_unit == "tokens":
        budgets = allocate(target, np.sum([s["tokens"] for s in sizes], axis=0), integer=False)
    else:
        budgets = allocate(target, docs)
    res = engine.shuffle("blocks", partial(T.block_emit, plan, blocks), items,
                         partial(T.block_reduce, plan, [float(b) for b in budgets]), plan.scratch_path("spill"))
    routed = route(engine, plan, "blocks", sorted(res))  # decisions: blocks/b-<block> -> blocks/s-<shard>
    k = sum(r["selected"] for r in res.values())
    qcut, _ = find_cut(engine, plan, items, float(k), "quality", eligible)
    return {"routed": sorted(routed), "quality_cut": qcut}, {int(b): r for b, r in res.items()}


def block_stats(plan: SelectPlan, selector: Selector, summary: list[dict[str, Any]], finals: list[dict[str, Any]],
                blocks: dict[int, dict[str, Any]], seconds: float) -> dict[str, Any]:
    """The manifest's statistics of a block selection, from the tasks' sums."""
    p = selector.params
    order = sorted(blocks)
    stats = stats_from_sums(_add([s["pool"] for s in summary]), _add([f["subset"] for f in finals]),
                            _add([f["quality_topk"] for f in finals]),
                            np.array([blocks[b]["size"] for b in order], dtype=np.float64),
                            [blocks[b]["objective"] for b in order], [blocks[b]["objective_quality_topk"] for b in order],
                            [blocks[b]["reward_curve"] for b in order if blocks[b]["reward_curve"]])
    stats.update(blocks=len(order), seconds=seconds, block_seconds=[blocks[b]["seconds"] for b in order],
                 block_peak_rss_mb=max((blocks[b]["peak_rss_mb"] for b in order), default=None),
                 device=str(_device(p)), lam=p.lam, diversity=p.diversity)  # type: ignore[attr-defined]
    if isinstance(p, BudgetParams) and p.budget_unit == "tokens":
        stats["selected_tokens"] = float(sum(f.get("selected_tokens", 0.0) for f in finals))
        stats["token_target"] = float(budget_target(p, plan.ctx))
    return stats


def _device(p: Any) -> Any:
    from thresher.common.device import resolve_device

    return resolve_device(p.device)


def _add(sums: list[dict[str, Any]]) -> dict[str, Any]:
    """Add partial sums (n, q, e, sq) from several tasks."""
    n = sum(s["n"] for s in sums)
    es = [np.asarray(s["e"], dtype=np.float64) for s in sums if s["n"]]
    return {"n": n, "q": float(sum(s["q"] for s in sums)), "e": np.sum(es, axis=0) if es else None,
            "sq": float(sum(s["sq"] for s in sums))}
