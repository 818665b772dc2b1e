"""One big input file spreads over several shards: Parquet by row ranges (cut at row-group
boundaries where one is near, else inside a row group), JSONL by byte ranges cut at line
starts; ids, rows and rejects equal the whole-file read; jobs on a split file select what the
unsplit job selects; resume stays shard-level. Also `file://` input URIs."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import job_dict, make_docs
from thresher import run
from thresher.config import InputSpec
from thresher.io import readers, splits
from thresher.io.readers import plan_shards, read_shard


def read_all(spec: InputSpec) -> tuple[pa.Table, pa.Table, list]:
    goods, bads = [], []
    shards = plan_shards(spec)
    for shard in shards:
        for rb in read_shard(shard, spec):
            goods.append(rb.good)
            bads.append(rb.rejected)
    return pa.Table.from_batches(goods), pa.Table.from_batches(bads, schema=readers.REJECT_SCHEMA), shards


def write_big_parquet(path: Path, rows: int, group: int | None) -> Path:
    """`group` None: pyarrow's default, one row group for up to 1,048,576 rows."""
    docs = make_docs(rows, seed=3, min_words=5, max_words=30)
    pq.write_table(pa.table({"text": docs, "n": list(range(rows))}), path, row_group_size=group)
    return path


# -- Parquet ---------------------------------------------------------------------------------


def test_parquet_file_splits_by_row_groups_and_reads_like_the_whole(tmp_path: Path) -> None:
    path = write_big_parquet(tmp_path / "big.parquet", 1000, 100)  # 10 row groups
    whole, _, one = read_all(InputSpec(path=str(path), batch_rows=64))
    split, _, shards = read_all(InputSpec(path=str(path), batch_rows=64, shard_rows=400))
    assert len(one) == 1 and one[0].hi is None
    assert len(shards) == 3  # ceil(1000 / 400) ranges cut at the row-group boundaries nearest 333 and 667 rows
    assert [(s.lo, s.hi) for s in shards] == [(0, 300), (300, 700), (700, 1000)]
    assert [s.rows for s in shards] == [300, 400, 300] and [s.start for s in shards] == [0, 300, 700]
    assert len({s.fingerprint for s in shards}) == 3 and one[0].fingerprint not in {s.fingerprint for s in shards}
    assert split.equals(whole)  # same ids (`big.parquet:<row in the file>`), same order, same _row
    assert split.column("id")[700].as_py() == "big.parquet:700"
    assert shards[1].name.endswith("[rows 300:700]")


def test_one_row_group_splits_inside_it_and_reads_like_the_whole(tmp_path: Path) -> None:
    """pandas / pyarrow write one row group: the file still becomes ceil(2500 / 1000) shards,
    whose union is the whole-file read (ids, _row, order, rejected rows)."""
    docs = make_docs(2500, seed=4, min_words=5, max_words=30)
    for i in (0, 999, 1000, 1666, 1667, 2499, 1234):  # rejects on both sides of the cuts
        docs[i] = "   " if i % 2 else None
    path = tmp_path / "one.parquet"
    pq.write_table(pa.table({"text": docs, "n": list(range(2500))}), path)
    assert pq.ParquetFile(path).metadata.num_row_groups == 1
    for batch_rows in (64, 333, 5000):
        whole, whole_bad, one = read_all(InputSpec(path=str(path), batch_rows=batch_rows, shard_rows=5000))
        good, bad, shards = read_all(InputSpec(path=str(path), batch_rows=batch_rows, shard_rows=1000))
        assert len(one) == 1 and len(shards) == 3
        assert [(s.start, s.rows) for s in shards] == [(0, 833), (833, 833), (1666, 834)]
        assert all((s.lo, s.hi) == (s.start, s.start + s.rows) for s in shards)
        assert len({s.fingerprint for s in shards}) == 3
        assert good.equals(whole) and good.num_rows == 2493
        assert good.column("id").to_pylist() == [f"one.parquet:{r}" for r in good.column("_row").to_pylist()]
        assert good.column("n").to_pylist() == good.column("_row").to_pylist()
        assert bad.equals(whole_bad) and sorted(bad.column("_row").to_pylist()) == [0, 999, 1000, 1234, 1666, 1667,
                                                                                    2499]
    assert plan_shards(InputSpec(path=str(path), shard_rows=1000)) == shards  # deterministic


