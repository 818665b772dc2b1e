"""`input.score_columns`: scores that come with the data join the score table under their own
names, so filters and selectors (topk, DATAMASK) use them like a scorer's columns; plan-time
errors for a missing column (did you mean, the file named) and for clashes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import job_dict, make_docs
from thresher import run
from thresher.config import JobError, JobSpec

N = 200


def scored_table(n: int = N, dim: int = 8) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    quality = rng.permutation(n).astype(np.float64) / n  # distinct: the top k is unambiguous
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)  # unit length, as DATAMASK's pws objective wants
    table = pa.table({"text": make_docs(n, seed=4, min_words=5, max_words=20),
                      "quality": pa.array(quality, pa.float64()),
                      "emb": pa.array(list(emb), pa.list_(pa.float32()))})
    return table, quality, emb


def write_input(tmp_path: Path, fmt: str) -> tuple[Path, np.ndarray, np.ndarray]:
    table, quality, emb = scored_table()
    if fmt == "parquet":
        path = tmp_path / "in.parquet"
        pq.write_table(table, path, row_group_size=50)
    else:
        path = tmp_path / "in.jsonl"
        rows = table.to_pylist()
        path.write_text("".join(json.dumps({**r, "emb": [float(x) for x in r["emb"]]}) + "\n" for r in rows))
    return path, quality, emb


def selected(out: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("part-*.parquet"))])


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_topk_on_an_input_score_column(tmp_path: Path, fmt: str) -> None:
    path, quality, _ = write_input(tmp_path, fmt)
    res = run(job_dict(path, tmp_path / "out", input={"path": str(path), "score_columns": ["quality", "emb"],
                                                      "shard_rows": 70},
                       selector={"type": "topk", "column": "quality", "budget": 0.25}), progress=False)
    assert res.manifest["counts"]["selected"] == 50
    part = selected(tmp_path / "out")
    want = sorted(np.argsort(-quality)[:50].tolist())
    assert sorted(int(i.rsplit(":", 1)[1]) for i in part.column("id").to_pylist()) == want
    # the columns reach the parts once, with their values; the score table holds them too
    assert part.column_names.count("quality") == 1 and part.column_names.count("emb") == 1
    ids = [int(i.rsplit(":", 1)[1]) for i in part.column("id").to_pylist()]
    assert np.allclose(part.column("quality").to_numpy(), quality[ids])
    scores = pq.read_table(tmp_path / "out" / "_scores" / "part-00000.parquet")
    assert {"quality", "emb"} <= set(scores.column_names)
    if fmt == "parquet":
        assert scores.schema.field("emb").type == pa.list_(pa.float32())


def test_filters_and_datamask_on_input_score_columns(tmp_path: Path) -> None:
    path, quality, _ = write_input(tmp_path, "parquet")
    job = job_dict(path, tmp_path / "out", input={"path": str(path), "score_columns": ["quality", "emb"]},
                   filters=[{"column": "quality", "op": ">=", "value": 0.1}],
                   selector={"type": "datamask", "quality": "quality", "embedding": "emb", "budget": 0.3,
                             "lam": 1.0, "prune_fraction": 0.0, "steps": 200, "group_size": 16,
                             "device": "cpu", "threads": 1})
    res = run(job, progress=False)
    part = selected(tmp_path / "out")
    ids = np.array([int(i.rsplit(":", 1)[1]) for i in part.column("id").to_pylist()])
    assert len(ids) == res.manifest["counts"]["selected"] == 60
    assert quality[ids].min() >= 0.1  # the filter on an input score column held
    top = set(np.argsort(-quality)[:60].tolist())
    assert len(top & set(ids.tolist())) >= 54  # lam = 1: quality alone, the top 30% (give or take)
    assert "datamask_logit" in part.column_names


def test_a_missing_score_column_is_a_plan_time_error(tmp_path: Path) -> None:
    path, _, _ = write_input(tmp_path, "parquet")
    job = job_dict(path, tmp_path / "out", input={"path": str(path), "score_columns": ["qualty"]})
    with pytest.raises(JobError) as err:
        run(job, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and "input.score_columns.0" in msg and "in.parquet" in msg
    assert "did you mean 'quality'?" in msg and "'emb'" in msg
    assert not (tmp_path / "out").exists()
    jpath, _, _ = write_input(tmp_path, "jsonl")
    job = job_dict(jpath, tmp_path / "out2", input={"path": str(jpath), "score_columns": ["qualty"]})
    with pytest.raises(JobError, match=r"in\.jsonl.*did you mean 'quality'\?"):
        run(job, progress=False)


def test_score_column_clashes_and_types_are_plan_time_errors(tmp_path: Path) -> None:
    path, _, _ = write_input(tmp_path, "parquet")
    table = pq.read_table(path).append_column("heuristics_pass", pa.array([True] * N))
    pq.write_table(table, tmp_path / "h.parquet")
    h = tmp_path / "h.parquet"
    job = job_dict(h, tmp_path / "o1", input={"path": str(h), "score_columns": ["heuristics_pass"]},
                   scorers=[{"type": "heuristics"}])
    with pytest.raises(JobError, match=r"scorers\.0: its column 'heuristics_pass' is also an input score column"):
        run(job, progress=False)
    job = job_dict(path, tmp_path / "o2", input={"path": str(path), "score_columns": ["n_words"]})
    with pytest.raises(JobError, match=r"input\.score_columns\.0: 'n_words' is one of thresher's own columns"):
        run(job, progress=False)
    job = job_dict(path, tmp_path / "o3", input={"path": str(path), "score_columns": ["text"]})
    with pytest.raises(JobError, match=r"'text'.*(holds string|read as the id or a text)"):
        run(job, progress=False)
    with pytest.raises(ValueError, match="named more than once"):
        JobSpec.model_validate(job_dict(path, tmp_path / "o4", input={"path": str(path),
                                                                      "score_columns": ["emb", "emb"]}))


def test_without_score_columns_a_filter_on_an_input_column_still_fails(tmp_path: Path) -> None:
    path, _, _ = write_input(tmp_path, "parquet")
    job = job_dict(path, tmp_path / "out", filters=[{"column": "quality", "op": ">", "value": 0.5}])
    with pytest.raises(JobError, match="filters.0.column: no column 'quality'"):
        run(job, progress=False)


def test_score_columns_change_the_score_hash_only_when_given(tmp_path: Path) -> None:
    base = job_dict(tmp_path / "x.parquet", tmp_path / "out")
    plain = JobSpec.model_validate(base)
    with_cols = JobSpec.model_validate({**base, "input": {**base["input"], "score_columns": ["quality"]}})
    assert plain.score_hash() != with_cols.score_hash()
    # a job without score_columns hashes as before the setting existed
    from thresher import config

    old = config._hash({"input": plain.input.model_dump(mode="json", exclude={"score_columns"}),
                        "scorers": plain.scorers, "seed": plain.seed})
    assert plain.score_hash() == old


def test_score_columns_with_an_in_memory_table(tmp_path: Path) -> None:
    table, quality, _ = scored_table()
    res = run({"input": {"score_columns": ["quality"], "shard_rows": 64}, "scorers": [],
               "selector": {"type": "topk", "column": "quality", "budget": 0.1},
               "engine": {"local": {"workers": 1}}, "output": {"path": str(tmp_path / "out")}}, data=table,
              progress=False)
    assert res.manifest["counts"]["selected"] == 20
    ids = sorted(int(i.rsplit(":", 1)[1]) for i in selected(tmp_path / "out").column("id").to_pylist())
    assert ids == sorted(np.argsort(-quality)[:20].tolist())
