"""The select stage's tasks: module-level functions the engines run on their workers.

Each reads one shard (or one shuffled group) and returns a small summary; anything
per-document goes to a file under the stage's scratch folder. `routed` files carry rows from
group tasks back to the shards they came from (`route_emit`/`route_reduce`).
"""

from __future__ import annotations

import functools
import resource
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from thresher.common.arrays import column_numpy, embedding_matrix
from thresher.common.hashing import hash_group, hash_unit, id_hash
from thresher.io import storage
from thresher.io.readers import read_shard
from thresher.pipelines.selection import cut as cuts
from thresher.pipelines.selection.view import (SelectPlan, ShardView, read_scores, routed_rows, scatter, shard_view,
                                               write_table)
from thresher.pipelines.worker import global_scorers
from thresher.scorers.base import SAMPLE_TAG
from thresher.selectors.base import BudgetParams, key_components
from thresher.selectors.datamask.blocks import block_of, check_normalized, quality_vector, solve_block_task, sums
from thresher.specs import JobError

TAG_IDS = 0x1D5  # the duplicate-id buckets' hash stream


def task(fn: Callable[..., Any], *args: Any, label: str, unit: str = "shard") -> Callable[..., Any]:
    """`fn` with its leading arguments bound, labelled for the engine's progress bar."""
    bound = functools.partial(fn, *args)
    bound.__thresher_progress__ = (label, unit, True)  # a step of the select stage  # type: ignore[attr-defined]
    return bound


