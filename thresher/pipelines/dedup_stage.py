"""The dedup stage: exact and MinHash-LSH near-duplicates, after scoring and before the select
stage, with the engine API only (map passes and `engine.shuffle`); the driver holds counts.

1. signatures (a map pass over the input shards, resumable per shard: a marker each): the text
   of every row is normalised (`thresher.dedup.exact.normalize`), hashed (128 bits), shingled
   and MinHashed per read batch (`thresher.dedup.minhash`); one scratch file per shard holds
   (node, keep key, id, exact hash, band keys, shingle set when verifying);
   Duplicate ids: a shuffle of (node, id) keyed by a hash of the id finds every later
   occurrence (in shard and row order) of an id, the select stage's rule; those rows are
   routed back to their shards (`work/dupids/s-<shard>`) and left out of every later step:
   the select stage rejects them as `duplicate_id`, so one of them must never be a cluster's
   kept document (its cluster would keep no row) nor link documents into a cluster;
2. candidate edges: a shuffle keyed by the exact hash and one keyed by band key (both a hash,
   so keys are near-equal); each key's task links the members of each group
   (`components.bucket_edges`: a star on the smallest member, or verified pairs). With
   verification every band row carries its document's shingle set, so the band shuffle gets a
   key per `VALUES_PER_KEY` shingle values (counted by the signature tasks) and the emit tasks
   send the bands in chunks of about as many values: a task's memory does not grow with the
   corpus (before, 1M rows per key let a 10k-document corpus put 250k sets in one task);
3. connected components: rounds of large-star / small-star (`components.star_round`), each an
   engine shuffle of the edges keyed by node, until no key reports an unsettled node (the
   driver holds one count per key and round);
4. clusters: the settled edges shuffled by their centre (the kept document: the smallest node in
   the keep order), one row per member (`components.cluster_rows`), routed back to their shards
   as `_thresher/dedup/result/s-<shard>.parquet`, which the select stage's `shard_view` applies:
   removed rows become `rejected` with reason `exact_duplicate` / `near_duplicate`.
Scratch files (`_thresher/dedup/work`, `sig`) are removed when the stage is done; its marker
(`_thresher/done/dedup.json`) records the dedup hash, the input fingerprints and the counts.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import pandas as pd
import pyarrow.compute as pc

from thresher.common.atomic import write_json_atomic
from thresher.common.hashing import hash_group, id_hash
from thresher.config import JobSpec
from thresher.dedup import components as C
from thresher.dedup.exact import exact_hash, normalize
from thresher.dedup.minhash import band_keys, batch_signatures
from thresher.io import storage
from thresher.io.output import OutputLayout
from thresher.io.readers import InputShard, read_shard
from thresher.pipelines.engine import Engine
from thresher.pipelines.selection import tasks as T
from thresher.pipelines.selection.view import dedup_folder, write_table
from thresher.specs import JobError

ROWS_PER_KEY = 1_000_000  # rows per shuffle key (a reduce task's memory)
# with `verify`, each band row carries its document's shingle set: the band shuffle gets enough keys
# that one key holds about this many shingle values (uint32; a reduce task's memory stays bounded
# as the corpus grows), and a band-emit batch holds about as many (bands are emitted in chunks)
VALUES_PER_KEY = 8_000_000
MAX_ROUNDS = 200  # large-star / small-star rounds (O(log^2 n) are needed)


@dataclass
class DedupPlan:
    """What every dedup task gets (small, picklable)."""

    job: JobSpec
    out_root: str
    shards: list[InputShard]
    input_table: pa.Table | None
    bands: int
    rows: int
    dup_shards: frozenset[int] = frozenset()  # shards with rows whose id repeats an earlier row's

    def path(self, *parts: str) -> str:
        return storage.join(dedup_folder(self.out_root), *parts)

    def work(self, *parts: str) -> str:
        return self.path("work", *parts)

    def sig(self, i: int) -> str:
        return self.path("sig", f"part-{i:05d}.parquet")


def inputs_hash(shards: list[InputShard]) -> str:
    return hashlib.sha256(json.dumps([s.fingerprint for s in shards]).encode()).hexdigest()[:16]


def dedup(job: JobSpec, layout: OutputLayout, shards: list[InputShard], engine: Engine,
          input_table: pa.Table | None = None, fresh: bool = False) -> dict[str, Any] | None:
    """Run the dedup stage (None without a `dedup:` section); see the module docstring.
    `fresh` (--overwrite): forget the stage's markers and files first."""
    spec = job.dedup
    if spec is None:
        return None
    if fresh:
        forget(layout, len(shards))
    ident = {"dedup_hash": job.dedup_hash(), "inputs_hash": inputs_hash(shards)}
    done = layout.read_marker("dedup")
    if done is not None and all(done.get(k) == v for k, v in ident.items()):
        return {**done, "skipped": True}
    start = time.perf_counter()
    bands, rows = spec.minhash.band_rows() if spec.minhash is not None else (0, 0)
    plan = DedupPlan(job, str(layout.root), shards, input_table, bands, rows)
    storage.remove_tree(plan.work())
    storage.remove_tree(plan.path("result"))
    items = list(range(len(shards)))
    maps = engine.parallel_map(T.task(signature_task, plan, label="dedup: signatures"), items)
    total = sum(m["rows"] for m in maps)
    spill = plan.work("spill")
    # rows whose id repeats an earlier row's (the select stage rejects them) take no part
    res = engine.shuffle("dedup-ids", partial(ids_emit, plan, max(1, math.ceil(total / ROWS_PER_KEY))), items,
                         partial(ids_reduce, plan), spill)
    duplicate_ids = sum(r["dups"] for r in res.values())
    if duplicate_ids:
        files = [plan.work("dupids", f"b-{k:06d}.parquet") for k in sorted(res) if res[k]["dups"]]
        plan.dup_shards = frozenset(int(k) for k in engine.shuffle(
            "dedup-ids-route", T.route_emit, files, partial(T.route_reduce, plan.work("dupids")), spill))
    steps = {"signatures": time.perf_counter() - start}
    edge_files: list[str] = []
    candidates = 0
    if spec.exact:
        keys = max(1, math.ceil(total / ROWS_PER_KEY))
        res = engine.shuffle("dedup-exact", partial(exact_emit, plan, keys), items,
                             partial(edges_reduce, plan, "x", None), spill)
        edge_files += [plan.work("edges", f"x-{k:06d}.parquet") for k in sorted(res) if res[k]["edges"]]
        candidates += sum(r["edges"] for r in res.values())
    if spec.minhash is not None:
        keys = max(1, math.ceil(total * bands / ROWS_PER_KEY))
        if spec.minhash.verify:
            values = sum(shingle_values(plan, i, m) for i, m in enumerate(maps))
            keys = max(keys, math.ceil(values * bands / VALUES_PER_KEY))
        verify = spec.minhash.threshold if spec.minhash.verify else None
        res = engine.shuffle("dedup-bands", partial(band_emit, plan, keys), items,
                             partial(edges_reduce, plan, "b", verify), spill)
        edge_files += [plan.work("edges", f"b-{k:06d}.parquet") for k in sorted(res) if res[k]["edges"]]
        candidates += sum(r["edges"] for r in res.values())

    steps["candidates"] = time.perf_counter() - start - sum(steps.values())
    files, rounds, large = edge_files, 0, True
    node_keys = max(1, math.ceil(2 * candidates / ROWS_PER_KEY))
    while files:
        rounds += 1
        if rounds > MAX_ROUNDS:
            raise JobError(f"dedup: connected components did not settle in {MAX_ROUNDS} rounds; please report this")
        folder = f"cc-{rounds:03d}"
        res = engine.shuffle(f"dedup-{folder}", partial(round_emit, node_keys), files,
                             partial(round_reduce, plan, folder, large), spill)
        if sum(r["unsettled"] for r in res.values()) == 0:
            break  # the input of this round is settled (and equals its output)
        files = [plan.work(folder, f"b-{k:06d}.parquet") for k in sorted(res) if res[k]["edges"]]
        large = not large

    steps["components"] = time.perf_counter() - start - sum(steps.values())
    routed: list[int] = []
    removed = {"exact_duplicate": 0, "near_duplicate": 0}
    clusters = 0
    if files:
        res = engine.shuffle("dedup-clusters", partial(cluster_emit, node_keys), files,
                             partial(cluster_reduce, plan), spill)
        for r in res.values():
            clusters += r["clusters"]
            for reason in removed:
                removed[reason] += r[reason]
        cfiles = [plan.work("clusters", f"c-{k:06d}.parquet") for k in sorted(res)]
        routed = sorted(int(k) for k in engine.shuffle("dedup-route", T.route_emit, cfiles,
                                                         partial(T.route_reduce, plan.path("result")), spill))
    steps["clusters"] = time.perf_counter() - start - sum(steps.values())
    storage.remove_tree(plan.work())
    storage.remove_tree(plan.path("sig"))
    marker = {**ident, "rows": total, "duplicate_ids": duplicate_ids, "exact": spec.exact, "bands": bands, "rows_per_band": rows,
              "candidate_edges": candidates, "rounds": rounds, "clusters": clusters, "removed": removed,
              "routed": routed, "resumed_shards": sum(bool(m.get("skipped")) for m in maps),
              "seconds": round(time.perf_counter() - start, 4),
              "step_seconds": {k: round(v, 4) for k, v in steps.items()}}
    write_json_atomic(marker, layout.marker("dedup"))
    return {**marker, "skipped": False}


