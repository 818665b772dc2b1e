"""Exact and MinHash near-duplicate removal (issue 15): known answers on a planted corpus.

The corpus is random words (unrelated documents share almost no 5-word shingle), with planted
exact copies (case and whitespace changed), a near-copy (one word edited), a pair below the
threshold, and a transitive chain (A ~ B, B ~ C, A !~ C). Jobs run on the local engine with one
and two workers and must give the same clusters.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import thresher
from thresher.config import JobSpec
from thresher.dedup import components as C
from thresher.dedup import exact, minhash
from thresher.dedup.spec import DedupSpec
from thresher.pipelines.engine import serial_shuffle
from thresher.specs import JobError

VOCAB = np.array([f"w{i}" for i in range(20_000)])


def words(rng: np.random.Generator, n: int) -> list[str]:
    return list(VOCAB[rng.integers(0, len(VOCAB), n)])


def planted(folder: Path, files: int = 3, rows: int = 20, stride: int = 7) -> Path:
    """Parquet files of random documents plus planted duplicates (ids x1/x2, y1/y2, z1, p1/p2, ta/tb/tc),
    planted row k at position k * stride + 3 (modulo the rows)."""
    rng = np.random.default_rng(7)
    docs: list[tuple[str, str, float]] = []
    for j in range(files * rows):
        docs.append((f"r{j:03d}", " ".join(words(rng, 120)), float(rng.normal())))
    base = words(rng, 200)
    edited = list(base)
    edited[100] = "CHANGED"
    far = base[:60] + words(rng, 140)  # Jaccard ~0.2 with base
    near_miss = words(rng, 230)
    p1, p2 = near_miss[0:200], near_miss[25:225]  # Jaccard 0.77: a candidate often, never merged (verified)
    seq = words(rng, 300)
    a, b, c = seq[0:200], seq[15:215], seq[30:230]  # A~B 0.86, B~C 0.86, A~C 0.73
    text_x = " ".join(words(rng, 150))
    plant = [("x1", text_x, 0.0), ("x2", "  " + text_x.upper().replace(" ", "\n\t ") + " ", 5.0),
             ("y1", " ".join(base), 1.0), ("y2", " ".join(edited), 2.0), ("z1", " ".join(far), 0.0),
             ("p1", " ".join(p1), 0.0), ("p2", " ".join(p2), 0.0), ("ta", " ".join(a), 3.0), ("tb", " ".join(b), 1.0), ("tc", " ".join(c), 2.0)]
    # spread the planted rows over the files (the later copies in other shards)
    for k, p in enumerate(plant):
        docs.insert((k * stride + 3) % len(docs), p)
    per = (len(docs) + files - 1) // files
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        part = docs[f * per:(f + 1) * per]
        pq.write_table(pa.table({"id": [d[0] for d in part], "text": [d[1] for d in part],
                                 "quality": [d[2] for d in part]}), folder / f"part-{f}.parquet")
    return folder


def job(tmp: Path, corpus: Path, dedup: dict | None, workers: int = 1, name: str = "out", **extra) -> dict:
    d = {"name": "dedup", "seed": 3, "input": {"path": str(corpus), "id_column": "id", "score_columns": ["quality"]},
         "selector": {"type": "all"}, "engine": {"local": {"workers": workers}},
         "output": {"path": str(tmp / name)}, **extra}
    if dedup is not None:
        d["dedup"] = dedup
    return d


def selection(out: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted((out / "_selection").glob("part-*.parquet"))])


def by_id(out: Path, corpus: Path) -> dict[str, dict]:
    """id -> the row's selection columns (ids from the scores, same order)."""
    scores = pa.concat_tables([pq.read_table(p, columns=["id"]) for p in sorted((out / "_scores").glob("*.parquet"))])
    sel = selection(out).to_pylist()
    return {i: r for i, r in zip(scores.column("id").to_pylist(), sel)}


NEAR = {"exact": True, "minhash": {"threshold": 0.8, "num_perm": 128, "shingle": "word", "n": 5, "verify": True}}


# -- the per-batch maths ---------------------------------------------------------------------------


