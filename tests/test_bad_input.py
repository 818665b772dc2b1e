"""Bad input: a clear error naming the file/row/key, and every row accounted for."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import job_dict, make_docs, write_jsonl, write_parquet_corpus
from thresher import run
from thresher.config import JobError


def run_job(input_path: Path, out: Path, **over):
    return run(job_dict(input_path, out, **over), progress=False)


def assert_accounted(manifest: dict) -> None:
    c = manifest["counts"]
    assert c["selected"] + c["not_selected"]["total"] + c["rejected"]["total"] == c["input_rows"]
    assert sum(s["rows"] for s in manifest["shards"]) == c["selected"]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(JobError, match=r"nope\.parquet.*no such file"):
        run_job(tmp_path / "nope.parquet", tmp_path / "out")


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(JobError, match="holds no Parquet, JSONL or text files"):
        run_job(tmp_path / "empty", tmp_path / "out")


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_parquet_names_the_file(tmp_path: Path, damage: str) -> None:
    paths = write_parquet_corpus(tmp_path / "c", 2, 50)
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) // 2] if damage == "truncate" else b"PAR1" + b"\x00" * 200)
    with pytest.raises(JobError, match=r"shard-001\.parquet: not a readable Parquet file"):
        run_job(tmp_path / "c", tmp_path / "out")
    assert not (tmp_path / "out" / "part-00000.parquet").exists()  # nothing half-written


def test_jsonl_broken_lines_are_rejected_with_line_numbers(tmp_path: Path) -> None:
    docs = make_docs(10)
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": d} for d in docs],
                       raw_lines={2: b'{"text": "unterminated', 5: b"\xff\xfe not utf8", 7: b"[1, 2]"})
    res = run_job(path, tmp_path / "out", selector={"type": "all"})
    m = res.manifest
    assert_accounted(m)
    assert m["counts"]["input_rows"] == 10
    by = m["counts"]["rejected"]["by_reason"]
    assert by["invalid_utf8"] == 1 and by["bad_json: not an object"] == 1
    assert sum(v for k, v in by.items() if k.startswith("bad_json")) == 2
    rej = pq.read_table(tmp_path / "out" / "_rejected" / "part-00000.parquet").to_pylist()
    assert sorted(r["_row"] + 1 for r in rej) == [3, 6, 8]  # 1-based line numbers
    assert {r["raw"] for r in rej} >= {b"\xff\xfe not utf8"}  # raw bytes kept, nothing lost


def test_jsonl_fail_policy_names_the_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "ok doc"}] * 4, raw_lines={2: b"{broken"})
    with pytest.raises(JobError, match=r"d\.jsonl: line 3: bad_json"):
        run_job(path, tmp_path / "out", input={"path": str(path), "on_bad_row": "fail"})


def test_missing_text_column(tmp_path: Path) -> None:
    pq.write_table(pa.table({"body": ["a", "b"]}), tmp_path / "x.parquet")
    with pytest.raises(JobError, match=r"x\.parquet: column 'text' not found"):
        run_job(tmp_path / "x.parquet", tmp_path / "out")


def test_text_column_of_wrong_type(tmp_path: Path) -> None:
    pq.write_table(pa.table({"text": [1, 2, 3]}), tmp_path / "x.parquet")
    with pytest.raises(JobError, match=r"x\.parquet: column 'text' has type int64, expected a string"):
        run_job(tmp_path / "x.parquet", tmp_path / "out")


def test_null_and_empty_texts_are_rejected_and_counted(tmp_path: Path) -> None:
    texts = ["good text one", None, "", "   \n\t", "good text two"]
    pq.write_table(pa.table({"text": texts}), tmp_path / "x.parquet")
    m = run_job(tmp_path / "x.parquet", tmp_path / "out", selector={"type": "all"}).manifest
    assert_accounted(m)
    assert m["counts"]["rejected"]["by_reason"] == {"empty_text": 3}
    assert m["counts"]["selected"] == 2


def test_invalid_utf8_in_a_parquet_binary_column(tmp_path: Path) -> None:
    pq.write_table(pa.table({"text": pa.array([b"fine text", b"bad \xc3\x28 bytes", b"more fine"], pa.binary())}),
                   tmp_path / "x.parquet")
    m = run_job(tmp_path / "x.parquet", tmp_path / "out", selector={"type": "all"}).manifest
    assert_accounted(m)
    assert m["counts"]["rejected"]["by_reason"] == {"invalid_utf8": 1}
    rej = pq.read_table(tmp_path / "out" / "_rejected" / "part-00000.parquet").to_pylist()
    assert rej[0]["raw"] == b"bad \xc3\x28 bytes" and rej[0]["_row"] == 1


def test_a_50mb_single_document(tmp_path: Path) -> None:
    big = ("word " * 10_000_000)[:50_000_000]
    pq.write_table(pa.table({"text": [big, "small doc here"]}), tmp_path / "x.parquet")
    m = run_job(tmp_path / "x.parquet", tmp_path / "out", selector={"type": "all"}).manifest
    assert_accounted(m)
    out = pq.read_table(tmp_path / "out" / "part-00000.parquet")
    assert out.column("n_chars").to_pylist()[0] == 50_000_000
    assert out.column("text")[0].as_py() == big


def test_duplicate_ids_keep_the_first_and_reject_the_rest(tmp_path: Path) -> None:
    recs = [{"id": "a", "text": "first a"}, {"id": "b", "text": "b"}, {"id": "a", "text": "second a"}]
    path = write_jsonl(tmp_path / "d.jsonl", recs)
    m = run_job(path, tmp_path / "out", input={"path": str(path), "id_column": "id"},
                selector={"type": "all"}).manifest
    assert_accounted(m)
    assert m["counts"]["rejected"]["by_reason"] == {"duplicate_id": 1}
    out = pq.read_table(tmp_path / "out" / "part-00000.parquet").to_pylist()
    assert [(r["id"], r["text"]) for r in out] == [("a", "first a"), ("b", "b")]


def test_output_folder_of_another_job_is_refused(tmp_path: Path, corpus: Path) -> None:
    run_job(corpus, tmp_path / "out")
    with pytest.raises(JobError, match="holds another job's output") as err:
        run_job(corpus, tmp_path / "out", selector={"type": "random", "budget": 0.5})
    # the message names what changed, key by key
    assert "selector.type: 'topk' -> 'random'" in str(err.value)
    assert "selector.budget: 0.25 -> 0.5" in str(err.value)
    assert "selector.column: 'n_words' -> (not set)" in str(err.value)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(JobError, match="not empty and was not written by thresher"):
        run_job(corpus, tmp_path / "foreign")
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine"


def test_manifest_is_json_with_counts(tmp_path: Path, corpus: Path) -> None:
    run_job(corpus, tmp_path / "out")
    m = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert_accounted(m)
    assert m["counts"]["input_rows"] == 1200 and m["counts"]["selected"] == 300