def test_many_small_row_groups_still_cut_between_groups(tmp_path: Path) -> None:
    path = write_big_parquet(tmp_path / "groups.parquet", 2500, 50)  # 50 groups of 50 rows
    whole, _, _ = read_all(InputSpec(path=str(path), batch_rows=64, shard_rows=5000))
    good, _, shards = read_all(InputSpec(path=str(path), batch_rows=64, shard_rows=1000))
    assert [(s.lo, s.hi) for s in shards] == [(0, 850), (850, 1650), (1650, 2500)]  # nearest 833 and 1667
    assert all(s.lo % 50 == 0 for s in shards) and good.equals(whole)


def test_a_12886_row_one_group_file_splits_for_two_workers(tmp_path: Path) -> None:
    """The issue's file (one row group, as pandas writes it) spreads over two workers."""
    path = write_big_parquet(tmp_path / "issue.parquet", 12_886, None)
    assert pq.ParquetFile(path).metadata.num_row_groups == 1
    assert len(plan_shards(InputSpec(path=str(path)))) == 1  # the default keeps shards large
    shards = plan_shards(InputSpec(path=str(path), shard_rows=10_000))
    assert [(s.start, s.rows) for s in shards] == [(0, 6443), (6443, 6443)]
    assert shards[1].name.endswith("[rows 6443:12886]")


