"""The distributed select stage equals the in-memory selectors on the whole table.

The stage never builds the score table in one process: duplicate ids are checked in hash
buckets, budgets are cut from shard sketches, DATAMASK/greedy blocks are shuffled by a hash of
(seed, id), clusters are fitted on a bounded sample. Each test runs a multi-shard job and
compares its `_selection/` files with the selector's in-memory `select` (the reference) on the
concatenated table, after the same duplicate-id rule and filters.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import thresher
from thresher.config import JobSpec
from thresher.pipelines.selection import stage as select_stage
from thresher.scorers.registry import build_scorer
from thresher.selectors.base import SelectContext
from thresher.selectors.registry import build_selector

N_FILES, ROWS, DIM = 4, 150, 8


def write_corpus(folder: Path, seed: int = 0, dup_every: int = 37, ties: bool = False) -> Path:
    """Parquet shards with ids, text, a quality score, an ICL-like score pair and unit embeddings;
    some ids repeat across and within files (the later copies must be rejected)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(N_FILES):
        ids = [f"d{f}-{j:04d}" for j in range(ROWS)]
        for j in range(0, ROWS, dup_every):  # repeats of ids from earlier files / rows
            ids[j] = f"d{max(f - 1, 0)}-{(j * 7) % ROWS:04d}"
        q = rng.normal(size=ROWS).astype(np.float32)
        if ties:
            q = np.round(q, 1)
        emb = rng.normal(size=(ROWS, DIM)).astype(np.float32)
        emb[::5] = emb[1::5][: len(emb[::5])] + 0.01  # near-duplicates for the clusters
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        phi = rng.uniform(-1, 1, size=ROWS)
        phi[rng.random(ROWS) < 0.5] = np.nan
        text = [" ".join(["word"] * int(rng.integers(3, 40))) for _ in range(ROWS)]
        pq.write_table(pa.table({
            "id": ids, "text": text, "quality": q,
            "emb": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), DIM),
            "icon_score": np.where(np.isnan(phi), np.nan, phi * 0.5), "icon_phi": phi,
        }), folder / f"part-{f}.parquet", row_group_size=50)
    return folder


def job(tmp: Path, corpus: Path, selector: dict, filters: list | None = None, scorers: list | None = None,
        workers: int = 1) -> dict:
    return {"name": "sel", "seed": 11,
            "input": {"path": str(corpus), "id_column": "id",
                      "score_columns": ["quality", "emb", "icon_score", "icon_phi"]},
            "scorers": scorers or [], "filters": filters or [], "selector": selector,
            "engine": {"local": {"workers": workers}}, "output": {"path": str(tmp / "out")}}


def stage_result(out: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted((out / "_selection").glob("part-*.parquet"))])


def reference(spec: dict, corpus: Path) -> tuple[pa.Table, pa.Table, np.ndarray]:
    """The whole table in shard and row order, the live rows (first occurrence of each id),
    and the live rows that pass the filters; returns (live table with global columns, eligible
    table, eligible mask over live)."""
    parts = []
    for s, path in enumerate(sorted(corpus.glob("*.parquet"))):
        t = pq.read_table(path)
        words = np.array([len(x.split()) for x in t.column("text").to_pylist()])
        t = t.append_column("n_words", pa.array(words, pa.int64())).append_column(
            "_shard", pa.array(np.full(t.num_rows, s, np.int32))).append_column("_row", pa.array(np.arange(t.num_rows)))
        parts.append(t)
    table = pa.concat_tables(parts)
    ids = table.column("id").to_pylist()
    seen, live = set(), []
    for i, x in enumerate(ids):
        live.append(x not in seen)
        seen.add(x)
    live_t = table.filter(pa.array(live))
    spec_obj = JobSpec.model_validate(spec)
    for sc in spec_obj.scorers:
        g = build_scorer(sc)
        for name, arr in g.fit_transform(live_t, spec_obj.seed).items():
            live_t = live_t.append_column(name, arr)
    keep = np.ones(live_t.num_rows, bool)
    from thresher.pipelines.selection.view import filter_mask

    for f in spec_obj.filters:
        keep &= filter_mask(live_t, f)
    return live_t, live_t.filter(pa.array(keep)), keep


def run_both(spec: dict, corpus: Path) -> dict:
    """Run the job and the in-memory reference; ids selected by each, and per-id extra columns."""
    thresher.run(spec)
    out = Path(spec["output"]["path"])
    got = stage_result(out)
    scores = pa.concat_tables([pq.read_table(p, columns=["id"]) for p in sorted((out / "_scores").glob("part-*.parquet"))])
    ids = scores.column("id").to_pylist()
    status = got.column("status").to_pylist()
    live_t, el, _ = reference(spec, corpus)
    sel = build_selector(spec["selector"])
    tok = getattr(sel.params, "token_column", "n_words")
    ctx = SelectContext(seed=spec["seed"], pool_docs=live_t.num_rows,
                        pool_tokens=float(np.sum(live_t.column(tok).to_numpy())),
                        scorers=JobSpec.model_validate(spec).scorers)
    res = sel.select(el, ctx)
    el_ids = el.column("id").to_pylist()
    have = [i for i, st in zip(ids, status) if st == "selected"]
    return {"have": have, "want": {i for i, f in zip(el_ids, res.selected) if f}, "got": got, "ids": ids,
            "live": live_t.num_rows, "res": res, "el_ids": el_ids}