def forget(layout: OutputLayout, n_shards: int) -> None:
    """Remove the stage's markers (the stage's, then each shard's) and its folder."""
    for path in [layout.marker("dedup")] + [layout.marker("dedup-map", i) for i in range(n_shards)]:
        if storage.exists(path):
            storage.remove_file(path)
    storage.remove_tree(dedup_folder(str(layout.root)))


# -- 1. signatures ------------------------------------------------------------------------------


def signature_task(plan: DedupPlan, i: int) -> dict[str, Any]:
    """Shard i's signature file (node, keep key, id, exact hash, band keys, shingle sets)."""
    job, spec = plan.job, plan.job.dedup
    assert spec is not None
    layout = OutputLayout(plan.out_root)
    shard = plan.shards[i]
    ident = {"dedup_hash": job.dedup_hash(), "fingerprint": shard.fingerprint}
    done = layout.read_marker("dedup-map", i)
    if done is not None and all(done.get(k) == v for k, v in ident.items()) and storage.exists(plan.sig(i)):
        return {**done, "skipped": True}
    keep_col = spec.keep.column if not isinstance(spec.keep, str) else None
    if keep_col is not None:
        names = storage.read_schema(str(layout.scores(i))).names
        if keep_col not in names:
            raise JobError(f"dedup.keep.column: {keep_col!r} is not a score column; score columns: "
                           f"{sorted(n for n in names if not n.startswith('_'))}")
    scores = storage.read_table(str(layout.scores(i)), columns=["id", "_row"] + ([keep_col] if keep_col else []))
    piece = plan.input_table.slice(shard.start, shard.rows) if plan.input_table is not None and shard.kind == "memory" \
        else None
    parts: list[pa.Table] = []
    for rb in read_shard(shard, job.input, piece):
        if not rb.good.num_rows:
            continue
        text = normalize(rb.good.column("text"))
        eh = exact_hash(text, normalized=True)
        cols: dict[str, Any] = {"_row": rb.good.column("_row"), "h": pa.array(eh[:, 0]), "h1": pa.array(eh[:, 1])}
        if spec.minhash is not None:
            m = spec.minhash
            sig, sh, off = batch_signatures(text, m.shingle, m.n, m.num_perm)
            bk = band_keys(sig, plan.bands, plan.rows)
            nonempty = np.diff(off) > 0
            cols["bands"] = pa.FixedSizeListArray.from_arrays(pa.array(bk.reshape(-1)), plan.bands)
            cols["banded"] = pa.array(nonempty)
            if m.verify:
                cols["sh"] = pa.ListArray.from_arrays(pa.array(off.astype(np.int32)), pa.array(sh))
        parts.append(pa.table(cols))
    got = pa.concat_tables(parts) if parts else None
    rows = scores.column("_row").to_numpy()
    if (got.num_rows if got is not None else 0) != len(rows) or (
            got is not None and not np.array_equal(got.column("_row").to_numpy(), rows)):
        raise JobError(f"{shard.name}: input rows no longer line up with the saved scores (input changed since "
                       f"scoring?); re-run with --overwrite")
    if keep_col is None:
        k = np.zeros(len(rows))
    else:
        q = pc.cast(scores.column(keep_col), pa.float64()).to_numpy(zero_copy_only=False)
        k = np.where(np.isfinite(q), -q, np.inf)
    out = {"node": pa.array(C.node_of(i, rows)), "k": pa.array(k, pa.float64()),
           "id": scores.column("id").cast(pa.string())}
    table = pa.table(out)
    if got is not None:
        for c in got.column_names:
            if c != "_row":
                table = table.append_column(c, got.column(c))
    write_table(plan.sig(i), table)
    marker = {**ident, "rows": table.num_rows}
    if "sh" in table.column_names:
        marker["shingles"] = int(pc.sum(pc.list_value_length(table.column("sh"))).as_py() or 0)
    write_json_atomic(marker, layout.marker("dedup-map", i))
    return {**marker, "skipped": False}


