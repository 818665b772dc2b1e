"""DATAMASK's diversity terms on toys with a known answer (issue 18, part 5; docs/datamask.md).

Each toy is a small pool with an exact geometry: ``spread`` documents with pair-wise cosine rho
(the common component every real embedding space has), plus tight near-duplicate clusters
whose centre has cosine gamma with every spread document (gamma = rho: a *typical* cluster;
gamma < rho: an *atypical* one; gamma < 0: one pointing away from the rest). Every subset of the
budget is enumerated, so the optimum of each objective is known exactly, and thresher's
objective, its DATAMASK optimiser and its greedy baseline are compared with it.

Run as a script to print the tables of docs/datamask.md:
``.venv/bin/python tests/test_datamask_toys.py``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pytest
import torch

from thresher.selectors.datamask import DataMaskParams, block_calibration, objective, prepare_block, solve_block
from thresher.selectors.diversity import facility_location, pairwise_similarity
from thresher.selectors.greedy import greedy_block, quality_topk

SEEDS = (0, 1, 2)
LAMBDAS = (0.1, 0.3, 0.5)  # the paper's recommended range for PWS (SPEC 1.4, 1.6)


# ------------------------------------------------------------------ toys and exact answers


@dataclass
class Toy:
    """A pool with exact geometry: unit rows ``emb``, ``label`` -1 for spread documents and the
    cluster number for near-duplicate copies, ``quality`` per document, budget ``k``."""

    name: str
    emb: np.ndarray
    label: np.ndarray
    quality: np.ndarray
    k: int

    @cached_property
    def subsets(self) -> np.ndarray:
        """Every k-subset of the pool, (C(n, k), k)."""
        return np.array(list(itertools.combinations(range(len(self.emb)), self.k)))

    @cached_property
    def similarity(self) -> np.ndarray:
        """Mean pair-wise cosine of every subset, by the O(k^2) definition (the paper's PWS)."""
        return mean_pairwise_cosine(self.emb, self.subsets)

    @cached_property
    def coverage(self) -> np.ndarray:
        """Facility location of every subset, V = the whole pool."""
        return facility_location_direct(self.emb, self.subsets, self.emb)

    @cached_property
    def mean_quality(self) -> np.ndarray:
        return self.quality[self.subsets].mean(axis=1)

    def copies(self, idx: np.ndarray | list[int]) -> list[int]:
        """How many copies of each cluster ``idx`` holds."""
        lab = self.label[np.asarray(idx)]
        return [int((lab == c).sum()) for c in range(int(self.label.max()) + 1)]

    @cached_property
    def duplicate_free(self) -> np.ndarray:
        """Which subsets hold at most one copy of every cluster."""
        counts = np.stack([(self.label[self.subsets] == c).sum(axis=1) for c in range(int(self.label.max()) + 1)])
        return (counts <= 1).all(axis=0)


def toy_pool(name: str, n_spread: int, rho: float, clusters: list[tuple[int, float]], k: int,
             quality: np.ndarray | None = None, copy_cos: float = 0.99) -> Toy:
    """``n_spread`` documents with pair-wise cosine ``rho``; each cluster (size, gamma) is ``size``
    near-copies (pair-wise cosine ``copy_cos``) of a centre whose cosine with every spread
    document is gamma. Built from orthonormal axes, so every cosine is exact."""
    d = 1 + n_spread + sum(1 + m for m, _ in clusters)
    axes = iter(np.eye(d)[1:])
    u = np.eye(d)[0]  # the common direction
    rows = [math.sqrt(rho) * u + math.sqrt(1 - rho) * next(axes) for _ in range(n_spread)]
    label = [-1] * n_spread
    jitter = math.sqrt(1 / copy_cos - 1)
    for c, (m, gamma) in enumerate(clusters):
        if gamma * gamma > rho:
            raise ValueError("a cluster's cosine with the spread documents must satisfy gamma^2 <= rho")
        centre = gamma / math.sqrt(rho) * u + math.sqrt(1 - gamma * gamma / rho) * next(axes)
        for _ in range(m):
            v = centre + jitter * next(axes)
            rows.append(v / np.linalg.norm(v))
            label.append(c)
    emb = np.array(rows)
    q = np.zeros(len(emb)) if quality is None else np.asarray(quality, dtype=np.float64)
    return Toy(name, emb, np.array(label), q, k)


def mean_pairwise_cosine(emb: np.ndarray, subsets: np.ndarray) -> np.ndarray:
    """The paper's PWS quantity by its definition: mean of cos(e_i, e_j) over pairs i != j."""
    x = emb[subsets]  # (m, k, d)
    x = x / np.linalg.norm(x, axis=2, keepdims=True)
    gram = x @ x.transpose(0, 2, 1)
    k = subsets.shape[1]
    return (gram.sum(axis=(1, 2)) - np.trace(gram, axis1=1, axis2=2)) / (k * (k - 1))


def facility_location_direct(emb: np.ndarray, subsets: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Mean over the reference rows of the best cosine in each subset."""
    return (emb[subsets] @ ref.T).max(axis=1).mean(axis=1)


def toy_a() -> Toy:
    """(a) two tight clusters + spread: 8 spread (rho 0.5), a typical cluster T (gamma = rho) and an
    atypical cluster A (gamma 0.17), 3 copies each; k = 6 of 14 (3,003 subsets)."""
    return toy_pool("a: typical + atypical cluster", 8, 0.5, [(3, 0.5), (3, 0.17)], k=6)


def toy_b_benchmark() -> Toy:
    """(b) the selection benchmark's geometry (tf-idf: clean-clean cosine 0.49, dup-clean 0.17):
    10 spread + one atypical cluster of 4; k = 6 of 14."""
    return toy_pool("b: benchmark-like atypical cluster", 10, 0.49, [(4, 0.17)], k=6)


def toy_b_opposite() -> Toy:
    """(b) one cluster of 3 pointing away from the rest (gamma -0.3), 10 spread (rho 0.6); k = 6 of 13."""
    return toy_pool("b: opposite cluster", 10, 0.6, [(3, -0.3)], k=6)


def toy_c() -> Toy:
    """(c) quality + diversity: toy (a)'s geometry; the typical cluster T is a good template copied
    three times (quality 2.4, quality = a sum of three classifier scores), the atypical cluster A
    is average (1.5), the spread documents range 1.0-2.0."""
    base = toy_a()
    q = np.concatenate([np.linspace(1.0, 2.0, 8), [2.4] * 3, [1.5] * 3])
    return Toy("c: quality + diversity", base.emb, base.label, q, base.k)


# ------------------------------------------------------------------ thresher's side


def params(kind: str, lam: float, **kw: object) -> DataMaskParams:
    """DATAMASK's defaults, except no pruning (so the pool is the enumerated one) and CPU."""
    base: dict[str, object] = dict(quality="q", lam=lam, diversity=kind, prune_fraction=0.0, device="cpu", threads=1)
    base.update(kw)
    return DataMaskParams(**base)


def thresher_objective(toy: Toy, kind: str, lam: float, seed: int = 0) -> np.ndarray:
    """thresher's block-standardised objective (what DATAMASK and greedy maximise) of every subset."""
    p = params(kind, lam)
    prep = prepare_block(toy.quality, toy.emb.astype(np.float32), toy.k, p, seed, 0)
    cal = block_calibration(prep, toy.k, p, seed, 0)
    return objective(prep.q_all, prep.e_all, torch.from_numpy(toy.subsets), cal).numpy()


def datamask_pick(toy: Toy, kind: str, lam: float, seed: int) -> np.ndarray:
    """DATAMASK's readout on the toy (default optimiser settings)."""
    res = solve_block(toy.quality, toy.emb.astype(np.float32), toy.k, params(kind, lam), seed=seed)
    return np.flatnonzero(res.selected)


def greedy_pick(toy: Toy, kind: str, lam: float) -> np.ndarray:
    res = greedy_block(toy.quality, toy.emb.astype(np.float32), toy.k, params(kind, lam), seed=0)
    return np.flatnonzero(res.selected)


def row_of(toy: Toy, idx: np.ndarray) -> int:
    """The position of subset ``idx`` in ``toy.subsets``."""
    hit = np.flatnonzero((toy.subsets == np.sort(idx)).all(axis=1))
    assert len(hit) == 1
    return int(hit[0])


def paper_objective(toy: Toy, kind: str, lam: float) -> np.ndarray:
    """The paper's mix taken literally, no normalisation: lam * mean quality + (1 - lam) * f_div."""
    div = -toy.similarity if kind == "pws" else toy.coverage
    return lam * toy.mean_quality + (1 - lam) * div


# ------------------------------------------------------------------ 1. the objective itself


def test_thresher_pws_is_the_direct_pairwise_mean_and_an_affine_map_of_it() -> None:
    toy = toy_a()
    fast = pairwise_similarity(torch.from_numpy(toy.emb), torch.from_numpy(toy.subsets)).numpy()
    np.testing.assert_allclose(fast, toy.similarity, atol=1e-12)
    # thresher's standardised objective at any lam, quality constant: (-sim - m_d) / s_d, with
    # m_d, s_d the exact mean and std over all subsets, i.e. the same order as the paper's PWS
    for lam in (0.0, 0.3):
        f = thresher_objective(toy, "pws", lam)
        z = (-toy.similarity + toy.similarity.mean()) / toy.similarity.std()
        np.testing.assert_allclose(f, (1 - lam) * z, atol=1e-5)


def test_pws_sees_only_the_centroid() -> None:
    rng = np.random.default_rng(0)
    e = rng.normal(size=(12, 5))
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    subsets = np.array(list(itertools.combinations(range(12), 4)))
    centroid = e[subsets].mean(axis=1)
    # mean pair-wise cosine = (k^2 |centroid|^2 - k) / (k (k - 1)): a function of the centroid alone
    np.testing.assert_allclose(mean_pairwise_cosine(e, subsets),
                               (16 * (centroid ** 2).sum(axis=1) - 4) / 12, atol=1e-12)
    # so two duplicate pairs pointing opposite ways score exactly as four distinct directions
    a, b = np.eye(3)[0], np.eye(3)[1]
    dups = np.array([a, a, -a, -a])
    distinct = np.array([a, -a, b, -b])
    four = np.arange(4)[None]
    assert mean_pairwise_cosine(dups, four)[0] == pytest.approx(-1 / 3)
    assert mean_pairwise_cosine(distinct, four)[0] == pytest.approx(-1 / 3)
    # facility location tells them apart: the duplicates cover 2 of the 4 directions a, -a, b, -b
    ref = np.array([a, -a, b, -b])
    assert facility_location_direct(dups, four, ref)[0] == pytest.approx(0.5)
    assert facility_location_direct(distinct, four, ref)[0] == pytest.approx(1.0)


# ------------------------------------------------------------------ 2. diversity alone (quality constant)


def _optimum(values: np.ndarray, maximise: bool) -> tuple[float, np.ndarray]:
    """Best value and the rows that reach it (ties within 1e-9)."""
    best = values.max() if maximise else values.min()
    return float(best), np.flatnonzero(np.abs(values - best) <= 1e-9)


def test_toy_a_pws_avoids_typical_copies_but_takes_atypical_ones() -> None:
    toy = toy_a()
    best, rows = _optimum(toy.similarity, maximise=False)
    copies = np.array([toy.copies(toy.subsets[r]) for r in rows])
    assert (copies[:, 0] <= 1).all()  # never two copies of the typical cluster T
    assert (copies[:, 1] == 2).all()  # always two copies of the atypical cluster A
    nodup = float(toy.similarity[toy.duplicate_free].min())
    assert best < nodup - 0.03  # the duplicates are worth it to PWS, not a tie
    # thresher: DATAMASK (every seed) and greedy reach the optimum's similarity and take A's copies
    for pick in [datamask_pick(toy, "pws", 0.0, s) for s in SEEDS] + [greedy_pick(toy, "pws", 0.0)]:
        assert toy.similarity[row_of(toy, pick)] <= best + 1e-3
        assert toy.copies(pick)[1] >= 2


@pytest.mark.parametrize("make, copies_at_optimum", [(toy_b_benchmark, 2), (toy_b_opposite, 3)])
def test_toy_b_pws_prefers_copies_of_an_atypical_cluster(make, copies_at_optimum: int) -> None:
    toy = make()
    best, rows = _optimum(toy.similarity, maximise=False)
    assert {toy.copies(toy.subsets[r])[0] for r in rows} == {copies_at_optimum}
    assert not toy.duplicate_free[rows].any()
    assert best < float(toy.similarity[toy.duplicate_free].min()) - 0.03
    for s in SEEDS:
        pick = datamask_pick(toy, "pws", 0.0, s)
        assert toy.copies(pick)[0] >= 2
        assert toy.similarity[row_of(toy, pick)] <= best + 2e-3


def pws_copies_rule(rho: float, gamma: float, k: int, size: int, copy_cos: float = 0.99) -> int:
    """Copies of one cluster in the PWS optimum of a ``toy_pool`` with one cluster, in closed form.

    With m copies and k - m spread documents the ordered-pair sum is
    P(m) = m(m-1) c + (k-m)(k-m-1) rho + 2 m (k-m) gamma sqrt(c), c = copy_cos; the optimum
    minimises it over m in [0, min(size, k)] (enough spread documents assumed)."""
    m = np.arange(min(size, k) + 1)
    p = m * (m - 1) * copy_cos + (k - m) * (k - m - 1) * rho + 2 * m * (k - m) * gamma * math.sqrt(copy_cos)
    return int(m[np.argmin(p)])


@pytest.mark.parametrize("gamma", [0.5, 0.3, 0.17, 0.0, -0.3])
def test_pws_copies_follow_the_closed_form(gamma: float) -> None:
    toy = toy_pool("sweep", 10, 0.5, [(4, gamma)], k=6)
    best, rows = _optimum(toy.similarity, maximise=False)
    expected = pws_copies_rule(0.5, gamma, 6, 4)
    assert {toy.copies(toy.subsets[r])[0] for r in rows} == {expected}
    assert (expected >= 2) == (gamma < 0.5)  # any cluster less typical than the rest gets copies (k = 6)


@pytest.mark.parametrize("make", [toy_a, toy_b_benchmark, toy_b_opposite])
def test_facility_location_never_takes_a_second_copy(make) -> None:
    toy = make()
    cov = toy.coverage
    best, rows = _optimum(cov, maximise=True)
    assert toy.duplicate_free[rows].all()
    # on every subset holding two copies of a cluster, swapping one copy for any spread document
    # outside it (equal quality here) strictly raises the coverage
    spread = np.flatnonzero(toy.label == -1)
    lookup = {tuple(s): i for i, s in enumerate(toy.subsets)}
    for i in np.flatnonzero(~toy.duplicate_free):
        sub = toy.subsets[i]
        copy = next(j for j in sub if toy.label[j] >= 0 and (toy.label[sub] == toy.label[j]).sum() >= 2)
        for x in np.setdiff1d(spread, sub):
            swapped = tuple(sorted(set(sub) - {copy} | {x}))
            assert cov[lookup[swapped]] > cov[i] + 1e-6
    # thresher's FL objective is an increasing affine map of the direct coverage (V = the pool),
    # and DATAMASK reaches the optimum
    f = thresher_objective(toy, "fl", 0.0)
    slope, icpt = np.polyfit(cov, f, 1)
    assert slope > 0 and np.abs(slope * cov + icpt - f).max() < 1e-4
    pick = datamask_pick(toy, "fl", 0.0, 0)
    assert cov[row_of(toy, pick)] >= best - 1e-6


# ------------------------------------------------------------------ 3. quality + diversity, lam in [0.1, 0.5]


def _lam_paper(toy: Toy, kind: str, lam: float) -> float:
    """The unnormalised mixing weight equivalent to thresher's standardised lam (quality and
    diversity each divided by their std over random subsets): lam s_d / (lam s_d + (1 - lam) s_q)."""
    div = -toy.similarity if kind == "pws" else toy.coverage
    s_q, s_d = toy.mean_quality.std(), div.std()
    return lam * s_d / (lam * s_d + (1 - lam) * s_q)


def _best_rows(f: np.ndarray, tol: float = 1e-4) -> np.ndarray:
    """Rows within ``tol`` of the maximum of a (float32-computed) objective."""
    return np.flatnonzero(f >= f.max() - tol)


def test_toy_c_quality_and_diversity() -> None:
    toy = toy_c()
    top = quality_topk(toy.quality, toy.k)
    assert toy.copies(top) == [3, 0]  # quality top-k takes every copy of the good template T
    for lam in LAMBDAS:
        pws_rows = _best_rows(thresher_objective(toy, "pws", lam))
        fl_rows = _best_rows(thresher_objective(toy, "fl", lam))
        pws_copies = np.array([toy.copies(toy.subsets[r]) for r in pws_rows])
        fl_copies = np.array([toy.copies(toy.subsets[r]) for r in fl_rows])
        # PWS takes a second copy of the average-quality atypical A, which neither quality nor
        # coverage justifies, at every lam of the paper's range; FL never does
        assert (pws_copies[:, 1] >= 2).all() and (fl_copies[:, 1] <= 1).all()
        if lam <= 0.3:
            assert (pws_copies[:, 0] <= 1).all() and toy.duplicate_free[fl_rows].all()
        else:  # at the FineWeb-Mask weight T's quality outweighs the coverage its copies fail to add
            assert (fl_copies[:, 0] >= 2).all()
        # the paper's mix without normalisation has the same optimum at the matching weight
        # (quality and PWS are standardised with exact moments, so the match is exact)
        raw = paper_objective(toy, "pws", _lam_paper(toy, "pws", lam))
        assert int(np.argmax(raw)) in set(pws_rows)
    # DATAMASK at the FineWeb-Mask setting (lam 0.5) reaches each optimum
    for kind in ("pws", "fl"):
        f = thresher_objective(toy, kind, 0.5)
        pick = datamask_pick(toy, kind, 0.5, 0)
        assert f[row_of(toy, pick)] >= f.max() - 1e-3


# ------------------------------------------------------------------ the tables of docs/datamask.md


def _fmt(idx: np.ndarray | list[int], toy: Toy) -> str:
    return "+".join(str(c) for c in toy.copies(idx))


def diversity_table() -> str:
    """Toys (a) and (b), quality constant: each pick's mean pair-wise cosine, coverage and copies."""
    out = ["| toy | pick | mean pair-wise cos | FL coverage | thresher PWS objective | copies per cluster |",
           "|---|---|---:|---:|---:|---|"]
    for toy in (toy_a(), toy_b_benchmark(), toy_b_opposite()):
        f = thresher_objective(toy, "pws", 0.0)
        nodup = np.flatnonzero(toy.duplicate_free)
        picks: list[tuple[str, np.ndarray]] = [
            ("duplicate-free PWS optimum", toy.subsets[nodup[np.argmin(toy.similarity[nodup])]]),
            ("PWS optimum (exhaustive)", toy.subsets[np.argmin(toy.similarity)]),
        ]
        c = int(toy.label.max())
        whole = np.flatnonzero(toy.label == c)
        with_all = np.flatnonzero((toy.label[toy.subsets] == c).sum(axis=1) == len(whole))
        picks.append((f"best pick holding all {len(whole)} copies of the last cluster",
                      toy.subsets[with_all[np.argmin(toy.similarity[with_all])]]))
        picks += [(f"DATAMASK pws, seed {s}", datamask_pick(toy, "pws", 0.0, s)) for s in SEEDS]
        picks.append(("greedy pws", greedy_pick(toy, "pws", 0.0)))
        picks.append(("FL optimum (exhaustive)", toy.subsets[np.argmax(toy.coverage)]))
        picks += [(f"DATAMASK fl, seed {s}", datamask_pick(toy, "fl", 0.0, s)) for s in SEEDS]
        for name, idx in picks:
            r = row_of(toy, idx)
            out.append(f"| {toy.name} | {name} | {toy.similarity[r]:.4f} | {toy.coverage[r]:.4f} | "
                       f"{f[r]:+.3f} | {_fmt(idx, toy)} |")
    return "\n".join(out)


def quality_table() -> str:
    """Toy (c): optimum of each objective per lam (thresher's standardised mix), and DATAMASK's pick."""
    toy = toy_c()
    out = ["| lam | objective | pick | thresher objective | mean quality | mean pair-wise cos | FL coverage | "
           "copies T+A | unnormalised lam |", "|---:|---|---|---:|---:|---:|---:|---|---:|"]
    top = quality_topk(toy.quality, toy.k)
    r = row_of(toy, top)
    out.append(f"| – | quality top-k | – | – | {toy.mean_quality[r]:.3f} | {toy.similarity[r]:.4f} | "
               f"{toy.coverage[r]:.4f} | {_fmt(top, toy)} | – |")
    for lam in LAMBDAS:
        for kind in ("pws", "fl"):
            f = thresher_objective(toy, kind, lam)
            for name, idx in (("exhaustive optimum", toy.subsets[np.argmax(f)]),
                              ("DATAMASK seed 0", datamask_pick(toy, kind, lam, 0))):
                r = row_of(toy, idx)
                out.append(f"| {lam} | {kind} | {name} | {f[r]:+.3f} | {toy.mean_quality[r]:.3f} | "
                           f"{toy.similarity[r]:.4f} | {toy.coverage[r]:.4f} | {_fmt(idx, toy)} | {_lam_paper(toy, kind, lam):.3f} |")
            idx = toy.subsets[np.argmax(paper_objective(toy, kind, lam))]
            r = row_of(toy, idx)
            out.append(f"| {lam} | {kind} | optimum of the unnormalised mix at this lam | {f[r]:+.3f} | "
                       f"{toy.mean_quality[r]:.3f} | "
                       f"{toy.similarity[r]:.4f} | {toy.coverage[r]:.4f} | {_fmt(idx, toy)} | {lam} |")
    return "\n".join(out)


def benchmark_pool_table() -> str:
    """The selection benchmark's own pool (jobs/bench_selection.yaml, seed 0, tf-idf embeddings),
    diversity alone (lam 0, no pruning), 400 of 4,000: what each metric fills the budget with.
    Needs the benchmark's BBC corpus; about 10 s."""
    from benchmarks.selection.harness import tfidf_svd
    from benchmarks.selection.pool import build_pool

    pool = build_pool(4000, 0.25, 0.25, 40, 300, 300, seed=0)
    emb = tfidf_svd(pool.texts, 64, 0).astype(np.float32)
    kinds, clusters = np.asarray(pool.kinds), np.asarray(pool.clusters)
    q, k = np.zeros(len(emb)), 400
    centre = emb.mean(axis=0) / np.linalg.norm(emb.mean(axis=0))
    lines = ["cosine to the pool's mean direction: " + ", ".join(
        f"{kd} {float((emb[kinds == kd] @ centre).mean()):.2f}" for kd in sorted(set(kinds))), "",
        "| pick (lam 0) | near-dup | redundant | junk | mean pair-wise cos |", "|---|---:|---:|---:|---:|"]

    def row(name: str, sel: np.ndarray) -> None:
        dup = kinds[sel] == "dup"
        redundant = (dup.sum() - len(set(clusters[sel][dup]))) / len(sel)
        junk = float((~np.isin(kinds[sel], ["clean", "dup"])).mean())
        sim = float(mean_pairwise_cosine(emb.astype(np.float64), sel[None])[0])
        lines.append(f"| {name} | {dup.mean():.3f} | {redundant:.3f} | {junk:.3f} | {sim:.4f} |")

    row("random (seed 0)", np.sort(np.random.default_rng(0).choice(len(emb), k, replace=False)))
    for kind in ("pws", "fl"):
        row(f"greedy {kind}", np.flatnonzero(greedy_block(q, emb, k, params(kind, 0.0), seed=0).selected))
        extra = {"steps": 300} if kind == "fl" else {}
        row(f"DATAMASK {kind}", np.flatnonzero(solve_block(q, emb, k, params(kind, 0.0, **extra), seed=0).selected))
    first = np.array([i for i in range(len(emb)) if clusters[i] < 0 or i == np.flatnonzero(clusters == clusters[i])[0]])
    for kind in ("pws", "fl"):  # after exact dedup: one copy of each cluster left
        res = greedy_block(q[first], emb[first], k, params(kind, 0.0), seed=0)
        row(f"dedup, then greedy {kind}", first[np.flatnonzero(res.selected)])
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    print(diversity_table())
    print()
    print(quality_table())
    if "--benchmark-pool" in sys.argv:
        print()
        print(benchmark_pool_table())