def test_row_ranges() -> None:
    assert splits.row_ranges([12886], 1000) == [(k * 12886 // 13, (k + 1) * 12886 // 13) for k in range(13)]
    assert splits.row_ranges([10] * 10, 1000) == [(0, 100)]
    assert splits.row_ranges([], 10) == [(0, 0)]
    assert splits.row_ranges([5, 5, 5, 5], 10) == [(0, 10), (10, 20)]
    assert splits.row_ranges([0, 5, 0, 5, 0], 5) == [(0, 5), (5, 10)]
    assert splits.row_ranges([100, 100], 100) == [(0, 100), (100, 200)]
    # a boundary within a quarter of a shard (s = 100) of the even cut wins; one further away does not
    assert splits.row_ranges([125, 75], 100) == [(0, 125), (125, 200)]
    assert splits.row_ranges([126, 74], 100) == [(0, 100), (100, 200)]
    assert splits.row_ranges([1024] * 12 + [598], 2000) == [  # 12,886 rows in 13 groups -> 7 shards
        (0, 2048), (2048, 4096), (4096, 5120), (5120, 7168), (7168, 9216), (9216, 11264), (11264, 12886)]
    rng = random.Random(1)
    for _ in range(2000):
        sizes = [rng.choice([0, 1, 2, 7, 50, 300, 1000]) for _ in range(rng.randint(0, 8))]
        target = rng.randint(1, 400)
        ranges = splits.row_ranges(sizes, target)
        total = sum(sizes)
        assert ranges[0][0] == 0 and ranges[-1][1] == total
        assert all(a[1] == b[0] and b[1] > b[0] for a, b in zip(ranges, ranges[1:]))
        assert len(ranges) == max(1, -(-total // target))  # ceil(total / target) shards
        assert all(hi - lo <= 1.5 * target + 1 for lo, hi in ranges)  # s + s / 4 + s / 4 at most, s <= target


# -- JSONL -----------------------------------------------------------------------------------


def tricky_jsonl(n: int = 60) -> tuple[bytes, set[int]]:
    """Lines with multi-byte UTF-8, CRLF / LF / lone CR endings, blank and bad lines; no final newline."""
    rng = random.Random(5)
    out, bad = [], set()
    for i in range(n):
        if i % 7 == 3:
            line, _ = b'{"text": broken', bad.add(i)
        elif i % 11 == 5:
            line, _ = b"   ", bad.add(i)  # blank_line
        elif i % 13 == 8:
            line, _ = b'{"text": "caf\xc3', bad.add(i)  # invalid UTF-8
        else:
            text = " ".join(rng.choice(["d\u00e9j\u00e0", "\u65e5\u672c\u8a9e", "\U0001f600 emoji", "plain words"])
                            for _ in range(rng.randint(1, 6)))
            line = json.dumps({"text": f"{i} {text}", "k": i}, ensure_ascii=False).encode()
        end = [b"\n", b"\r\n", b"\r"][i % 3]
        out.append(line + (end if i < n - 1 else b""))
    return b"".join(out), bad


def test_scan_lines_counts_like_the_reader() -> None:
    rng = random.Random(0)
    for trial in range(300):
        data = bytes(rng.choice(b"ab\r\n\xc3\xa9") for _ in range(rng.randint(0, 80)))
        lines = list(readers._lines([data]))
        for block in (1, 2, 3, 7, 64):
            chunks = [data[i:i + 5] for i in range(0, len(data), 5)]
            index = splits.scan_lines(chunks, block)
            assert index.size == len(data) and index.lines == len(lines), (data, block)
            # the line starts, as the reader splits lines
            starts = [0] if data else []
            for q in range(len(data) - 1):
                if data[q:q + 1] == b"\n" or (data[q:q + 1] == b"\r" and data[q + 1:q + 2] != b"\n"):
                    starts.append(q + 1)
            for b in range(len(index.first)):
                inside = [p for p in starts if b * block <= p < (b + 1) * block]
                assert index.first[b] == (inside[0] if inside else -1), (data, block, b)
                assert index.before[b] == sum(p < b * block for p in starts)


@pytest.mark.parametrize("block", [8, 64, 1 << 12])
def test_jsonl_byte_ranges_read_like_the_whole_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    block: int) -> None:
    data, bad = tricky_jsonl()
    path = tmp_path / "big.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + data)  # a UTF-8 BOM: only the first shard drops it
    monkeypatch.setattr(splits, "MIN_BLOCK", block)
    monkeypatch.setattr(readers, "_CHUNK", 13)
    readers._LINE_INDEX.clear()
    whole_good, whole_bad, one = read_all(InputSpec(path=str(path), batch_rows=4))
    good, rejected, shards = read_all(InputSpec(path=str(path), batch_rows=4, shard_rows=5))
    assert len(one) == 1 and whole_good.num_rows + whole_bad.num_rows == 60
    assert sorted(whole_bad.column("_row").to_pylist()) == sorted(bad)
    if block == 1 << 12:  # the file is smaller than one block: no cut
        assert len(shards) == 1
        return
    assert len(shards) >= 6
    assert [s.kind for s in shards] == ["jsonl"] * len(shards)
    assert shards[0].lo == 0 and shards[-1].hi == path.stat().st_size
    assert all(a.hi == b.lo and a.start + a.rows == b.start for a, b in zip(shards, shards[1:]))
    assert good.equals(whole_good)  # ids `big.jsonl:<line>`, meta, text, _row
    assert rejected.sort_by("_row").equals(whole_bad.sort_by("_row"))  # every bad line quarantined once
    starts = {s.start for s in shards}
    if block == 8:
        assert starts & bad, "no shard starts at a bad line"
    assert good.column("text")[0].as_py().startswith("0 ")  # the BOM is gone


def test_compressed_and_small_jsonl_stay_whole(tmp_path: Path) -> None:
    import gzip

    data, _ = tricky_jsonl()
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(data))
    assert len(plan_shards(InputSpec(path=str(tmp_path / "a.jsonl.gz"), shard_rows=5))) == 1
    (tmp_path / "b.jsonl").write_bytes(data[:40])
    assert len(plan_shards(InputSpec(path=str(tmp_path / "b.jsonl"), shard_rows=100))) == 1
    utf16 = "\n".join(json.dumps({"text": f"doc {i}"}) for i in range(5000)).encode("utf-16")
    (tmp_path / "c.jsonl").write_bytes(utf16)
    shards = plan_shards(InputSpec(path=str(tmp_path / "c.jsonl"), shard_rows=100))
    assert len(shards) == 1  # UTF-16 is decoded whole


# -- jobs ------------------------------------------------------------------------------------


def selected_ids(folder: Path) -> list[str]:
    return sorted(i for p in folder.glob("part-*.parquet") for i in pq.read_table(p).column("id").to_pylist())


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_job_on_a_split_file_with_two_workers_selects_like_unsplit(tmp_path: Path, fmt: str) -> None:
    if fmt == "parquet":
        path = write_big_parquet(tmp_path / "big.parquet", 900, 60)
    else:
        path = tmp_path / "big.jsonl"
        path.write_bytes(b"".join(json.dumps({"text": d}).encode() + b"\n"
                                  for d in make_docs(900, seed=3, min_words=5, max_words=30)))
    scorers = [{"type": "heuristics"}]
    sel = {"type": "topk", "column": "heuristics_stopword_count", "budget": 0.3}
    whole = run(job_dict(path, tmp_path / "whole", scorers=scorers, selector=sel), progress=False)
    split = run(job_dict(path, tmp_path / "split", scorers=scorers, selector=sel,
                         input={"path": str(path), "shard_rows": 200}, engine={"local": {"workers": 2}}),
                progress=False)
    assert len(whole.manifest["inputs"]) == 1 and len(split.manifest["inputs"]) >= 4
    assert selected_ids(tmp_path / "whole") == selected_ids(tmp_path / "split")
    assert whole.manifest["counts"] == split.manifest["counts"]


def test_job_on_a_one_row_group_file_with_two_workers_selects_like_unsplit(tmp_path: Path) -> None:
    path = write_big_parquet(tmp_path / "one.parquet", 900, None)
    assert pq.ParquetFile(path).metadata.num_row_groups == 1
    scorers = [{"type": "heuristics"}]
    sel = {"type": "topk", "column": "heuristics_stopword_count", "budget": 0.3}
    whole = run(job_dict(path, tmp_path / "whole", scorers=scorers, selector=sel,
                         input={"path": str(path), "shard_rows": 1_000_000}), progress=False)
    split = run(job_dict(path, tmp_path / "split", scorers=scorers, selector=sel,
                         input={"path": str(path), "shard_rows": 200}, engine={"local": {"workers": 2}}),
                progress=False)
    assert len(whole.manifest["inputs"]) == 1 and len(split.manifest["inputs"]) == 5
    assert selected_ids(tmp_path / "whole") == selected_ids(tmp_path / "split")
    assert whole.manifest["counts"] == split.manifest["counts"]


def test_resume_redoes_only_unfinished_shards_of_a_split_file(tmp_path: Path) -> None:
    path = write_big_parquet(tmp_path / "big.parquet", 600, 50)
    job = job_dict(path, tmp_path / "out", input={"path": str(path), "shard_rows": 100},
                   selector={"type": "random", "budget": 0.3})
    first = run(job, progress=False)
    n = len(first.manifest["inputs"])
    assert n == 6
    parts = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "out").glob("part-*.parquet")}
    # as if killed while shards 2 and 4 were scoring: their markers and files are missing
    done = tmp_path / "out" / "_thresher" / "done"
    for i in (2, 4):
        (done / f"score-{i:05d}.json").unlink()
        (tmp_path / "out" / "_scores" / f"part-{i:05d}.parquet").unlink()
    (tmp_path / "out" / "_manifest.json").unlink()
    again = run(job, progress=False)
    assert again.manifest["resumed_shards"]["score"] == n - 2
    assert again.manifest["counts"] == first.manifest["counts"]
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in (tmp_path / "out").glob("part-*.parquet")} == parts