def shingle_values(plan: DedupPlan, i: int, result: dict[str, Any]) -> int:
    """Shingle values in shard i's signature file (its marker's count; read from the file for a
    marker written before the count was kept)."""
    if "shingles" in result:
        return int(result["shingles"])
    t = storage.read_table(plan.sig(i), columns=["sh"])
    return int(pc.sum(pc.list_value_length(t.column("sh"))).as_py() or 0)


# -- duplicate ids ----------------------------------------------------------------------------------


def ids_emit(plan: DedupPlan, keys: int, i: int) -> Iterator[tuple[int, pa.RecordBatch]]:
    """Shard i's (node, id), keyed by a hash of the id (the select stage's hash stream)."""
    t = storage.read_table(plan.sig(i), columns=["node", "id"])
    yield from T.by_key(t, hash_group(id_hash(t.column("id"), plan.job.seed, T.TAG_IDS), keys))


def ids_reduce(plan: DedupPlan, key: int, table: pa.Table) -> dict[str, Any]:
    """Every later occurrence (in shard and row order: node order) of an id of this key, as
    (_shard, _row) rows to route back to the shards."""
    t = table.sort_by([("node", "ascending")])
    dup = pd.Series(t.column("id").to_numpy(zero_copy_only=False)).duplicated(keep="first").to_numpy()
    if dup.any():
        node = t.column("node").to_numpy()[dup]
        write_table(plan.work("dupids", f"b-{key:06d}.parquet"),
                    pa.table({"_shard": pa.array((node >> C.SHARD_SHIFT).astype(np.int32)),
                              "_row": pa.array(node & ((1 << C.SHARD_SHIFT) - 1))}))
    return {"dups": int(dup.sum())}


