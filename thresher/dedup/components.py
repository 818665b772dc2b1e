"""Clusters of duplicates without one process holding every edge: the table steps that run
inside engine tasks (the stage, `thresher.pipelines.dedup_stage`, wires them to the engine).

A document is a node with four attributes: `node` (int64: shard << 40 | row), `k` (float64:
the keep rule's key, smaller is better: 0 for `lowest_id`, minus the quality column otherwise,
+inf where the quality is missing), `id` (the document id) and `h` (uint64: the first half of
its exact hash). Nodes are ordered by (k, id, node): the smallest node of a cluster is the one
kept, so the keep rule is the graph's order and needs no extra pass.

1. `bucket_edges`: the rows of one shuffle key (exact-hash groups or LSH band buckets); within
   each group every member is linked to the group's smallest member (a star: enough for
   connectivity), or, with verification, to the first smaller member (in order) whose shingle
   set has a Jaccard similarity >= the threshold (at most `MAX_TRIES` tries).
2. `star_round`: one round of the alternating large-star / small-star algorithm (Kiveris et al.,
   "Connected Components in MapReduce and Beyond", SoCC 2014) on the edges of the nodes of one
   key (every edge reaches both of its nodes' keys through the engine's shuffle). Large-star
   links each larger neighbour of a node to the smallest node of its neighbourhood; small-star
   links the node and its smaller neighbours to the smallest of them. Both keep the components,
   and alternating them turns every component into a star around its smallest node in
   O(log^2 n) rounds. Each round also counts the nodes of its INPUT that are not yet in that
   shape (`unsettled`: a node with two smaller neighbours, or with a smaller and a larger one);
   when no key counts any, every component is a star around its minimum, and the driver stops:
   it holds only that count per round.
3. `cluster_rows`: the settled edges of one key (keyed by their centre) as one row per member:
   `dup_cluster` (the kept document's id), `dup_cluster_size`, `dup_keep`, `dup_reason`
   (`exact_duplicate` when the member's exact hash equals the kept one's, else
   `near_duplicate`; null for the kept document).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from thresher.dedup.minhash import jaccard, mix64

MAX_TRIES = 32  # verification: earlier members tried per member of a bucket
SHARD_SHIFT = 40  # node = shard << 40 | row
NODE_FIELDS = [("node", pa.int64()), ("k", pa.float64()), ("id", pa.string()), ("h", pa.uint64())]
EDGE_SCHEMA = pa.schema([(f"{side}_{name}", t) for side in "ab" for name, t in NODE_FIELDS])
CLUSTER_SCHEMA = pa.schema([("_shard", pa.int32()), ("_row", pa.int64()), ("dup_cluster", pa.string()),
                            ("dup_cluster_size", pa.int64()), ("dup_keep", pa.bool_()), ("dup_reason", pa.string())])


def node_of(shard: int, rows: np.ndarray) -> np.ndarray:
    return (np.int64(shard) << np.int64(SHARD_SHIFT)) | np.asarray(rows, dtype=np.int64)


def node_key(nodes: np.ndarray, keys: int) -> np.ndarray:
    """The shuffle key of each node (a hash of the node, so keys are near-equal in size)."""
    return (mix64(np.asarray(nodes, dtype=np.int64).view(np.uint64)) % np.uint64(max(1, keys))).astype(np.int64)


def _sorted_frame(table: pa.Table, extra: list[str]) -> pd.DataFrame:
    cols = ["node", "k", "id", "h", *extra]
    df = pd.DataFrame({c: table.column(c).to_numpy(zero_copy_only=False) for c in cols if c in table.column_names})
    # (the frame's index stays each row's position in `table`)
    return df.sort_values(["g", "g2", "k", "id", "node"] if "g" in df else ["k", "id", "node"], kind="stable")


def _edges(a: pd.DataFrame, b: pd.DataFrame) -> pa.Table:
    cols = {}
    for side, df in (("a", a), ("b", b)):
        for name, t in NODE_FIELDS:
            cols[f"{side}_{name}"] = pa.array(df[name].to_numpy(), t)
    return pa.table(cols, schema=EDGE_SCHEMA)


def bucket_edges(table: pa.Table, threshold: float | None = None) -> pa.Table:
    """Edges (EDGE_SCHEMA; `a` the smaller node) linking the members of each group (`g`, `g2`) of
    one shuffle key. `threshold` set: verify by the Jaccard similarity of the `sh` shingle sets."""
    extra = ["g", "g2"]
    df = _sorted_frame(table, extra)
    df = df.drop_duplicates(["g", "g2", "node"])
    g = df["g"].to_numpy()
    g2 = df["g2"].to_numpy()
    new = np.ones(len(df), dtype=bool)
    new[1:] = (g[1:] != g[:-1]) | (g2[1:] != g2[:-1])
    start = np.flatnonzero(new)
    size = np.diff(np.append(start, len(df)))
    first = np.repeat(start, size)  # each row's group start
    pos = np.arange(len(df))
    if threshold is None:
        member = pos != first
        return _edges(df.iloc[first[member]], df.iloc[pos[member]])
    sets = table.column("sh").combine_chunks()
    flat = sets.flatten().to_numpy(zero_copy_only=False)
    offs = np.asarray(sets.offsets.to_numpy(), dtype=np.int64) - int(sets.offsets[0].as_py())
    orig = df.index.to_numpy()  # each sorted row's row in `table`
    a_pos, b_pos = [], []
    for s, n in zip(start[size > 1], size[size > 1]):  # groups of two or more (few): one Python step per pair
        for j in range(s + 1, s + n):
            bj = flat[offs[orig[j]]:offs[orig[j] + 1]]
            for i in range(s, min(j, s + MAX_TRIES)):
                if jaccard(flat[offs[orig[i]]:offs[orig[i] + 1]], bj) >= threshold:
                    a_pos.append(i)
                    b_pos.append(j)
                    break
    return _edges(df.iloc[a_pos], df.iloc[b_pos])


def both_ways(edges: pa.Table) -> pa.Table:
    """Every edge as (node = a, neighbour = b) and (node = b, neighbour = a)."""
    swapped = edges.rename_columns([f"b_{c}" for c, _ in NODE_FIELDS] + [f"a_{c}" for c, _ in NODE_FIELDS])
    return pa.concat_tables([edges, swapped.select(EDGE_SCHEMA.names)])


def star_round(messages: pa.Table, large: bool) -> tuple[pa.Table, int]:
    """One large-star (`large`) or small-star round over the messages (node = `a_*`,
    neighbour = `b_*`) of one key: (the new edges, the unsettled nodes of the input)."""
    frames = [pd.DataFrame({name: messages.column(f"{side}_{name}").to_numpy(zero_copy_only=False)
                            for name, _ in NODE_FIELDS}) for side in "ab"]
    nodes = pd.concat(frames).drop_duplicates("node").sort_values(["k", "id", "node"], kind="stable")
    index = pd.Index(nodes["node"].to_numpy())
    ra = index.get_indexer(frames[0]["node"].to_numpy())
    rb = index.get_indexer(frames[1]["node"].to_numpy())
    keep = ra != rb
    code = np.sort(ra[keep].astype(np.int64) * len(index) + rb[keep])
    code = code[np.r_[True, code[1:] != code[:-1]]] if len(code) else code  # distinct pairs, by a then b
    a, b = code // len(index), code % len(index)
    if not len(a):
        return pa.table({n: pa.array([], t) for n, t in zip(EDGE_SCHEMA.names, EDGE_SCHEMA.types)}), 0
    bounds = np.flatnonzero(np.r_[True, a[1:] != a[:-1]])
    smaller = np.add.reduceat((b < a).astype(np.int64), bounds)
    larger = np.add.reduceat((b > a).astype(np.int64), bounds)
    unsettled = int(((smaller >= 2) | ((smaller >= 1) & (larger >= 1))).sum())
    group_min = np.minimum(np.minimum.reduceat(b, bounds), a[bounds])  # min of the neighbourhood and the node
    m = np.repeat(group_min, np.diff(np.append(bounds, len(a))))
    if large:  # every larger neighbour -> the neighbourhood's minimum
        sel = b > a
        src, dst = b[sel], m[sel]
    else:  # the node and its smaller neighbours -> the smallest of them
        sel = b < a
        src = np.concatenate([b[sel], a[bounds][smaller > 0]])
        dst = np.concatenate([m[sel], group_min[smaller > 0]])
        keep = src != dst
        src, dst = src[keep], dst[keep]
    lo, hi = np.minimum(src, dst), np.maximum(src, dst)
    return _edges(nodes.iloc[lo], nodes.iloc[hi]), unsettled


def cluster_rows(edges: pa.Table) -> pa.Table:
    """Settled star edges (`a` = a centre, `b` = one of its members) of one key as one row per
    member and centre (CLUSTER_SCHEMA)."""
    df = pd.DataFrame({c: edges.column(c).to_numpy(zero_copy_only=False) for c in edges.column_names})
    df = df.drop_duplicates(["a_node", "b_node"]).sort_values(["a_node", "b_node"], kind="stable")
    size = df.groupby("a_node", sort=True)["b_node"].transform("size").to_numpy() + 1
    centres = df.drop_duplicates("a_node")
    csize = size[~df.duplicated("a_node").to_numpy()]
    node = np.concatenate([centres["a_node"].to_numpy(), df["b_node"].to_numpy()]).astype(np.int64)
    reason = np.where(df["b_h"].to_numpy() == df["a_h"].to_numpy(), "exact_duplicate", "near_duplicate")
    return pa.table({
        "_shard": pa.array((node >> SHARD_SHIFT).astype(np.int32)),
        "_row": pa.array(node & ((1 << SHARD_SHIFT) - 1)),
        "dup_cluster": pa.array(np.concatenate([centres["a_id"].to_numpy(), df["a_id"].to_numpy()]), pa.string()),
        "dup_cluster_size": pa.array(np.concatenate([csize, size]).astype(np.int64)),
        "dup_keep": pa.array(np.r_[np.ones(len(centres), bool), np.zeros(len(df), bool)]),
        "dup_reason": pa.array([None] * len(centres) + reason.tolist(), pa.string()),
    }, schema=CLUSTER_SCHEMA)