def test_normalisation_and_exact_hash() -> None:
    t = pa.array(["Hello  World\n", "hello world", "ＨＥＬＬＯ\u00a0world", "hello worlds", None, ""])
    assert exact.normalize(t).to_pylist() == ["hello world", "hello world", "hello world", "hello worlds", "", ""]
    h = exact.exact_hash(t)
    assert h.shape == (6, 2) and h.dtype == np.uint64
    assert (h[0] == h[1]).all() and (h[0] == h[2]).all() and not (h[0] == h[3]).any() and (h[4] == h[5]).all()


def test_minhash_estimates_jaccard_and_shingles() -> None:
    rng = np.random.default_rng(0)
    base = words(rng, 300)
    texts = [" ".join(base), " ".join(base[:150] + words(rng, 150)), " ".join(base[::-1]), "", "a b"]
    nz = exact.normalize(pa.array(texts))
    sig, sh, off = minhash.batch_signatures(nz, "word", 5, 256)
    assert sig.dtype == np.uint32 and list(np.diff(off))[3:] == [0, 1]  # empty: no shingle; short: one
    true = minhash.jaccard(sh[off[0]:off[1]], sh[off[1]:off[2]])
    assert 0.2 < true < 0.4 and abs((sig[0] == sig[1]).mean() - true) < 0.1
    assert (sig[0] == sig[2]).mean() < 0.05  # reversed words: other 5-grams
    csig, csh, coff = minhash.batch_signatures(nz, "char", 4, 64)
    assert np.diff(coff)[0] > np.diff(off)[0]
    # batches do not change a document's signature
    one, _, _ = minhash.batch_signatures(nz.slice(1, 1), "word", 5, 256)
    assert (one[0] == sig[1]).all()


def test_band_choice_by_the_s_curve() -> None:
    assert minhash.optimal_param(0.8, 128) == (9, 13)
    b, r = DedupSpec.model_validate(NEAR).minhash.band_rows()  # verify: misses weigh more
    assert (b, r) == (14, 9)
    assert minhash.candidate_probability(0.85, b, r) > 0.95 and minhash.candidate_probability(0.5, b, r) < 0.05


def test_spec_is_validated() -> None:
    with pytest.raises(Exception, match="nothing to do"):
        DedupSpec.model_validate({"exact": False})
    with pytest.raises(Exception, match="bands"):
        DedupSpec.model_validate({"minhash": {"bands": 4}})
    with pytest.raises(JobError, match="dedup.minhash.shingle"):
        thresher.load_job(data={"dedup": {"minhash": {"shingle": "sentence"}}})
    assert DedupSpec.model_validate({"keep": {"column": "q"}}).keep.column == "q"


def components(edges: list[tuple[int, int]], keys: int) -> dict[int, int]:
    """The settled star of each node (node -> centre) with serial shuffles, as the stage runs them."""
    def node(n: int) -> dict:
        return {"node": n, "k": 0.0, "id": f"d{n:04d}", "h": n}
    rows = [{**{f"a_{k}": v for k, v in node(min(a, b)).items()}, **{f"b_{k}": v for k, v in node(max(a, b)).items()}}
            for a, b in edges]
    tables = [pa.Table.from_pylist(rows, schema=C.EDGE_SCHEMA)]
    large = True
    for _ in range(100):
        out = {}

        def reduce(key: int, t: pa.Table, large: bool = large) -> dict:
            e, u = C.star_round(t, large)
            out[key] = e
            return {"unsettled": u}

        def emit(t: pa.Table) -> list:
            m = C.both_ways(t)
            keyed = C.node_key(m.column("a_node").to_numpy(), keys)
            return [(int(k), pa.concat_batches(m.filter(pa.array(keyed == k)).to_batches())) for k in np.unique(keyed)]

        res = serial_shuffle(emit, tables, reduce)
        if sum(r["unsettled"] for r in res.values()) == 0:
            break
        tables = [out[k] for k in sorted(out) if out[k].num_rows]
        large = not large
    settled = pa.concat_tables(tables)
    return dict(zip(settled.column("b_node").to_pylist(), settled.column("a_node").to_pylist()))