def per_id(ids: list, values: list) -> dict:
    return {i: v for i, v in zip(ids, values) if v is not None}


SELECTORS = {
    "topk": {"type": "topk", "column": "quality", "budget": 0.2},
    "topk_tokens": {"type": "topk", "column": "quality", "budget": 0.3, "budget_unit": "tokens"},
    "topk_ascending": {"type": "topk", "column": "quality", "budget": 0.1, "descending": False},
    "random": {"type": "random", "budget": 0.25},
    "threshold": {"type": "threshold", "column": "quality", "min": 0.5},
    "all": {"type": "all"},
    "datamask_blocks": {"type": "datamask", "quality": "quality", "embedding": "emb", "budget": 0.2,
                        "block_size": 150, "epochs": 2},
    "datamask_one_block": {"type": "datamask", "quality": "quality", "embedding": "emb", "budget": 0.2, "epochs": 2},
    "greedy_tokens": {"type": "greedy", "quality": "quality", "embedding": "emb", "budget": 0.15,
                      "budget_unit": "tokens", "block_size": 200},
    "icon_none": {"type": "icon", "classifier": "none", "budget": 0.2},
    "icon_logistic": {"type": "icon", "classifier": "logistic", "embedding": "emb", "budget": 0.2, "top_k": 0.3},
}


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_stage_equals_in_memory_selector(tmp_path: Path, name: str) -> None:
    corpus = write_corpus(tmp_path / "c")
    spec = job(tmp_path, corpus, SELECTORS[name], filters=[{"column": "n_words", "op": ">=", "value": 5}])
    r = run_both(spec, corpus)
    assert len(r["have"]) == len(set(r["have"])) > 0  # no id selected twice
    assert set(r["have"]) == r["want"]
    reasons = r["got"].column("reason").to_pylist()
    assert reasons.count("duplicate_id") == N_FILES * ROWS - r["live"] > 0
    for col, arr in r["res"].columns.items():  # extra columns (datamask_logit, icon_prob) equal the reference's
        mine = per_id(r["ids"], r["got"].column(col).to_pylist())
        ref = per_id(r["el_ids"], arr.to_pylist())
        assert mine.keys() == ref.keys() and len(ref) > 0
        assert np.allclose([mine[k] for k in ref], [ref[k] for k in ref], atol=1e-9)


@pytest.mark.parametrize("unit", ["docs", "tokens"])
def test_cut_narrows_in_rounds_and_stays_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unit: str) -> None:
    """With a tiny collect limit the cut takes several sketch rounds; ties (scores rounded to 0.1)
    are broken by id exactly as the in-memory order does."""
    monkeypatch.setattr(select_stage, "CUT_COLLECT", 12)
    monkeypatch.setattr(select_stage, "CUT_POINTS", 4)
    corpus = write_corpus(tmp_path / "c", ties=True)
    spec = job(tmp_path, corpus, {"type": "topk", "column": "quality", "budget": 0.37, "budget_unit": unit})
    calls = []
    real = select_stage.cuts.bracket
    monkeypatch.setattr(select_stage.cuts, "bracket", lambda res, t: calls.append(1) or real(res, t))
    r = run_both(spec, corpus)
    assert set(r["have"]) == r["want"] and len(calls) >= 2


def test_clusters_on_a_capped_sample_equal_the_reference(tmp_path: Path) -> None:
    """k-means fitted on a capped sample (by id hash), SemDeDup per cluster task: the columns and
    a filter on the near-duplicate flag equal the in-memory scorer's."""
    corpus = write_corpus(tmp_path / "c")
    scorers = [{"type": "clusters", "embedding_column": "emb", "k": 5, "max_fit_rows": 200, "eps": [0.05],
                "use_gpu": False}]
    spec = job(tmp_path, corpus, {"type": "topk", "column": "quality", "budget": 0.3}, scorers=scorers,
               filters=[{"column": "clusters_dup_eps0_05", "op": "==", "value": False}])
    r = run_both(spec, corpus)
    assert set(r["have"]) == r["want"]
    live_t, _, _ = reference(spec, corpus)
    ref_ids = live_t.column("id").to_pylist()
    for col in ("clusters_id", "clusters_distance", "clusters_max_sim", "clusters_dup_eps0_05"):
        mine = per_id(r["ids"], r["got"].column(col).to_pylist())
        ref = per_id(ref_ids, live_t.column(col).to_pylist())
        assert mine.keys() == ref.keys()
        if col == "clusters_dup_eps0_05":
            assert [mine[k] for k in ref] == [ref[k] for k in ref] and any(ref.values())
        else:
            assert np.allclose([mine[k] for k in ref], [ref[k] for k in ref], atol=1e-5)


def test_pool_workers_and_spill_files_agree(tmp_path: Path) -> None:
    """Two worker processes (shuffles through spill files) select what one in-process worker does."""
    corpus = write_corpus(tmp_path / "c")
    sel = SELECTORS["datamask_blocks"]
    one = job(tmp_path / "a", corpus, sel)
    two = job(tmp_path / "b", corpus, sel, workers=2)
    a, b = run_both(one, corpus), run_both(two, corpus)
    assert set(a["have"]) == set(b["have"]) == a["want"]
    assert not (tmp_path / "b" / "out" / "_thresher" / "select").exists()  # scratch removed