def by_key(table: pa.Table, keys: np.ndarray) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(key, that key's rows as one batch) for every key present, rows kept in order."""
    if not table.num_rows:
        return
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    bounds = np.flatnonzero(np.diff(sk)) + 1
    for part in np.split(order, bounds):
        yield int(keys[part[0]]), pa.concat_batches(table.take(pa.array(part)).to_batches())


# -- duplicate ids -------------------------------------------------------------------------


def ids_emit(plan: SelectPlan, buckets: int, i: int) -> Iterator[tuple[int, pa.RecordBatch]]:
    t = read_scores(plan, i, ["id", "_shard", "_row"])
    t = t.set_column(0, "id", t.column("id").cast(pa.string()))
    yield from by_key(t, hash_group(id_hash(t.column("id"), plan.job.seed, TAG_IDS), buckets))


def ids_reduce(plan: SelectPlan, key: int, table: pa.Table) -> dict[str, Any]:
    """Every later occurrence (in shard and row order) of an id in this bucket is a duplicate."""
    t = table.sort_by([("_shard", "ascending"), ("_row", "ascending")])
    dup = pd.Series(t.column("id").to_numpy(zero_copy_only=False)).duplicated(keep="first").to_numpy()
    if dup.any():
        write_table(plan.scratch_path("dupids", f"b-{key:06d}.parquet"), t.filter(pa.array(dup)).select(["_shard", "_row"]))
    return {"dups": int(dup.sum())}


# -- routing rows back to their shards ---------------------------------------------------


def route_emit(path: str) -> Iterator[tuple[int, pa.RecordBatch]]:
    t = storage.read_table(path)
    yield from by_key(t.drop_columns(["_shard"]), t.column("_shard").to_numpy().astype(np.int64))


def route_reduce(folder: str, key: int, table: pa.Table) -> dict[str, Any]:
    write_table(storage.join(folder, f"s-{key:05d}.parquet"), table.sort_by([("_row", "ascending")]))
    return {"rows": table.num_rows}


# -- global scorers ------------------------------------------------------------------------


def sample_task(plan: SelectPlan, g_index: int, threshold: float, i: int) -> int:
    """Rows of shard i for global scorer g's fit: hash of the id below `threshold`."""
    g = global_scorers(plan.job.scorers)[g_index]
    v = shard_view(plan, i, with_globals=False, light=True)
    u = hash_unit(id_hash(v.live.column("id"), plan.job.seed, SAMPLE_TAG))
    take = g.sample_rows(v.live) & (u < threshold)
    cols = [c for c in dict.fromkeys(["id", "_shard", "_row", *g.required_columns()])]
    t = v.live.select(cols).filter(pa.array(take)).append_column("_u", pa.array(u[take]))
    write_table(plan.scratch_path(f"sample-{g.prefix}", f"part-{i:05d}.parquet"), t)
    return int(take.sum())


def group_emit(plan: SelectPlan, g_index: int, i: int) -> Iterator[tuple[int, pa.RecordBatch]]:
    g = global_scorers(plan.job.scorers)[g_index]
    v = shard_view(plan, i, with_globals=False, light=True)
    cols = g.transform(v.live, plan.states[g.prefix])
    keys = cols[g.group_column]
    valid = np.asarray(pc.is_valid(keys).to_numpy(zero_copy_only=False), dtype=bool)
    names = list(dict.fromkeys(["_shard", "_row", *g.required_columns()]))
    t = v.live.select(names).filter(pa.array(valid))
    yield from by_key(t, np.asarray(pc.drop_null(keys).to_numpy(zero_copy_only=False)).astype(np.int64))


def group_reduce(plan: SelectPlan, g_index: int, key: int, table: pa.Table) -> dict[str, Any]:
    g = global_scorers(plan.job.scorers)[g_index]
    t = table.sort_by([("_shard", "ascending"), ("_row", "ascending")])
    cols = g.transform_group(t, plan.states[g.prefix])
    out = pa.table({"_shard": t.column("_shard"), "_row": t.column("_row"), **cols})
    write_table(plan.scratch_path(f"groups-{g.prefix}", f"g-{key:06d}.parquet"), out)
    return {"rows": t.num_rows}


# -- summary -------------------------------------------------------------------------------


def summary_task(plan: SelectPlan, i: int) -> dict[str, Any]:
    """Counts of shard i (rows, duplicate ids, live rows and their tokens, filtered, eligible)
    and, for block selectors, sums over the eligible rows (quality, embeddings)."""
    v = shard_view(plan, i)
    sel = plan.selector()
    token_col = sel.token_column()
    out: dict[str, Any] = {"shard": i, "rows": v.table.num_rows, "duplicate_id": int((v.reason == "duplicate_id").sum()),
                           "live": int(len(v.live_idx)), "filtered": v.filter_counts,
                           "eligible": int(v.eligible.sum()), "live_tokens": 0.0}
    if token_col is not None and token_col in v.live.column_names:
        out["live_tokens"] = float(pc.sum(v.live.column(token_col)).as_py() or 0)
    if sel.kind == "blocks":
        p = sel.params
        el = v.eligible_table
        emb = embedding_matrix(el, p.embedding) if el.num_rows else np.zeros((0, 1), np.float32)
        if p.diversity in ("pws", "fl"):
            check_normalized(emb, p.normalized_tol, p.embedding)
        out["pool"] = sums(quality_vector(el, p), emb)
    return out


# -- rank selectors --------------------------------------------------------------------------


def with_text(plan: SelectPlan, i: int, table: pa.Table) -> pa.Table:
    """`table` (rows of shard i) with the selector's text columns read again from the input."""
    sel = plan.selector()
    cols = [c for c in sel.text_columns() if c not in table.column_names]
    if not cols:
        return table
    if plan.shards is None:
        raise JobError(f"the selector reads input columns {cols}; this select call got no input shards")
    shard = plan.shards[i]
    piece = None
    if plan.input_table is not None and shard.kind == "memory":
        piece = plan.input_table.slice(shard.start, shard.rows)
    rows, pieces = [], {c: [] for c in cols}
    for rb in read_shard(shard, plan.job.input, piece):
        missing = [c for c in cols if c not in rb.good.schema.names]
        if missing:
            hint = (" (instruction data: set input.prompt_column and input.response_column)"
                    if {"prompt", "response"} & set(missing) else "")
            raise JobError(f"the selector reads input columns {missing}, which {shard.name} does not give"
                           f"{hint}; columns: {rb.good.schema.names}")
        rows.append(rb.good.column("_row").to_numpy())
        for c in cols:
            pieces[c].append(rb.good.column(c).cast(pa.string()))
    all_rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    want = table.column("_row").to_numpy()
    pos = np.searchsorted(all_rows, want)
    if len(want) and (pos.max() >= len(all_rows) or not np.array_equal(all_rows[pos], want)):
        raise JobError(f"{shard.name}: input rows no longer line up with the saved scores (input changed since "
                       f"scoring?); re-run with --overwrite")
    for c in cols:
        table = table.append_column(c, pa.chunked_array(pieces[c], pa.string()).take(pa.array(pos)))
    return table


def fit_task(plan: SelectPlan, i: int) -> int:
    """Shard i's rows for a rank selector's fit (e.g. ICon's ICL-scored sample)."""
    sel = plan.selector()
    el = shard_view(plan, i).eligible_table
    mask = sel.fit_rows(el)
    t = with_text(plan, i, el.filter(pa.array(mask)))
    write_table(plan.scratch_path("fit", f"part-{i:05d}.parquet"), t)
    return int(mask.sum())


def _ranking(plan: SelectPlan, i: int, v: ShardView) -> tuple[list[np.ndarray], np.ndarray, np.ndarray,
                                                               np.ndarray, dict[str, pa.Array], list[bool]]:
    """Shard i's eligible rows as (key components, ids, weights, candidates, extra columns,
    the keys' descending flags):
    from the materialised ranking when the selector was fitted, else computed here."""
    sel = plan.selector()
    el = v.eligible_table
    p = sel.params
    weights = (column_numpy(el, p.token_column) if isinstance(p, BudgetParams) and p.budget_unit == "tokens"
               else np.ones(el.num_rows))
    ids = el.column("id").to_numpy(zero_copy_only=False).astype(str)
    if plan.selector_state.get("materialised"):
        t = storage.read_table(plan.scratch_path("rank", f"part-{i:05d}.parquet"))
        ncomp = sum(1 for c in t.column_names if c.startswith("_k"))
        comps = [t.column(f"_k{j}").to_numpy() for j in range(ncomp)]
        cand = t.column("_cand").to_numpy(zero_copy_only=False).astype(bool)
        extra = {c: t.column(c) for c in t.column_names if not c.startswith("_")}
        desc = [d == "1" for d in (t.schema.metadata or {}).get(b"desc", b"").decode()]
        return comps, ids, weights, cand, extra, desc
    r = sel.rank(el, plan.ctx, plan.selector_state)
    cand = np.ones(el.num_rows, bool) if r.candidates is None else np.asarray(r.candidates, bool)
    return key_components(r.keys), ids, weights, cand, dict(r.columns), [d for _, d in r.keys]


def rank_task(plan: SelectPlan, i: int) -> int:
    """Materialise shard i's ranking (selectors with a fitted model: score each row once)."""
    sel = plan.selector()
    v = shard_view(plan, i)
    el = with_text(plan, i, v.eligible_table)
    r = sel.rank(el, plan.ctx, plan.selector_state)
    cols = {f"_k{j}": c for j, c in enumerate(key_components(r.keys))}
    cand = np.ones(el.num_rows, bool) if r.candidates is None else np.asarray(r.candidates, bool)
    desc = "".join("1" if d else "0" for _, d in r.keys)
    write_table(plan.scratch_path("rank", f"part-{i:05d}.parquet"),
                pa.table({"_row": el.column("_row"), **cols, "_cand": cand, **r.columns}, metadata={"desc": desc}))
    return el.num_rows


def cut_task(plan: SelectPlan, lo: Any, hi: Any, points: int, collect: bool, ranker: str, i: int) -> dict[str, Any]:
    """Shard i's part of one round of an exact budget cut (`cut.shard_sketch`)."""
    v = shard_view(plan, i, light=ranker == "quality" or "materialised" in plan.selector_state)
    if ranker == "quality":
        comps, ids, weights, cand = quality_ranking(plan, v)
        desc = [True]
    else:
        comps, ids, weights, cand, _, desc = _ranking(plan, i, v)
    keep = np.flatnonzero(cand)
    out = cuts.shard_sketch([c[keep] for c in comps], ids[keep], weights[keep], _key(lo), _key(hi), points, collect)
    return {**out, "desc": desc}


def quality_ranking(plan: SelectPlan, v: ShardView) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """A block selector's quality order (for the manifest's quality top-k comparison)."""
    el = v.eligible_table
    q = quality_vector(el, plan.selector().params)
    ids = el.column("id").to_numpy(zero_copy_only=False).astype(str)
    return key_components([(q, True)]), ids, np.ones(len(q)), np.ones(len(q), bool)


def _key(k: Any) -> tuple | None:
    return None if k is None else tuple(k)


# -- block selectors ---------------------------------------------------------------------------


def block_sizes_task(plan: SelectPlan, blocks: int, i: int) -> dict[str, Any]:
    """Eligible rows (and their tokens) per block in shard i."""
    el = shard_view(plan, i, light=True).eligible_table
    b = block_of(el.column("id"), blocks, plan.job.seed)
    p = plan.selector().params
    out = {"docs": np.bincount(b, minlength=blocks).tolist()}
    if p.budget_unit == "tokens":
        out["tokens"] = np.bincount(b, weights=column_numpy(el, p.token_column), minlength=blocks).tolist()
    return out


def block_emit(plan: SelectPlan, blocks: int, i: int) -> Iterator[tuple[int, pa.RecordBatch]]:
    sel = plan.selector()
    el = shard_view(plan, i).eligible_table
    cols = list(dict.fromkeys(["id", "_shard", "_row", *sel.required_columns()]))
    t = el.select(cols)
    t = t.set_column(0, "id", t.column("id").cast(pa.string()))
    yield from by_key(t, block_of(t.column("id"), blocks, plan.job.seed))


def block_reduce(plan: SelectPlan, budgets: list[float], key: int, table: pa.Table) -> dict[str, Any]:
    """Solve one block (its rows in id order, as the in-memory selector orders them) and write
    its decisions; returns the block's statistics."""
    sel = plan.selector()
    p = sel.params
    order = np.asarray(pc.sort_indices(table, sort_keys=[("id", "ascending")]))  # rows in id order, no copy
    emb = embedding_matrix(table, p.embedding, order)  # the one writable copy the solver works on
    q = quality_vector(table, p)[order]
    tokens = column_numpy(table, p.token_column)[order] if p.budget_unit == "tokens" else None
    shard = table.column("_shard").to_numpy()[order]
    row = table.column("_row").to_numpy()[order]
    local, res = solve_block_task((sel, q, emb, tokens, float(budgets[key]), plan.job.seed, key))
    logit = np.asarray(res.logits, dtype=np.float64)
    write_table(plan.scratch_path("blocks", f"b-{key:06d}.parquet"), pa.table({
        "_shard": shard, "_row": row, "selected": pa.array(np.asarray(local, bool)),
        "logit": pa.array(logit, pa.float64(), mask=np.isnan(logit))}))
    return {"size": len(order), "selected": int(np.sum(local)), "objective": _finite(res.objective),
            "objective_quality_topk": _finite(res.stats.get("objective_quality_topk", float("nan"))),
            "reward_curve": [float(x) for x in res.reward_curve], "seconds": float(res.stats.get("seconds", 0.0)),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def _finite(x: float) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


# -- final pass: the per-shard selection file ---------------------------------------------------


def final_task(plan: SelectPlan, decision: dict[str, Any], i: int) -> dict[str, Any]:
    """Decide shard i's rows and write `_selection/part-i` (row, status, reason, global scorer
    and selector columns); returns the shard's counts and sums for the statistics."""
    sel = plan.selector()
    v = shard_view(plan, i)
    n = v.table.num_rows
    el_rows = v.eligible_rows
    el = v.eligible_table
    picked = np.zeros(len(el_rows), dtype=bool)
    columns: dict[str, pa.Array] = {}
    if sel.kind == "rows":
        res = sel.select(el, plan.ctx)
        picked = np.asarray(res.selected, dtype=bool)
        columns = dict(res.columns)
    elif sel.kind == "rank":
        comps, ids, _w, cand, columns, _ = _ranking(plan, i, v)
        picked = cand & cuts.at_or_before(comps, ids, _key(decision["cut"]))
    else:
        name = sel.result_column  # type: ignore[attr-defined]
        logit = pa.nulls(len(el_rows), pa.float64())
        if i in decision["routed"]:
            pos, t = routed_rows(plan.scratch_path("blocks", f"s-{i:05d}.parquet"), el.column("_row").to_numpy())
            flags = np.zeros(len(el_rows), dtype=bool)
            flags[pos] = t.column("selected").to_numpy(zero_copy_only=False)
            picked = flags
            take = np.full(len(el_rows), -1, dtype=np.int64)
            take[pos] = np.arange(len(pos))
            logit = t.column("logit").take(pa.array(take, mask=take < 0))
        columns = {name: logit}
    status, reason = v.status.copy(), v.reason.copy()
    status[el_rows[picked]] = "selected"
    reason[el_rows[~picked]] = "not_chosen"
    out_cols = {name: scatter(arr, el_rows, n) for name, arr in columns.items()}
    schema_cols = {"_row": v.table.column("_row"), "status": pa.array(status.tolist(), pa.string()),
                   "reason": pa.array(reason.tolist(), pa.string()), **v.global_columns, **out_cols}
    write_table(str(plan.layout.selection(i)), pa.table(schema_cols))
    p = sel.params
    out: dict[str, Any] = {"shard": i, "selected": int(picked.sum())}
    if isinstance(p, BudgetParams) and p.token_column in el.column_names:
        out["selected_tokens"] = float(column_numpy(el, p.token_column)[picked].sum())
    if sel.kind == "blocks":
        q = quality_vector(el, p)
        emb = embedding_matrix(el, p.embedding) if el.num_rows else np.zeros((0, 1), np.float32)
        out["subset"] = sums(q[picked], emb[picked])
        qc, qids, _, _ = quality_ranking(plan, v)
        top = cuts.at_or_before(qc, qids, _key(decision.get("quality_cut")))
        out["quality_topk"] = sums(q[top], emb[top])
    return out