@pytest.mark.parametrize("keys", [1, 3])
def test_components_settle_into_stars_around_the_minimum(keys: int) -> None:
    rng = np.random.default_rng(1)
    chain = [(i, i + 1) for i in range(40)]  # a path: the slowest shape for label propagation
    tree = [(100 + i, 100 + int(rng.integers(0, i))) for i in range(1, 30)]
    pairs = [(200, 201), (202, 201)]
    centre = components(chain + tree + pairs, keys)
    assert all(centre[n] == 0 for n in range(1, 41))
    assert all(centre[n] == 100 for n in range(101, 130))
    assert centre[201] == 200 and centre[202] == 200 and 0 not in centre and 100 not in centre


# -- the stage in a job ------------------------------------------------------------------------------


def test_job_removes_planted_duplicates(tmp_path: Path) -> None:
    corpus = planted(tmp_path / "corpus")
    res = thresher.run(job(tmp_path, corpus, NEAR), progress=False)
    rows = by_id(tmp_path / "out", corpus)
    # exact copy (case and whitespace): the lowest id kept
    assert rows["x1"]["status"] == "selected" and rows["x2"]["reason"] == "exact_duplicate"
    assert rows["x2"]["dup_cluster"] == "x1" and rows["x1"]["dup_cluster_size"] == 2 and not rows["x2"]["dup_keep"]
    # one word edited: merged; a pair far below the threshold: never
    assert rows["y2"]["reason"] == "near_duplicate" and rows["y2"]["dup_cluster"] == "y1"
    assert rows["z1"]["status"] == "selected" and rows["z1"]["dup_cluster"] is None
    assert rows["z1"]["dup_cluster_size"] == 1 and rows["z1"]["dup_keep"]
    assert rows["p1"]["dup_cluster"] is None and rows["p2"]["dup_cluster"] is None  # 0.77 < 0.8
    # A ~ B, B ~ C, A !~ C: one cluster of three
    assert [rows[i]["dup_cluster"] for i in ("ta", "tb", "tc")] == ["ta"] * 3
    assert rows["ta"]["dup_cluster_size"] == 3 and rows["ta"]["status"] == "selected"
    assert {rows[i]["reason"] for i in ("tb", "tc")} == {"near_duplicate"}
    # nothing else touched; the manifest counts the removed rows
    others = [r for i, r in rows.items() if i.startswith("r")]
    assert all(r["status"] == "selected" and r["dup_cluster"] is None for r in others)
    c = res.manifest["counts"]
    assert c["rejected"]["by_reason"] == {"exact_duplicate": 1, "near_duplicate": 3}
    assert c["selected"] + c["rejected"]["total"] == c["input_rows"]
    assert res.manifest["dedup"]["removed"] == {"exact_duplicate": 1, "near_duplicate": 3}
    assert res.manifest["dedup"]["clusters"] == 3
    out = pa.concat_tables([pq.read_table(p) for p in res.part_files()])
    assert {"dup_cluster", "dup_cluster_size", "dup_keep"} <= set(out.column_names)
    assert not (tmp_path / "out" / "_thresher" / "dedup" / "work").exists()
    # resumed: the stage is skipped and the output is the same
    first = selection(tmp_path / "out")
    again = thresher.run(job(tmp_path, corpus, NEAR), progress=False)
    assert again.manifest["resumed_shards"]["dedup"] is True
    assert selection(tmp_path / "out").equals(first)
    assert again.manifest["counts"] == res.manifest["counts"]
    # --overwrite starts afresh: the stage runs again (signatures too), with the same result
    fresh = thresher.run(job(tmp_path, corpus, NEAR), overwrite=True, progress=False)
    assert fresh.manifest["resumed_shards"]["dedup"] is False and fresh.manifest["dedup"]["resumed_shards"] == 0
    assert selection(tmp_path / "out").equals(first)


