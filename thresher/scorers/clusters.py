"""k-means clusters of document embeddings and SemDeDup-style near-duplicate flags (global step).

Fits faiss k-means on a seeded sample (`fit_fraction`, at most `max_fit_rows` rows, chosen by a
hash of the id) of the embedding column on the driver, assigns every document to its nearest
centroid in the map tasks, and within each cluster (one task per cluster) compares documents in `order_by`
order (the document id by default, so every engine agrees): a document's `max_sim` is its
highest cosine similarity to any earlier member of its cluster, and it is a near duplicate at
`eps` when max_sim > 1 - eps (SemDeDup's rule; several eps are computed at once).

Columns (prefix default `clusters`):
- `<p>_id` (int32) cluster number;
- `<p>_distance` (float32): 1 - cosine to the centroid (`spherical`, the default), else the
  L2 distance;
- `<p>_max_sim` (float32): null for the first member of a cluster;
- `<p>_dup_eps<eps>` (bool) per eps, the dot written `_` (eps 0.05 -> `<p>_dup_eps0_05`).
Rows with a null embedding get nulls everywhere. Uses faiss-gpu when it is installed and a GPU
is visible (`use_gpu: auto`).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator

from thresher.scorers.base import GlobalScorer, ScorerParams
from thresher.common.arrays import vectors_to_numpy


class ClusterParams(ScorerParams):
    embedding_column: str = Field("embedding_vector", description="fixed-size list<float> column of the score table")
    k: int = Field(100, gt=0, description="clusters (lowered to the number of documents when fewer)")
    fit_fraction: float = Field(1.0, gt=0, le=1, description="share of documents the k-means is fitted on")
    max_fit_rows: int = Field(100_000, ge=0, description="most documents the k-means is fitted on (a seeded "
                                                          "sample by id; the driver holds them); 0: no cap")
    niter: int = Field(20, gt=0, description="k-means iterations")
    spherical: bool = Field(True,
                            description="spherical k-means (cosine); distance = 1 - cosine to the centroid, else L2")
    max_points_per_centroid: int = Field(256, gt=0, description="faiss subsamples to k x this when fitting")
    eps: list[float] = Field(
        default_factory=lambda: [0.01, 0.05, 0.1], description="near-duplicate thresholds: a document is a duplicate "
                                                               "at eps when max_sim > 1 - eps")
    order_by: str = Field("id", description="column that orders members within a cluster")
    use_gpu: bool | Literal["auto"] = Field("auto",
                                            description="faiss on GPU: auto (when one is visible) | true | false")
    block_rows: int = Field(2048, gt=0, description="rows per similarity block inside a cluster")

    @field_validator("eps")
    @classmethod
    def _check_eps(cls, value: list[float]) -> list[float]:
        if any(not 0 < e < 2 for e in value):
            raise ValueError("every eps must be in (0, 2)")
        if len(set(value)) != len(value):
            raise ValueError("eps values must be distinct")
        return value


def eps_suffix(eps: float) -> str:
    """Column suffix for one eps: 0.05 -> `dup_eps0_05`."""
    return "dup_eps" + f"{eps:g}".replace(".", "_").replace("-", "m")


def _use_gpu(setting: bool | str) -> bool:
    import faiss

    available = hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0
    if setting == "auto":
        return available
    if setting and not available:
        raise RuntimeError("use_gpu is on but faiss sees no GPU (install faiss-gpu and check CUDA)")
    return bool(setting)


def kmeans_train(sample: np.ndarray, k: int, *, seed: int, niter: int = 20, spherical: bool = True,
                 max_points_per_centroid: int = 256, use_gpu: bool | str = "auto") -> np.ndarray:
    """Centroids of k-means fitted on `sample` (k lowered to the sample's size)."""
    import faiss

    n, d = sample.shape
    k = max(1, min(k, n))
    km = faiss.Kmeans(d, k, niter=niter, seed=int(seed) % (2**31 - 1), spherical=spherical, verbose=False,
                      gpu=_use_gpu(use_gpu), max_points_per_centroid=max_points_per_centroid,
                      min_points_per_centroid=1)
    km.train(np.ascontiguousarray(sample, dtype=np.float32))
    return np.asarray(km.centroids, dtype=np.float32)


def kmeans_assign(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of every row and its squared L2 distance (exact search)."""
    import faiss

    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    dist, assign = index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return assign[:, 0].astype(np.int64), dist[:, 0]


def max_sim_to_earlier(x: np.ndarray, block_rows: int = 2048) -> np.ndarray:
    """For unit rows in order, the max cosine of each row to any earlier row (-inf for the first)."""
    m = len(x)
    out = np.full(m, -np.inf, dtype=np.float32)
    for lo in range(0, m, block_rows):
        hi = min(m, lo + block_rows)
        if hi <= 1:
            continue
        sims = x[lo:hi] @ x[:hi].T  # (rows, earlier + self)
        cols = np.arange(hi)[None, :]
        rows = np.arange(lo, hi)[:, None]
        sims[cols >= rows] = -np.inf
        out[lo:hi] = sims.max(axis=1)
    return out


class ClusterScorer(GlobalScorer):
    """Cluster id, distance to centroid and near-duplicate flags (see the module docstring)."""

    name: ClassVar[str] = "clusters"
    Params: ClassVar[type[ClusterParams]] = ClusterParams
    requires: ClassVar[tuple[str, ...]] = ("faiss",)

    def required_columns(self) -> list[str]:
        cols = [self.params.embedding_column]
        if self.params.order_by not in cols:
            cols.append(self.params.order_by)
        return cols

    def output_schema(self) -> pa.Schema:
        fields = [pa.field(self.col("id"), pa.int32()), pa.field(self.col("distance"), pa.float32()),
                  pa.field(self.col("max_sim"), pa.float32())]
        fields += [pa.field(self.col(eps_suffix(e)), pa.bool_()) for e in self.params.eps]
        return pa.schema(fields)

    group_column = None  # set per instance: the cluster id column

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group_column = self.col("id")

    def sample_size(self) -> tuple[float, int]:
        return self.params.fit_fraction, self.params.max_fit_rows

    def sample_rows(self, table: pa.Table) -> np.ndarray:
        return np.asarray(pc.is_valid(self._column(table)).to_numpy(zero_copy_only=False), dtype=bool)

    def _column(self, table: pa.Table) -> pa.ChunkedArray:
        missing = [c for c in self.required_columns() if c not in table.column_names]
        if missing:
            raise ValueError(f"scorer {self.name!r} needs columns {missing}; the score table has {table.column_names}")
        return table.column(self.params.embedding_column)

    def _data(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows with an embedding, their unit vectors, the vectors k-means sees)."""
        x, valid = vectors_to_numpy(self._column(table))
        rows = np.flatnonzero(valid)
        norms = np.linalg.norm(x, axis=1, keepdims=True) if len(rows) else np.ones((0, 1), np.float32)
        unit = (x / np.maximum(norms, 1e-12)).astype(np.float32)
        return rows, unit, unit if self.params.spherical else x.astype(np.float32)

    def fit(self, sample: pa.Table, seed: int) -> dict[str, Any]:
        p = self.params
        rows, _unit, data = self._data(sample)
        if not len(rows):
            return {"centroids": None}
        return {"centroids": kmeans_train(data, p.k, seed=seed, niter=p.niter, spherical=p.spherical,
                                          max_points_per_centroid=p.max_points_per_centroid, use_gpu=p.use_gpu)}

    def transform(self, table: pa.Table, state: dict[str, Any]) -> dict[str, pa.Array]:
        p = self.params
        n = table.num_rows
        rows, unit, data = self._data(table)
        cluster = np.zeros(n, dtype=np.int32)
        distance = np.zeros(n, dtype=np.float32)
        mask = np.ones(n, dtype=bool)
        centroids = state.get("centroids")
        if len(rows) and centroids is not None:
            mask[rows] = False
            assign, d2 = kmeans_assign(data, centroids)
            cluster[rows] = assign
            if p.spherical:
                cent = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
                distance[rows] = np.maximum(0.0, 1.0 - np.einsum("ij,ij->i", unit, cent[assign]))
            else:
                distance[rows] = np.sqrt(np.maximum(d2, 0.0))
        return {self.col("id"): pa.array(cluster, pa.int32(), mask=mask),
                self.col("distance"): pa.array(distance, pa.float32(), mask=mask)}

    def transform_group(self, group: pa.Table, state: dict[str, Any]) -> dict[str, pa.Array]:
        """SemDeDup within one cluster: members compared in `order_by` order (ties: shard, row)."""
        p = self.params
        _rows, unit, _data = self._data(group)
        order = np.asarray(pc.sort_indices(group, sort_keys=[(p.order_by, "ascending")]))  # stable: shard, row
        max_sim = np.empty(group.num_rows, dtype=np.float32)
        max_sim[order] = max_sim_to_earlier(unit[order], p.block_rows)
        has_prev = np.isfinite(max_sim)
        out: dict[str, pa.Array] = {self.col("max_sim"): pa.array(np.where(has_prev, max_sim, 0).astype(np.float32),
                                                                  pa.float32(), mask=~has_prev)}
        for e in p.eps:
            out[self.col(eps_suffix(e))] = pa.array(has_prev & (max_sim > 1.0 - e), pa.bool_())
        return out