def read_live(plan: DedupPlan, i: int, columns: list[str]) -> pa.Table:
    """Shard i's signature rows without the rows whose id repeats an earlier row's."""
    t = storage.read_table(plan.sig(i), columns=columns)
    if i not in plan.dup_shards:
        return t
    rows = storage.read_table(plan.work("dupids", f"s-{i:05d}.parquet"), columns=["_row"]).column("_row").to_numpy()
    return t.filter(pa.array(~np.isin(t.column("node").to_numpy(), C.node_of(i, rows))))


# -- 2. candidate edges --------------------------------------------------------------------------

_NODE = ["node", "k", "id", "h"]


def exact_emit(plan: DedupPlan, keys: int, i: int) -> Iterator[tuple[int, pa.RecordBatch]]:
    t = read_live(plan, i, [*_NODE, "h1"])
    if not t.num_rows:
        return
    t = t.append_column("g", t.column("h")).append_column("g2", t.column("h1")).drop_columns(["h1"])
    yield from T.by_key(t, (t.column("h").to_numpy() % np.uint64(keys)).astype(np.int64))


def band_emit(plan: DedupPlan, keys: int, i: int) -> Iterator[tuple[int, pa.RecordBatch]]:
    """Shard i's band rows keyed by band key: bands in chunks of about VALUES_PER_KEY shingle values
    (with `verify`; one chunk of all bands without), so a task holds one chunk's rows."""
    verify = plan.job.dedup.minhash.verify  # type: ignore[union-attr]
    t = read_live(plan, i, [*_NODE, "bands", "banded", *(["sh"] if verify else [])])
    t = t.filter(t.column("banded"))
    if not t.num_rows:
        return
    bk = np.asarray(t.column("bands").combine_chunks().values.to_numpy()).reshape(t.num_rows, plan.bands)
    base = t.select([*_NODE, *(["sh"] if verify else [])])
    per_band = t.num_rows + (int(pc.sum(pc.list_value_length(t.column("sh"))).as_py() or 0) if verify else 0)
    chunk = max(1, min(plan.bands, VALUES_PER_KEY // max(1, per_band)))
    zero = pa.array(np.zeros(t.num_rows, np.uint64))
    for j0 in range(0, plan.bands, chunk):
        g = bk[:, j0:j0 + chunk].T.reshape(-1)  # band-major: the rows of band j0, then j0 + 1, ...
        part = pa.concat_tables([base] * (len(g) // t.num_rows))
        yield from T.by_key(part.append_column("g", pa.array(g)).append_column("g2", pa.concat_arrays(
            [zero] * (len(g) // t.num_rows))), (g % np.uint64(keys)).astype(np.int64))


def edges_reduce(plan: DedupPlan, prefix: str, threshold: float | None, key: int, table: pa.Table) -> dict[str, Any]:
    e = C.bucket_edges(table, threshold)
    if e.num_rows:
        write_table(plan.work("edges", f"{prefix}-{key:06d}.parquet"), e)
    return {"edges": e.num_rows}


# -- 3. components, 4. clusters --------------------------------------------------------------------


def round_emit(keys: int, path: str) -> Iterator[tuple[int, pa.RecordBatch]]:
    """The edges of a file, both ways, keyed by their node."""
    m = C.both_ways(storage.read_table(path))
    yield from T.by_key(m, C.node_key(m.column("a_node").to_numpy(), keys))


def round_reduce(plan: DedupPlan, folder: str, large: bool, key: int, table: pa.Table) -> dict[str, Any]:
    e, unsettled = C.star_round(table, large)
    if e.num_rows:
        write_table(plan.work(folder, f"b-{key:06d}.parquet"), e)
    return {"edges": e.num_rows, "unsettled": unsettled}


def cluster_emit(keys: int, path: str) -> Iterator[tuple[int, pa.RecordBatch]]:
    """Settled edges keyed by their centre (`a`: every edge is stored with its smaller node first)."""
    e = storage.read_table(path)
    yield from T.by_key(e, C.node_key(e.column("a_node").to_numpy(), keys))


def cluster_reduce(plan: DedupPlan, key: int, table: pa.Table) -> dict[str, Any]:
    rows = C.cluster_rows(table)
    write_table(plan.work("clusters", f"c-{key:06d}.parquet"), rows)
    reasons = rows.column("dup_reason").to_pylist()
    return {"clusters": int(pc.sum(rows.column("dup_keep")).as_py() or 0),
            "exact_duplicate": reasons.count("exact_duplicate"), "near_duplicate": reasons.count("near_duplicate")}