def test_workers_and_keep_rules(tmp_path: Path) -> None:
    corpus = planted(tmp_path / "corpus")
    one = thresher.run(job(tmp_path, corpus, NEAR, workers=1, name="w1"), progress=False)
    two = thresher.run(job(tmp_path, corpus, NEAR, workers=2, name="w2"), progress=False)
    assert selection(tmp_path / "w1").equals(selection(tmp_path / "w2"))
    assert one.manifest["counts"] == two.manifest["counts"]
    # the highest quality kept: x2 (5.0), y2 (2.0), ta (3.0)
    thresher.run(job(tmp_path, corpus, {**NEAR, "keep": {"column": "quality"}}, name="q"), progress=False)
    rows = by_id(tmp_path / "q", corpus)
    assert rows["x2"]["status"] == "selected" and rows["x1"]["reason"] == "exact_duplicate"
    assert rows["y2"]["status"] == "selected" and rows["y1"]["dup_cluster"] == "y2"
    assert rows["ta"]["status"] == "selected" and rows["tc"]["dup_cluster"] == "ta"
    # without verification the 0.77 pair that shares a band bucket is merged; verification keeps it apart
    same_bands = {"minhash": {"threshold": 0.8, "verify": False, "bands": 14, "rows": 9}}
    thresher.run(job(tmp_path, corpus, same_bands, name="nv"), progress=False)
    assert by_id(tmp_path / "nv", corpus)["p2"]["dup_cluster"] == "p1"
    assert by_id(tmp_path / "w1", corpus)["p2"]["dup_cluster"] is None
    # exact only: the near-copies stay
    thresher.run(job(tmp_path, corpus, {"exact": True}, name="x"), progress=False)
    rows = by_id(tmp_path / "x", corpus)
    assert rows["x2"]["reason"] == "exact_duplicate" and rows["y2"]["status"] == "selected"