# -- URIs ------------------------------------------------------------------------------------


def test_file_uri_inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(splits, "MIN_BLOCK", 64)
    (tmp_path / "d").mkdir()
    (tmp_path / "e").mkdir()
    path = write_big_parquet(tmp_path / "d" / "big.parquet", 400, 50)
    data, _ = tricky_jsonl()
    (tmp_path / "e" / "x.jsonl").write_bytes(data)
    local, _, _ = read_all(InputSpec(path=str(path), shard_rows=150))
    uri, _, shards = read_all(InputSpec(path=f"file://{path}", shard_rows=150))
    assert len(shards) == 3 and uri.equals(local)
    globbed = plan_shards(InputSpec(path=f"file://{tmp_path}/e/*.jsonl", shard_rows=10))
    assert len(globbed) > 1 and all(s.paths[0].startswith("file://") for s in globbed)
    folder = plan_shards(InputSpec(path=f"file://{tmp_path}/d"))
    assert [s.paths[0] for s in folder] == [f"file://{tmp_path}/d/big.parquet"]


def test_s3_inputs_split_and_read_like_local_files(tmp_path: Path, s3_bucket: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Parquet and JSONL inputs on S3 (a local moto server): file, folder and glob; split shards
    read like the local copies; a job runs on them."""
    from thresher.io import storage

    monkeypatch.setattr(splits, "MIN_BLOCK", 64)
    storage.clear_cache()
    local = write_big_parquet(tmp_path / "big.parquet", 400, 50)
    data, _ = tricky_jsonl()
    (tmp_path / "x.jsonl").write_bytes(data)
    for name in ("big.parquet", "x.jsonl"):
        storage.put_file(tmp_path / name, f"{s3_bucket}/in/{name}")
    want, _, _ = read_all(InputSpec(path=str(local), shard_rows=150))
    got, _, shards = read_all(InputSpec(path=f"{s3_bucket}/in/big.parquet", shard_rows=150))
    assert len(shards) == 3 and got.equals(want)
    assert got.column("id")[0].as_py() == "big.parquet:0"
    want, wbad, _ = read_all(InputSpec(path=str(tmp_path / "x.jsonl"), shard_rows=10))
    got, gbad, shards = read_all(InputSpec(path=f"{s3_bucket}/in/*.jsonl", shard_rows=10))
    assert len(shards) > 1 and got.equals(want) and gbad.sort_by("_row").equals(wbad.sort_by("_row"))
    storage.put_file(local, f"{s3_bucket}/pq/a/big.parquet")
    storage.put_file(local, f"{s3_bucket}/pq/_skip/big.parquet")  # `_` folders are not input
    folder = plan_shards(InputSpec(path=f"{s3_bucket}/pq/"))
    assert [s.paths[0] for s in folder] == [f"{s3_bucket}/pq/a/big.parquet"] and folder[0].id_prefix == "big.parquet"
    res = run(job_dict(f"{s3_bucket}/in/big.parquet", tmp_path / "out", input={"path": f"{s3_bucket}/in/big.parquet",
                                                                                "shard_rows": 150},
                       engine={"local": {"workers": 2}}), progress=False)
    assert res.manifest["counts"]["input_rows"] == 400 and len(res.manifest["inputs"]) == 3
    with pytest.raises(Exception, match="no such file or folder|matches no file"):
        plan_shards(InputSpec(path=f"{s3_bucket}/in/missing.parquet"))


def test_sigkill_on_a_split_file_then_rerun_resumes_shard_by_shard(tmp_path: Path) -> None:
    """A real kill: one Parquet file of 24 shards; the rerun skips the shards scored before the
    kill and gives the output of an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    path = write_big_parquet(tmp_path / "big.parquet", 4800, 100)
    job = job_dict(path, tmp_path / "killed", input={"path": str(path), "shard_rows": 200},
                   scorers=[{"type": "heuristics"}], selector={"type": "random", "budget": 0.3})
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    cmd = [sys.executable, "-m", "thresher.commands.cli", "run", str(tmp_path / "job.yaml"), "-q"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done = tmp_path / "killed" / "_thresher" / "done"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(done.glob("score-*.json"))) < 3:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = len(list(done.glob("score-*.json")))
    assert 3 <= finished < 24, "the job finished before it was killed"
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    m = json.loads((tmp_path / "killed" / "_manifest.json").read_text())
    assert len(m["inputs"]) == 24 and m["resumed_shards"]["score"] >= finished
    clean = run({**job, "output": {"path": str(tmp_path / "clean")}}, progress=False)
    assert m["counts"] == clean.manifest["counts"]
    for part in sorted((tmp_path / "clean").glob("part-*.parquet")):
        assert hashlib.sha256(part.read_bytes()).digest() == \
            hashlib.sha256((tmp_path / "killed" / part.name).read_bytes()).digest()


def test_a_hint_when_model_scorers_would_leave_workers_idle(tmp_path: Path) -> None:
    from thresher.config import JobSpec
    from thresher.pipelines.runner import few_shards_hint

    def job(scorer: str, workers: int = 2) -> JobSpec:
        return JobSpec.model_validate({"input": {"path": str(tmp_path)}, "scorers": [{"type": scorer}],
                                       "engine": {"local": {"workers": workers}}, "output": {"path": str(tmp_path / "o")}})

    hint = few_shards_hint(job("embedding"), 1)
    assert hint is not None and "1 shard for 2 workers" in hint and "input.shard_rows" in hint
    assert few_shards_hint(job("embedding"), 2) is None  # every worker has a shard
    assert few_shards_hint(job("heuristics"), 1) is None  # cheap scoring: nothing to say
