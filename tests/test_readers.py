"""Readers: every supported input format, ids, batch bounds, instruction columns."""

from __future__ import annotations

import gzip
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from conftest import make_docs, write_jsonl, write_parquet_corpus
from thresher.config import InputSpec, JobError
from thresher.io.readers import as_arrow_table, plan_shards, read_shard


def read_all(spec: InputSpec, table: pa.Table | None = None) -> tuple[pa.Table, pa.Table]:
    goods, bads = [], []
    for shard in plan_shards(spec, table):
        piece = table.slice(shard.start, shard.rows) if table is not None else None
        for rb in read_shard(shard, spec, piece):
            goods.append(rb.good)
            bads.append(rb.rejected)
    good = pa.Table.from_batches(goods) if goods else pa.table({})
    return good, pa.Table.from_batches(bads)


def test_parquet_folder_glob_and_row_group_streaming(tmp_path: Path) -> None:
    write_parquet_corpus(tmp_path / "c", 3, 50)
    spec = InputSpec(path=str(tmp_path / "c"), batch_rows=16)
    shards = plan_shards(spec)
    assert [s.rows for s in shards] == [50, 50, 50]
    batches = [rb.good for rb in read_shard(shards[0], spec)]
    assert max(b.num_rows for b in batches) <= 16  # memory bounded by batch size
    good, bad = read_all(spec)
    assert good.num_rows == 150 and bad.num_rows == 0
    assert good.column_names[:3] == ["id", "text", "_row"] and "url" in good.column_names
    glob_spec = InputSpec(path=str(tmp_path / "c" / "shard-00[01].parquet"))
    assert len(plan_shards(glob_spec)) == 2


def test_generated_ids_are_deterministic_and_unique(tmp_path: Path) -> None:
    write_parquet_corpus(tmp_path / "c", 2, 10)
    spec = InputSpec(path=str(tmp_path / "c"))
    a, _ = read_all(spec)
    b, _ = read_all(spec)
    assert a.column("id").to_pylist() == b.column("id").to_pylist()
    assert len(set(a.column("id").to_pylist())) == 20
    assert a.column("id")[0].as_py() == "shard-000.parquet:0"


def test_id_column_is_used(tmp_path: Path) -> None:
    pq.write_table(pa.table({"doc": ["a b", "c d"], "key": [11, 12]}), tmp_path / "x.parquet")
    good, _ = read_all(InputSpec(path=str(tmp_path / "x.parquet"), text_column="doc", id_column="key"))
    assert good.column("id").to_pylist() == ["11", "12"]
    assert good.column("text").to_pylist() == ["a b", "c d"]


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst"])
def test_jsonl_compressions(tmp_path: Path, suffix: str) -> None:
    docs = make_docs(30)
    raw = b"".join(b'{"text": %s, "lang": "en"}\n' % pa.scalar(d).as_py().__repr__().replace("'", '"').encode()
                   for d in docs)
    path = tmp_path / f"d{suffix}"
    if suffix.endswith(".gz"):
        path.write_bytes(gzip.compress(raw))
    elif suffix.endswith(".zst"):
        path.write_bytes(zstandard.ZstdCompressor().compress(raw))
    else:
        path.write_bytes(raw)
    good, bad = read_all(InputSpec(path=str(path), batch_rows=7))
    assert good.column("text").to_pylist() == docs
    assert bad.num_rows == 0
    assert good.column("meta")[0].as_py() == '{"lang": "en"}'


def test_datasets_folder_and_in_memory_dataset(tmp_path: Path) -> None:
    import datasets

    docs = make_docs(40)
    dset = datasets.Dataset.from_dict({"text": docs, "label": list(range(40))})
    dset.save_to_disk(str(tmp_path / "ds"))
    good, _ = read_all(InputSpec(path=str(tmp_path / "ds")))
    assert good.column("text").to_pylist() == docs and good.column("label").to_pylist() == list(range(40))
    table = as_arrow_table(dset)
    good2, _ = read_all(InputSpec(shard_rows=15), table)
    assert good2.column("text").to_pylist() == docs
    assert good2.column("id").to_pylist() == [f"mem:{i}" for i in range(40)]
    # a filtered (indexed) Dataset is materialised correctly
    filtered = as_arrow_table(dset.filter(lambda r: r["label"] % 2 == 0))
    assert filtered.column("label").to_pylist() == list(range(0, 40, 2))


def test_text_files_one_document_each(tmp_path: Path) -> None:
    for topic in ("a", "b"):
        (tmp_path / "t" / topic).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "t" / topic / f"{i}.txt").write_text(f"{topic} document {i}")
    good, _ = read_all(InputSpec(path=str(tmp_path / "t" / "*" / "*.txt"), shard_rows=4))
    assert sorted(good.column("id").to_pylist()) == [f"{t}/{i}.txt" for t in "ab" for i in range(3)]


def test_instruction_columns(tmp_path: Path) -> None:
    recs = [{"instruction": "Add 2 and 3.", "input": "", "output": "5"},
            {"instruction": "Reverse", "input": "abc", "output": "cba"},
            {"instruction": "Say hi", "input": "", "output": ""}]
    path = write_jsonl(tmp_path / "sft.jsonl", recs)
    spec = InputSpec(path=str(path), prompt_column="instruction", response_column="output", input_column="input")
    good, bad = read_all(spec)
    assert good.column("prompt").to_pylist() == ["Add 2 and 3.", "Reverse\n\nabc"]
    assert good.column("response").to_pylist() == ["5", "cba"]
    assert good.column("text")[0].as_py() == "Add 2 and 3.\n\n5"
    assert bad.column("reason").to_pylist() == ["empty_response"]


def test_mixed_formats_are_refused(tmp_path: Path) -> None:
    write_parquet_corpus(tmp_path / "m", 1, 5)
    write_jsonl(tmp_path / "m" / "x.jsonl", [{"text": "a"}])
    with pytest.raises(JobError, match="mixes formats"):
        plan_shards(InputSpec(path=str(tmp_path / "m")))


def test_lines_end_at_crlf_lf_or_cr_whatever_the_chunking() -> None:
    from thresher.io.readers import _lines

    data = b'a\r\nb\rc\n\nd\r\r\ne\r\n\rf'
    want = [b"a", b"b", b"c", b"", b"d", b"", b"e", b"", b"f"]
    assert data.splitlines() == want
    for size in range(1, len(data) + 1):
        chunks = [data[i:i + size] for i in range(0, len(data), size)]
        assert list(_lines(chunks)) == want, size
    assert list(_lines([b"x\n"])) == [b"x"] and list(_lines([b"x\n\n"])) == [b"x", b""]


def test_json_array_file_is_one_record_per_element(tmp_path: Path) -> None:
    import json

    docs = make_docs(5)
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"text": d, "n": i} for i, d in enumerate(docs)], indent=2))
    spec = InputSpec(path=str(path), batch_rows=2)
    assert [s.kind for s in plan_shards(spec)] == ["json"]
    good, bad = read_all(spec)
    assert good.column("text").to_pylist() == docs and bad.num_rows == 0
    assert good.column("id").to_pylist() == [f"d.json:{i}" for i in range(5)]
    assert good.column("meta")[0].as_py() == '{"n": 0}'