def test_band_keys_sized_by_shingle_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With `verify` the band shuffle gets keys by shingle values (a reduce task's memory stays
    bounded as the corpus grows) and bands are emitted in chunks: a tiny budget (many keys, one
    band per chunk) gives the same clusters and candidate edges as the default (one key)."""
    from thresher.pipelines import dedup_stage

    corpus = planted(tmp_path / "corpus")
    one = thresher.run(job(tmp_path, corpus, NEAR, name="one"), progress=False)
    monkeypatch.setattr(dedup_stage, "VALUES_PER_KEY", 500)
    keys: set[int] = set()
    reduce = dedup_stage.edges_reduce

    def spy(plan, prefix, threshold, key, table):  # type: ignore[no-untyped-def]
        keys.update([key] if prefix == "b" else [])
        return reduce(plan, prefix, threshold, key, table)

    monkeypatch.setattr(dedup_stage, "edges_reduce", spy)
    many = thresher.run(job(tmp_path, corpus, NEAR, name="many"), progress=False)
    assert len(keys) > 50  # ~8,000 shingle values x 14 bands over a budget of 500 per key
    assert selection(tmp_path / "many").equals(selection(tmp_path / "one"))
    for k in ("removed", "clusters", "candidate_edges"):
        assert many.manifest["dedup"][k] == one.manifest["dedup"][k], k
    assert one.manifest["dedup"]["removed"] == {"exact_duplicate": 1, "near_duplicate": 3}


def test_keep_column_is_checked_at_plan_time(tmp_path: Path) -> None:
    """A misspelt or non-numeric `dedup.keep.column` is one error line naming the key, raised
    before the output folder is created (so before scoring)."""
    corpus = planted(tmp_path / "corpus")
    for column, message in (("qualty", "no column 'qualty' in the score table this job will produce; "
                                       "did you mean 'quality'?"),
                            ("id", "column 'id' holds string; the keep rule keeps the highest number")):
        with pytest.raises(JobError) as err:
            thresher.run(job(tmp_path, corpus, {"keep": {"column": column}}, name="bad"), progress=False)
        text = str(err.value)
        assert "\n" not in text and text.endswith(f"dedup.keep.column: {message}"), text
        assert not (tmp_path / "bad").exists()
    # a scorer's column (heuristics) and an input score column pass the check
    from thresher.pipelines.plan import check_plan

    ok = {"scorers": [{"type": "heuristics"}], "dedup": {"keep": {"column": "heuristics_stopword_count"}}}
    check_plan(thresher.load_job(data={**job(tmp_path, corpus, None, name="ok"), **ok}))
    check_plan(thresher.load_job(data=job(tmp_path, corpus, {"keep": {"column": "quality"}}, name="ok")))
    assert not (tmp_path / "ok").exists()


def test_without_dedup_the_hashes_are_unchanged() -> None:
    # shard_rows given: that commit's default (10,000) differs from today's (50,000); the dump holds it either way
    d = {"name": "h", "seed": 3, "input": {"path": "x.parquet", "id_column": "id", "shard_rows": 10_000},
         "scorers": [{"type": "heuristics"}],
         "filters": [{"column": "heuristics_pass", "op": "==", "value": True}],
         "selector": {"type": "topk", "column": "q", "budget": 0.5}}
    spec = JobSpec.model_validate(d)
    # computed with the JobSpec of main before the dedup section existed (commit e8c83bf)
    assert (spec.score_hash(), spec.select_hash(), spec.write_hash()) == (
        "ebb8ab893c22e5c7", "a974efab1cbbee69", "a974efab1cbbee69")
    assert spec.dedup is None and spec.dedup_hash() is None
    with_dedup = JobSpec.model_validate({**d, "dedup": {"exact": True}})
    assert with_dedup.score_hash() == spec.score_hash() and with_dedup.select_hash() != spec.select_hash()


def test_a_resumed_dedup_run_equals_a_clean_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from thresher.pipelines import dedup_stage

    corpus = planted(tmp_path / "corpus")
    clean = thresher.run(job(tmp_path, corpus, NEAR, name="clean"), progress=False)

    def killed(*_args, **_kw):
        raise RuntimeError("killed")

    with monkeypatch.context() as m:  # dies after the signature pass, in the components
        m.setattr(dedup_stage, "round_reduce", killed)
        with pytest.raises(JobError, match="killed"):
            thresher.run(job(tmp_path, corpus, NEAR, name="resumed"), progress=False)
    assert len(list((tmp_path / "resumed" / "_thresher" / "done").glob("dedup-map-*.json"))) == 3
    again = thresher.run(job(tmp_path, corpus, NEAR, name="resumed"), progress=False)
    assert again.manifest["dedup"]["resumed_shards"] == 3  # the signatures were not computed again
    assert selection(tmp_path / "resumed").equals(selection(tmp_path / "clean"))
    assert again.manifest["counts"] == clean.manifest["counts"]


def all_rows(out: Path) -> list[dict]:
    """Every row's selection columns with its id (in shard and row order; ids may repeat)."""
    scores = pa.concat_tables([pq.read_table(p, columns=["id"]) for p in sorted((out / "_scores").glob("*.parquet"))])
    return [{"id": i, **r} for i, r in zip(scores.column("id").to_pylist(), selection(out).to_pylist())]


@pytest.mark.parametrize("keep", ["lowest_id", {"column": "quality"}])
def test_a_duplicate_id_is_never_a_clusters_kept_document(tmp_path: Path, keep: object) -> None:
    """Id `a` twice with different texts: the second `a` (shard 1, a duplicate id, so rejected) is
    ignored by the dedup stage. Were it in the graph it would be the kept document of {a, b, b2}
    (the lowest id, and the highest quality) and that cluster would keep no row at all."""
    rng = np.random.default_rng(11)
    t1, t2 = words(rng, 200), words(rng, 200)
    b, b2 = list(t2), list(t2)
    b[50], b2[150] = "EDITED", "ALTERED"
    shard0 = [(f"r{j:02d}", " ".join(words(rng, 120)), 0.0) for j in range(10)] + [
        ("a", " ".join(t1), 1.0), ("z", " ".join(t1), 0.0)]
    shard1 = [("a", " ".join(t2), 9.0), ("b", " ".join(b), 1.0), ("b2", " ".join(b2), 2.0)] + [
        (f"s{j:02d}", " ".join(words(rng, 120)), 0.0) for j in range(10)]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for f, part in enumerate((shard0, shard1)):
        pq.write_table(pa.table({"id": [d[0] for d in part], "text": [d[1] for d in part],
                                 "quality": [d[2] for d in part]}), corpus / f"part-{f}.parquet")
    res = thresher.run(job(tmp_path, corpus, {**NEAR, "keep": keep}), progress=False)
    rows = all_rows(tmp_path / "out")
    first_a, second_a = [r for r in rows if r["id"] == "a"]
    assert second_a["reason"] == "duplicate_id" and second_a["dup_cluster"] is None
    assert second_a["dup_cluster_size"] == 1
    assert first_a["status"] == "selected" and first_a["dup_cluster"] == "a" and first_a["dup_cluster_size"] == 2
    kept_b = "b" if keep == "lowest_id" else "b2"
    clusters: dict[str, list[dict]] = {}
    for r in rows:
        if r["dup_cluster"] is not None:
            clusters.setdefault(r["dup_cluster"], []).append(r)
    assert sorted(clusters) == sorted(["a", kept_b])
    for cid, members in clusters.items():  # every cluster keeps exactly one live row: its kept document
        live = [r for r in members if r["status"] == "selected"]
        assert len(live) == 1 and live[0]["id"] == cid and live[0]["dup_keep"], cid
        assert all(r["reason"] in ("exact_duplicate", "near_duplicate") for r in members if r is not live[0])
        assert all(r["dup_cluster_size"] == len(members) for r in members)
    c = res.manifest["counts"]
    assert c["rejected"]["by_reason"] == {"duplicate_id": 1, "exact_duplicate": 1, "near_duplicate": 1}
    assert res.manifest["dedup"]["removed"] == {"exact_duplicate": 1, "near_duplicate": 1}
    assert res.manifest["dedup"]["duplicate_ids"] == 1 and res.manifest["dedup"]["clusters"] == 2


def test_thresher_dedup_command(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """`thresher dedup JOB.yaml -o OUT`: the job's dedup section with no filters and selector all
    (the job's own filter and top-k selector are not applied); the summary has the removed counts."""
    import yaml

    from thresher.commands.cli import main

    corpus = planted(tmp_path / "corpus")
    spec = job(tmp_path, corpus, NEAR, name="job-out", scorers=[{"type": "heuristics"}],
               filters=[{"column": "n_words", "op": ">", "value": 10_000}],
               selector={"type": "topk", "column": "quality", "budget": 0.1})
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(spec))
    monkeypatch.chdir(tmp_path)
    assert main(["dedup", str(job_file), "-o", "deduped", "-q"]) == 0
    out = capsys.readouterr().out
    assert "exact_duplicate" in out and "near_duplicate" in out  # the summary's rejected reasons
    assert ("dedup: 70 rows, 3 clusters; removed 4 (1 exact_duplicate, 3 near_duplicate); "
            "0 duplicate ids left out;") in out
    assert f"output: {tmp_path / 'deduped'}" in out and not (tmp_path / "job-out").exists()
    rows = by_id(tmp_path / "deduped", corpus)
    assert sum(r["status"] == "selected" for r in rows.values()) == 66
    assert {i for i, r in rows.items() if r["status"] == "rejected"} == {"x2", "y2", "tb", "tc"}
    manifest = yaml.safe_load((tmp_path / "deduped" / "_manifest.json").read_text())
    assert manifest["job"]["selector"] == {"type": "all"} and manifest["job"]["filters"] == []
    assert manifest["job"]["scorers"][0]["type"] == "heuristics"  # the job's scorers still run
    # again: resumed, same counts
    assert main(["dedup", str(job_file), "-o", "deduped", "-q"]) == 0
    assert "(resumed)" in capsys.readouterr().out
    # a job without a dedup section: one error line, nothing written
    job_file.write_text(yaml.safe_dump(job(tmp_path, corpus, None, name="none")))
    assert main(["dedup", str(job_file), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{job_file}: no `dedup:` section" in err and not (tmp_path / "none").exists()
    with pytest.raises(SystemExit):
        main(["dedup", "--help"])
    assert "--output" in capsys.readouterr().out


# -- the engines agree ----------------------------------------------------------------------------

# the engine job shapes of tests/test_engines.py (Spark local mode, Beam DirectRunner with 2 workers)
SPARK_CONF = {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
              "spark.sql.shuffle.partitions": "2"}
ENGINES = {"spark": {"name": "spark", "spark": {"master": "local[2]", "conf": SPARK_CONF}},
           "beam": {"name": "beam", "beam": {"runner": "DirectRunner", "options": {"direct_num_workers": 2}}}}
KEEP_Q = {**NEAR, "keep": {"column": "quality"}}  # float keep keys through every shuffle
DUP_COLS = ["dup_cluster", "dup_cluster_size", "dup_keep"]


def kept_ids(out: Path) -> list[str]:
    return sorted(i for p in sorted(out.glob("part-*.parquet")) for i in pq.read_table(p, columns=["id"])["id"].to_pylist())


@pytest.fixture(scope="module")
def four_shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object]:
    """The planted corpus in 4 files (251 documents; every planted pair and the chain span shards:
    x1/x2 in shards 0/1, y1/y2 2/3, ta/tb/tc 0/1/2; a second `x1` in shard 3, a near-copy of y1
    with the highest quality, is a duplicate id the dedup stage leaves out) and its local run
    (1 worker), checked against a 2-worker local run: (the folder for other runs, the corpus,
    the 1-worker result)."""
    tmp = tmp_path_factory.mktemp("dedup_engines")
    corpus = planted(tmp / "corpus", files=4, rows=60, stride=71)
    every = pa.concat_tables([pq.read_table(p) for p in sorted(corpus.glob("*.parquet"))])
    y1 = every.filter(pc.equal(every["id"], "y1"))["text"][0].as_py().split()
    y1[20] = "REUSED"
    last = pq.read_table(corpus / "part-3.parquet")
    pq.write_table(pa.concat_tables([last, pa.table({"id": ["x1"], "text": [" ".join(y1)], "quality": [9.0]})]),
                   corpus / "part-3.parquet")
    one = thresher.run(job(tmp, corpus, KEEP_Q, workers=1, name="local1"), progress=False)
    two = thresher.run(job(tmp, corpus, KEEP_Q, workers=2, name="local2"), progress=False)
    assert len(one.manifest["inputs"]) == 4 and one.manifest["counts"]["input_rows"] == 251
    assert one.manifest["dedup"]["removed"] == {"exact_duplicate": 1, "near_duplicate": 3}
    assert one.manifest["dedup"]["clusters"] == 3 and one.manifest["dedup"]["duplicate_ids"] == 1
    assert one.manifest["counts"]["rejected"]["by_reason"]["duplicate_id"] == 1
    assert selection(tmp / "local1").equals(selection(tmp / "local2"))
    assert kept_ids(tmp / "local1") == kept_ids(tmp / "local2") and two.manifest["counts"] == one.manifest["counts"]
    return tmp, corpus, one


@pytest.mark.parametrize("engine", ["spark", "beam"])
def test_engines_give_the_same_clusters_and_kept_sets(four_shards: tuple[Path, Path, object], engine: str) -> None:
    """Spark local[2] and Beam DirectRunner: the same `dup_cluster`, `dup_cluster_size`,
    `dup_keep` (and statuses, reasons) row by row, and the same kept set, as the local engine."""
    pytest.importorskip("apache_beam" if engine == "beam" else "pyspark")
    tmp, corpus, local = four_shards  # Spark needs Java, like every Spark test here: a missing one fails
    res = thresher.run(job(tmp, corpus, KEEP_Q, name=engine, engine=ENGINES[engine]), progress=False)
    assert res.manifest["engine"] == engine
    want, got = selection(tmp / "local1"), selection(tmp / engine)
    for col in DUP_COLS:
        assert got.column(col).equals(want.column(col)), col
    assert got.equals(want)  # statuses and reasons too
    kept = kept_ids(tmp / engine)
    assert kept == kept_ids(tmp / "local1") and {"x2", "y2", "ta"} <= set(kept)
    assert not {"x1", "y1", "tb", "tc"} & set(kept)
    assert res.manifest["counts"] == local.manifest["counts"]
    for k in ("removed", "clusters", "duplicate_ids", "candidate_edges", "bands", "rows_per_band"):
        assert res.manifest["dedup"][k] == local.manifest["dedup"][k], k
