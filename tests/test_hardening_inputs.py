"""Hardening, inputs: malformed files and rows, each a clear error or a quarantined row.

A bad row lands in `_rejected/` with its reason and raw bytes; a bad file is a one-line
`JobError` naming it, with nothing written. Every case that runs checks the accounting
(input rows == selected + not selected + rejected) against a row count made here from what
the test wrote (lines, array elements, Parquet rows), never the reader's own count.
"""

from __future__ import annotations

import codecs
import gzip
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from conftest import job_dict, make_docs
from thresher import run
from thresher.config import JobError

DOCS = make_docs(6, seed=11, min_words=8, max_words=24)
LINES = [json.dumps({"text": d}).encode() for d in DOCS[:5]]  # five good JSONL records


# -- helpers ----------------------------------------------------------------------------


def run_input(tmp_path: Path, path: Path, data: Any = None, **inp: Any) -> dict:
    job = job_dict(path, tmp_path / "out", input={"path": str(path), **inp}, selector={"type": "all"})
    if data is not None:
        del job["input"]["path"]
    return run(job, data=data, progress=False).manifest


def rejected(tmp_path: Path) -> list[dict]:
    parts = sorted((tmp_path / "out" / "_rejected").glob("part-*.parquet"))
    return [r for p in parts for r in pq.read_table(p).to_pylist()]


def output(tmp_path: Path) -> list[dict]:
    return [r for p in sorted((tmp_path / "out").glob("part-*.parquet")) for r in pq.read_table(p).to_pylist()]


def accounted(tmp_path: Path, manifest: dict, n_rows: int) -> dict[str, int]:
    """The invariant, against `n_rows` counted by the test; returns the rejects by reason."""
    c = manifest["counts"]
    assert c["input_rows"] == n_rows
    assert c["selected"] + c["not_selected"]["total"] + c["rejected"]["total"] == n_rows
    assert len(output(tmp_path)) == c["selected"]
    rows = rejected(tmp_path)
    assert len(rows) == c["rejected"]["total"]
    assert all(r["reason"] for r in rows)
    return c["rejected"]["by_reason"]


def refused(tmp_path: Path, path: Path | None, pattern: str, data: Any = None, **inp: Any) -> str:
    """The job stops with a one-line JobError matching `pattern`, and writes no Parquet file."""
    with pytest.raises(JobError) as err:
        run_input(tmp_path, path or tmp_path, data=data, **inp)
    msg = str(err.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    assert re.search(pattern, msg), msg
    assert not list((tmp_path / "out").rglob("*.parquet"))  # nothing (half-)written
    return msg


def jsonl(lines: list[bytes], end: bytes = b"\n") -> bytes:
    return b"".join(line + end for line in lines)


def n_lines(data: bytes) -> int:
    """Lines the way a person counts them: ended by \\r\\n, \\n or \\r (a last line needs no end)."""
    return len(re.findall(rb"[^\r\n]*(?:\r\n|\n|\r)|[^\r\n]+$", data))


def deep(n: int, open_: str = "[", close: str = "]") -> bytes:
    return (open_ * n + close * n).encode()


# -- one bad JSONL row among good ones: quarantined with its reason --------------------

BAD_ROWS = [  # (case, the bad line, its reason; a trailing * matches a prefix)
    ("lone_high_surrogate", b'{"text": "a \\ud800 b"}', "invalid_unicode"),
    ("lone_low_surrogate_in_meta", b'{"text": "fine words", "tag": "\\udc00"}', "invalid_unicode"),
    ("lone_surrogate_in_key", b'{"\\ud83d": 1, "text": "fine words"}', "invalid_unicode"),
    ("reversed_surrogate_pair", b'{"text": "x \\ude00\\ud83d y"}', "invalid_unicode"),
    ("array_nested_100k", deep(100_000), "bad_json: nesting too deep"),
    ("object_nested_100k", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "bad_json: nesting too deep"),
    ("text_nested_5000", b'{"text": ' + deep(5_000) + b"}", "bad_json: nesting too deep"),
    ("nan", b'{"text": "fine words", "score": NaN}', "bad_json: NaN is not valid JSON"),
    ("infinity", b'{"text": "fine words", "score": Infinity}', "bad_json: Infinity is not valid JSON"),
    ("minus_infinity", b'{"text": "fine words", "score": -Infinity}', "bad_json: -Infinity is not valid JSON"),
    ("duplicate_text_key", b'{"text": "one", "text": "two"}', "bad_json: duplicate key 'text'"),
    ("duplicate_nested_key", b'{"text": "fine", "m": {"b": 1, "b": 2}}', "bad_json: duplicate key 'b'"),
    ("huge_integer", b'{"text": "fine words", "n": ' + b"9" * 5000 + b"}", "bad_json: number too long"),
    ("float_out_of_range", b'{"text": "fine words", "x": -1e400}', "bad_json: number out of range"),
    ("json_array_line", b"[1, 2, 3]", "bad_json: not an object"),
    ("json_string_line", b'"just a string"', "bad_json: not an object"),
    ("json_number_line", b"42", "bad_json: not an object"),
    ("json_null_line", b"null", "bad_json: not an object"),
    ("json_true_line", b"true", "bad_json: not an object"),
    ("truncated_object", b'{"text": "cut sho', "bad_json*"),
    ("trailing_garbage", b'{"text": "fine"} and more', "bad_json*"),
    ("trailing_comma", b'{"text": "fine",}', "bad_json*"),
    ("single_quotes", b"{'text': 'fine'}", "bad_json*"),
    ("raw_nul_in_string", b'{"text": "a\x00b"}', "bad_json*"),
    ("raw_nul_before_object", b'\x00{"text": "fine"}', "bad_json*"),
    ("raw_tab_in_string", b'{"text": "a\tb"}', "bad_json*"),
    ("latin1_byte", b'{"text": "caf\xe9"}', "invalid_utf8"),
    ("encoded_surrogate_bytes", b'{"text": "\xed\xa0\x80"}', "invalid_utf8"),
    ("truncated_utf8", b'{"text": "\xe2\x82"}', "invalid_utf8"),
    ("text_number", b'{"text": 5}', "text_not_string"),
    ("text_list", b'{"text": ["a", "b"]}', "text_not_string"),
    ("text_object", b'{"text": {"a": "b"}}', "text_not_string"),
    ("text_bool", b'{"text": true}', "text_not_string"),
    ("text_null", b'{"text": null}', "missing_text"),
    ("text_missing", b'{"body": "fine words"}', "missing_text"),
    ("empty_object", b"{}", "missing_text"),
    ("text_empty", b'{"text": ""}', "empty_text"),
    ("text_whitespace", b'{"text": " \\n\\t "}', "empty_text"),
    ("blank_line", b"", "blank_line"),
    ("whitespace_line", b" \t ", "blank_line"),
]


@pytest.mark.parametrize("case,bad,reason", BAD_ROWS, ids=[c[0] for c in BAD_ROWS])
def test_a_bad_jsonl_row_is_quarantined(tmp_path: Path, case: str, bad: bytes, reason: str) -> None:
    data = jsonl([LINES[0], bad, LINES[1]])
    path = tmp_path / "d.jsonl"
    path.write_bytes(data)
    by = accounted(tmp_path, run_input(tmp_path, path), n_lines(data))
    rows = rejected(tmp_path)
    assert len(rows) == 1 and rows[0]["_row"] == 1 and rows[0]["raw"] == bad  # the line kept as it was
    got = rows[0]["reason"]
    assert got.startswith(reason[:-1]) if reason.endswith("*") else got == reason
    assert by == {got: 1}
    assert [r["text"] for r in output(tmp_path)] == DOCS[:2]


ID_ROWS = [  # with input.id_column: id
    ("id_list", b'{"id": [1], "text": "fine words"}', "invalid_id"),
    ("id_object", b'{"id": {"k": 1}, "text": "fine words"}', "invalid_id"),
    ("id_bool", b'{"id": true, "text": "fine words"}', "invalid_id"),
    ("id_float_out_of_range", b'{"id": 1e400, "text": "fine words"}', "invalid_id"),
    ("id_null", b'{"id": null, "text": "fine words"}', "missing_id"),
    ("id_missing", b'{"text": "fine words"}', "missing_id"),
    ("id_surrogate", b'{"id": "\\udfff", "text": "fine words"}', "invalid_unicode"),
]


@pytest.mark.parametrize("case,bad,reason", ID_ROWS, ids=[c[0] for c in ID_ROWS])
def test_a_bad_jsonl_id_is_quarantined(tmp_path: Path, case: str, bad: bytes, reason: str) -> None:
    lines = [json.dumps({"id": "g0", "text": DOCS[0]}).encode(), bad, json.dumps({"id": 7, "text": DOCS[1]}).encode()]
    data = jsonl(lines)
    path = tmp_path / "d.jsonl"
    path.write_bytes(data)
    by = accounted(tmp_path, run_input(tmp_path, path, id_column="id"), n_lines(data))
    assert by == {reason: 1} and rejected(tmp_path)[0]["_row"] == 1
    assert [r["id"] for r in output(tmp_path)] == ["g0", "7"]  # integers as written


INSTRUCTION_ROWS = [
    ("prompt_not_string", b'{"q": 3, "a": "an answer"}', "prompt_not_string"),
    ("prompt_missing", b'{"a": "an answer"}', "missing_prompt"),
    ("response_list", b'{"q": "a question", "a": ["x"]}', "response_not_string"),
    ("response_empty", b'{"q": "a question", "a": "  "}', "empty_response"),
]


@pytest.mark.parametrize("case,bad,reason", INSTRUCTION_ROWS, ids=[c[0] for c in INSTRUCTION_ROWS])
def test_a_bad_instruction_row_is_quarantined(tmp_path: Path, case: str, bad: bytes, reason: str) -> None:
    lines = [json.dumps({"q": f"question {i}", "a": DOCS[i]}).encode() for i in range(2)]
    data = jsonl([lines[0], bad, lines[1]])
    path = tmp_path / "sft.jsonl"
    path.write_bytes(data)
    m = run_input(tmp_path, path, prompt_column="q", response_column="a")
    assert accounted(tmp_path, m, n_lines(data)) == {reason: 1}


def test_many_bad_rows_in_one_file_all_counted(tmp_path: Path) -> None:
    bad = [b for _, b, _ in BAD_ROWS]
    data = jsonl([*LINES, *bad], end=b"\r\n")
    path = tmp_path / "d.jsonl.gz"
    path.write_bytes(gzip.compress(data))
    by = accounted(tmp_path, run_input(tmp_path, path, batch_rows=4), n_lines(data))
    assert sum(by.values()) == len(bad)
    assert sorted(r["_row"] for r in rejected(tmp_path)) == list(range(len(LINES), len(LINES) + len(bad)))


# -- file shapes that used to lose rows silently: now read in full ----------------------

FILE_SHAPES: list[tuple[str, str, Callable[[], bytes]]] = [
    ("utf8_bom", ".jsonl", lambda: codecs.BOM_UTF8 + jsonl(LINES)),
    ("cr_only", ".jsonl", lambda: jsonl(LINES, b"\r")),
    ("crlf", ".jsonl", lambda: jsonl(LINES, b"\r\n")),
    ("mixed_endings", ".jsonl", lambda: b"\r\n".join(LINES[:2]) + b"\r" + LINES[2] + b"\n" + b"\r".join(LINES[3:])),
    ("no_final_newline", ".jsonl", lambda: b"\n".join(LINES)),
    ("utf16le_bom", ".jsonl", lambda: codecs.BOM_UTF16_LE + jsonl(LINES).decode().encode("utf-16-le")),
    ("utf16be_bom", ".jsonl", lambda: codecs.BOM_UTF16_BE + jsonl(LINES, b"\r\n").decode().encode("utf-16-be")),
    ("utf32le_bom", ".jsonl", lambda: codecs.BOM_UTF32_LE + jsonl(LINES).decode().encode("utf-32-le")),
    ("utf32be_bom", ".jsonl", lambda: codecs.BOM_UTF32_BE + jsonl(LINES).decode().encode("utf-32-be")),
    ("bom_and_cr_gzip", ".jsonl.gz", lambda: gzip.compress(codecs.BOM_UTF8 + jsonl(LINES, b"\r"))),
    ("utf16_zstd", ".jsonl.zst",
     lambda: zstandard.ZstdCompressor().compress(codecs.BOM_UTF16_LE + jsonl(LINES).decode().encode("utf-16-le"))),
    ("zstd_two_frames", ".jsonl.zst", lambda: b"".join(zstandard.ZstdCompressor().compress(jsonl(part))
                                                      for part in (LINES[:2], LINES[2:]))),
    ("gzip_two_members", ".jsonl.gz", lambda: gzip.compress(jsonl(LINES[:3])) + gzip.compress(jsonl(LINES[3:]))),
    ("json_array_pretty", ".json", lambda: json.dumps([{"text": d} for d in DOCS[:5]], indent=2).encode()),
    ("json_array_one_line", ".json", lambda: json.dumps([{"text": d} for d in DOCS[:5]]).encode()),
    ("json_array_gzip_crlf", ".json.gz",
     lambda: gzip.compress(json.dumps([{"text": d} for d in DOCS[:5]], indent=1).replace("\n", "\r\n").encode())),
    ("json_array_utf16", ".json", lambda: codecs.BOM_UTF16_LE
     + json.dumps([{"text": d} for d in DOCS[:5]], indent=2).encode("utf-16-le")),
    ("json_holding_jsonl", ".json", lambda: jsonl(LINES)),
]


@pytest.mark.parametrize("case,suffix,make", FILE_SHAPES, ids=[c[0] for c in FILE_SHAPES])
def test_file_shapes_are_read_in_full(tmp_path: Path, case: str, suffix: str, make: Callable[[], bytes]) -> None:
    path = tmp_path / f"d{suffix}"
    path.write_bytes(make())
    m = run_input(tmp_path, path)
    assert accounted(tmp_path, m, 5) == {}  # five records written, five read
    out = output(tmp_path)
    assert [r["text"] for r in out] == DOCS[:5]
    assert [r["id"] for r in out] == [f"{path.name}:{i}" for i in range(5)]


def test_line_endings_split_across_read_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from thresher.io import readers

    data = b"\r\n".join(LINES[:2]) + b"\r" + LINES[2] + b"\r\n\r\n" + b"\r".join(LINES[3:]) + b"\r\n"
    path = tmp_path / "d.jsonl"
    path.write_bytes(data)
    monkeypatch.setattr(readers, "_CHUNK", 7)  # every \r\n is split across chunks somewhere
    by = accounted(tmp_path, run_input(tmp_path, path), n_lines(data))
    assert by == {"blank_line": 1}
    assert [r["text"] for r in output(tmp_path)] == DOCS[:5]


def test_concatenated_bom_files_keep_every_record(tmp_path: Path) -> None:
    data = codecs.BOM_UTF8 + jsonl(LINES[:2]) + codecs.BOM_UTF8 + jsonl(LINES[2:])
    path = tmp_path / "d.jsonl"
    path.write_bytes(data)
    assert accounted(tmp_path, run_input(tmp_path, path), 5) == {}


def test_utf16_with_a_bad_unit_rejects_only_that_line(tmp_path: Path) -> None:
    units = [line.decode().encode("utf-16-le") for line in LINES[:3]]
    units[1] = units[1][:20] + b"\x00\xd8" + units[1][20:]  # a lone high surrogate
    data = codecs.BOM_UTF16_LE + b"\n\x00".join(units) + b"\n\x00"
    path = tmp_path / "d.jsonl"
    path.write_bytes(data)
    assert accounted(tmp_path, run_input(tmp_path, path), 3) == {"invalid_utf8": 1}


def test_huge_line_is_one_row(tmp_path: Path) -> None:
    big = " ".join(DOCS) * 20_000  # about 4 MB in one line, longer than a read chunk
    data = jsonl([LINES[0], json.dumps({"text": big}).encode(), LINES[1]])
    path = tmp_path / "d.jsonl"
    path.write_bytes(data)
    assert accounted(tmp_path, run_input(tmp_path, path), n_lines(data)) == {}
    assert output(tmp_path)[1]["text"] == big


@pytest.mark.parametrize("data,reasons", [
    (b"", {}),
    (b"\n\n\n", {"blank_line": 3}),
    (b" \r\n\t\r\n", {"blank_line": 2}),
], ids=["empty_file", "only_newlines", "only_whitespace_lines"])
def test_empty_and_blank_files(tmp_path: Path, data: bytes, reasons: dict) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(data)
    assert accounted(tmp_path, run_input(tmp_path, path), n_lines(data)) == reasons


@pytest.mark.parametrize("suffix,data", [
    (".jsonl.gz", b""), (".jsonl.gz", gzip.compress(b"")), (".jsonl.zst", b""),
    (".jsonl.zst", zstandard.ZstdCompressor().compress(b"")),
], ids=["gz_zero_bytes", "gz_of_nothing", "zst_zero_bytes", "zst_of_nothing"])
def test_empty_compressed_files(tmp_path: Path, suffix: str, data: bytes) -> None:
    path = tmp_path / f"d{suffix}"
    path.write_bytes(data)
    assert accounted(tmp_path, run_input(tmp_path, path), 0) == {}


# -- JSON arrays: each element is a row ------------------------------------------------

ARRAY_ELEMENTS = [
    (b"1", "bad_json: not an object"),
    (b'"a string"', "bad_json: not an object"),
    (b"null", "bad_json: not an object"),
    (b'{"text": NaN}', "bad_json: NaN is not valid JSON"),
    (b"NaN", "bad_json: NaN is not valid JSON"),
    (b'{"text": "x", "text": "y"}', "bad_json: duplicate key 'text'"),
    (b'{"text": ' + deep(50_000) + b', "s": "]]}"}', "bad_json: nesting too deep"),
    (b'{"text": "\\ud800"}', "invalid_unicode"),
    (b'{"text": "caf\xe9"}', "invalid_utf8"),
    (b'{"text": 12}', "text_not_string"),
    (b"{}", "missing_text"),
]


def test_json_array_bad_elements_are_quarantined(tmp_path: Path) -> None:
    good = [json.dumps({"text": d}, indent=2).encode() for d in DOCS[:3]]
    elements = [good[0], *(e for e, _ in ARRAY_ELEMENTS), good[1], good[2]]
    path = tmp_path / "d.json"
    path.write_bytes(b"[\n  " + b",\n  ".join(elements) + b"\n]\n")
    by = accounted(tmp_path, run_input(tmp_path, path), len(elements))
    rows = rejected(tmp_path)
    assert [(r["_row"], r["reason"]) for r in rows] == [(i + 1, why) for i, (_, why) in enumerate(ARRAY_ELEMENTS)]
    assert [r["raw"] for r in rows] == [e for e, _ in ARRAY_ELEMENTS]  # each element's own bytes
    assert sum(by.values()) == len(ARRAY_ELEMENTS)
    assert [r["id"] for r in output(tmp_path)] == ["d.json:0", f"d.json:{len(elements) - 2}",
                                                   f"d.json:{len(elements) - 1}"]


def test_empty_json_array(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_bytes(b" [ \n ] \n")
    assert accounted(tmp_path, run_input(tmp_path, path), 0) == {}


def test_json_array_fail_policy_names_the_element(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_bytes(json.dumps([{"text": "fine words"}, {"text": 3}]).encode())
    refused(tmp_path, path, r"d\.json: element 1: text_not_string", on_bad_row="fail")


# -- bad files: one clear error, nothing written ---------------------------------------

GOOD_JSONL = jsonl(LINES)
ZST = zstandard.ZstdCompressor().compress(GOOD_JSONL * 400)
GZ = gzip.compress(GOOD_JSONL * 400)
BAD_FILES = [  # (case, file name, bytes, input options, error pattern)
    ("zst_not_zstd", "d.jsonl.zst", b"this is plain text, not zstd" * 20, {}, r"d\.jsonl\.zst: not valid zstd data"),
    ("zst_truncated", "d.jsonl.zst", ZST[: len(ZST) // 2], {}, r"d\.jsonl\.zst: truncated zstd file"),
    ("zst_garbage_tail", "d.jsonl.zst", ZST + b"\x00garbage", {}, r"d\.jsonl\.zst: not valid zstd data"),
    ("gz_not_gzip", "d.jsonl.gz", GOOD_JSONL, {}, r"d\.jsonl\.gz: not a valid gzip file"),
    ("gz_truncated", "d.jsonl.gz", GZ[: len(GZ) // 2], {}, r"d\.jsonl\.gz: truncated gzip file"),
    ("gz_damaged", "d.jsonl.gz", GZ[:10] + b"\xff" * 200, {}, r"d\.jsonl\.gz: damaged gzip data"),
    ("gzip_without_suffix", "d.jsonl", GZ, {}, r"d\.jsonl: the file is gzip-compressed"),
    ("zstd_without_suffix", "d.jsonl", ZST, {}, r"d\.jsonl: the file is zstd-compressed"),
    ("utf16le_without_bom", "d.jsonl", GOOD_JSONL.decode().encode("utf-16-le"), {}, r"d\.jsonl: .*UTF-16-LE"),
    ("utf16be_without_bom", "d.jsonl", GOOD_JSONL.decode().encode("utf-16-be"), {}, r"d\.jsonl: .*UTF-16-BE"),
    ("utf32le_without_bom", "d.jsonl", GOOD_JSONL.decode().encode("utf-32-le"), {}, r"d\.jsonl: .*UTF-32-LE"),
    ("pretty_printed_objects", "d.jsonl", json.dumps({"text": "a"}, indent=2).encode() * 3, {},
     r"d\.jsonl: .*pretty-printed JSON"),
    ("id_column_typo", "d.jsonl", jsonl([json.dumps({"doc_id": i, "text": d}).encode() for i, d in enumerate(DOCS)]),
     {"id_column": "docid"}, r"d\.jsonl: no record has the key 'docid' \(input\.id_column\).*'doc_id'"),
    ("text_column_typo", "d.jsonl", GOOD_JSONL, {"text_column": "txt"}, r"d\.jsonl: no record has the key 'txt'"),
    ("prompt_column_typo", "d.jsonl", jsonl([b'{"q": "a", "a": "b"}']),
     {"prompt_column": "question", "response_column": "a"}, r"no record has the key 'question'"),
    ("json_array_truncated", "d.json", b'[{"text": "a"}, {"text": "b', {}, r"d\.json: not a valid JSON array"),
    ("json_array_missing_comma", "d.json", b'[{"text": "a"} {"text": "b"}]', {},
     r"d\.json: not a valid JSON array: expected ',' or '\]' at line 1 column 16"),
    ("json_array_trailing_data", "d.json", b'[{"text": "a"}]\n[{"text": "b"}]', {},
     r"d\.json: not a valid JSON array: more data after it at line 2"),
    ("json_array_trailing_comma", "d.json", b'[{"text": "a"},\n]', {}, r"d\.json: not a valid JSON array"),
    ("json_array_id_typo", "d.json", json.dumps([{"key": 1, "text": "a"}]).encode(), {"id_column": "kee"},
     r"d\.json: no record has the key 'kee'"),
    ("fail_policy_surrogate", "d.jsonl", jsonl([LINES[0], b'{"text": "\\ud800"}']), {"on_bad_row": "fail"},
     r"d\.jsonl: line 2: invalid_unicode \(input\.on_bad_row is 'fail'\)"),
    ("fail_policy_deep", "d.jsonl", jsonl([deep(100_000)]), {"on_bad_row": "fail"},
     r"d\.jsonl: line 1: bad_json: nesting too deep"),
]


@pytest.mark.parametrize("case,name,data,inp,pattern", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_a_bad_jsonl_file_is_one_clear_error(tmp_path: Path, case: str, name: str, data: bytes, inp: dict,
                                             pattern: str) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    refused(tmp_path, path, pattern, **inp)


def test_key_typo_found_when_the_first_record_is_longer_than_the_probe(tmp_path: Path) -> None:
    big = " ".join(DOCS) * 1000  # the first record alone is longer than what planning reads
    path = tmp_path / "d.jsonl"
    path.write_bytes(jsonl([json.dumps({"key": "a", "text": big}).encode(), LINES[0]]))
    refused(tmp_path, path, r"d\.jsonl: no record has the key 'kee'.*'key'", id_column="kee")


# -- Parquet ---------------------------------------------------------------------------


def write(table: pa.Table, path: Path, **kw: Any) -> Path:
    pq.write_table(table, path, **kw)
    return path


def test_parquet_invalid_utf8_ids_are_quarantined(tmp_path: Path) -> None:
    ids = pa.array([b"a", b"b\xff", b"c", b"\xc3\x28"], pa.binary())
    path = write(pa.table({"text": DOCS[:4], "key": ids}), tmp_path / "x.parquet")
    m = run_input(tmp_path, path, id_column="key")
    assert accounted(tmp_path, m, pq.read_metadata(path).num_rows) == {"invalid_id": 2}
    assert sorted(r["_row"] for r in rejected(tmp_path)) == [1, 3]
    assert [r["id"] for r in output(tmp_path)] == ["a", "c"]


def test_parquet_large_binary_ids_with_fail_policy(tmp_path: Path) -> None:
    ids = pa.array([b"a", b"\xff"], pa.large_binary())
    path = write(pa.table({"text": DOCS[:2], "key": ids}), tmp_path / "x.parquet")
    refused(tmp_path, path, r"x\.parquet: row 1: invalid_id", id_column="key", on_bad_row="fail")


@pytest.mark.parametrize("ids,reasons", [
    (pa.array([None, None, None], pa.null()), {"missing_id": 3}),
    (pa.array(["x", "y", "x"]).dictionary_encode(), {"duplicate_id": 1}),
    (pa.array([1.5, None, 3.0]), {"missing_id": 1}),
], ids=["null_typed_ids", "dictionary_ids", "float_ids"])
def test_parquet_odd_id_types(tmp_path: Path, ids: pa.Array, reasons: dict) -> None:
    path = write(pa.table({"text": DOCS[:3], "key": ids}), tmp_path / "x.parquet")
    m = run_input(tmp_path, path, id_column="key")
    assert m["counts"]["rejected"]["by_reason"] | m["counts"]["not_selected"]["by_reason"] == reasons
    c = m["counts"]
    assert c["selected"] + c["not_selected"]["total"] + c["rejected"]["total"] == 3 == c["input_rows"]


@pytest.mark.parametrize("ids", [
    pa.array([{"a": 1}, {"a": 2}]), pa.array([[1], [2]]), pa.array([[("k", 1)], [("k", 2)]], pa.map_(pa.string(),
                                                                                                     pa.int64())),
], ids=["struct_id", "list_id", "map_id"])
def test_parquet_nested_id_column_is_refused_at_plan_time(tmp_path: Path, ids: pa.Array) -> None:
    path = write(pa.table({"text": DOCS[:2], "key": ids}), tmp_path / "x.parquet")
    refused(tmp_path, path, r"x\.parquet: id column 'key' has type .*; an id must be a string or a number",
            id_column="key")


@pytest.mark.parametrize("table,inp,pattern", [
    (pa.table({"text": [1, 2]}), {}, r"column 'text' has type int64, expected a string"),
    (pa.table({"text": [{"a": "b"}, {"a": "c"}]}), {}, r"column 'text' has type struct"),
    (pa.table({"text": [["a"], ["b"]]}), {}, r"column 'text' has type list"),
    (pa.table({"text": pa.array([None, None], pa.null())}), {}, r"column 'text' has type null"),
    (pa.table({"body": ["a", "b"]}), {}, r"column 'text' not found \(columns: \['body'\]\)"),
    (pa.table({"text": ["a", "b"], "id": ["1", "2"]}), {}, r"column 'id' clashes .* set input\.id_column: id"),
    (pa.table({"body": ["a", "b"], "text": ["x", "y"]}), {"text_column": "body"},
     r"column 'text' clashes .* set input\.text_column: text"),
    (pa.table({"q": ["a"], "a": ["b"], "prompt": ["c"]}), {"prompt_column": "q", "response_column": "a"},
     r"column 'prompt' clashes"),
    (pa.table({"text": ["a"], "id": ["b"]}), {"id_column": "text"}, r"column 'id' clashes"),
    (pa.table({"text": ["a", "b"], "n_words": [1, 2]}), {}, r"columns \['n_words'\] are reserved"),
    (pa.Table.from_arrays([pa.array(["a"]), pa.array(["b"])], names=["text", "text"]), {},
     r"column names \['text'\] occur more than once"),
], ids=["text_int", "text_struct", "text_list", "text_null_type", "no_text_column", "id_column_unset",
        "text_clash", "prompt_clash", "id_clash_with_other_id", "reserved_column", "duplicate_column_names"])
def test_parquet_bad_columns_are_refused_at_plan_time(tmp_path: Path, table: pa.Table, inp: dict,
                                                      pattern: str) -> None:
    path = write(table, tmp_path / "x.parquet")
    refused(tmp_path, path, r"x\.parquet: " + pattern, **inp)


def test_parquet_zero_rows_and_zero_row_groups(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    write(pa.table({"text": pa.array([], pa.string())}), tmp_path / "c" / "a.parquet")
    pq.ParquetWriter(tmp_path / "c" / "b.parquet", pa.schema([("text", pa.string())])).close()
    write(pa.table({"text": DOCS[:3]}), tmp_path / "c" / "c.parquet")
    assert pq.ParquetFile(tmp_path / "c" / "b.parquet").num_row_groups == 0
    n = sum(pq.read_metadata(p).num_rows for p in (tmp_path / "c").glob("*.parquet"))
    assert accounted(tmp_path, run_input(tmp_path, tmp_path / "c"), n) == {}


@pytest.mark.parametrize("data", [b"", b"not parquet at all", b"PAR1" + b"\x00" * 100 + b"PAR1"],
                         ids=["zero_bytes", "text_file", "fake_footer"])
def test_not_parquet_is_refused(tmp_path: Path, data: bytes) -> None:
    (tmp_path / "x.parquet").write_bytes(data)
    refused(tmp_path, tmp_path / "x.parquet", r"x\.parquet: not a readable Parquet file")


def test_corrupt_parquet_page_is_a_read_error(tmp_path: Path) -> None:
    path = write(pa.table({"text": make_docs(200)}), tmp_path / "x.parquet", compression="zstd")
    data = bytearray(path.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = b"\x00" * 64
    path.write_bytes(bytes(data))
    refused(tmp_path, path, r"x\.parquet: read failed")


MIXED = [  # (case, second file's table, error pattern or None where the files agree well enough)
    ("other_type", pa.table({"text": DOCS[:2], "url": [1, 2]}),
     r"differ in column 'url': string in .*a\.parquet but int64 in .*b\.parquet"),
    ("missing_column", pa.table({"text": DOCS[:2]}), r"differ in column 'url': string in .*a\.parquet but missing"),
    ("extra_column", pa.table({"text": DOCS[:2], "url": ["u", "v"], "lang": ["en", "fr"]}),
     r"differ in column 'lang': missing in .*a\.parquet but string in .*b\.parquet"),
    ("column_order", pa.table({"url": ["u", "v"], "text": DOCS[:2]}), None),
    ("nullability", pa.Table.from_arrays([pa.array(DOCS[:2]), pa.array(["u", "v"])],
                                         schema=pa.schema([("text", pa.string()),
                                                           pa.field("url", pa.string(), nullable=False)])), None),
    ("text_as_binary", pa.table({"text": pa.array([d.encode() for d in DOCS[:2]], pa.binary()), "url": ["u", "v"]}),
     None),
    ("large_string", pa.table({"text": DOCS[:2], "url": pa.array(["u", "v"], pa.large_string())}), None),
]


@pytest.mark.parametrize("case,second,pattern", MIXED, ids=[c[0] for c in MIXED])
def test_parquet_files_with_different_columns(tmp_path: Path, case: str, second: pa.Table, pattern: str | None) -> None:
    (tmp_path / "c").mkdir()
    write(pa.table({"text": DOCS[2:5], "url": ["a", "b", "c"]}), tmp_path / "c" / "a.parquet")
    write(second, tmp_path / "c" / "b.parquet")
    if pattern:
        refused(tmp_path, tmp_path / "c", pattern)
        return
    assert accounted(tmp_path, run_input(tmp_path, tmp_path / "c"), 5) == {}
    df = pd.read_parquet(tmp_path / "out")  # the output folder reads as one table
    assert len(df) == 5 and {"id", "text", "url"} <= set(df.columns)


def test_in_memory_table_with_an_id_column_or_a_struct_id(tmp_path: Path) -> None:
    table = pa.table({"text": DOCS[:2], "id": ["a", "b"]})
    refused(tmp_path, None, r"input table: column 'id' clashes", data=table)
    table = pa.table({"text": DOCS[:2], "key": [{"a": 1}, {"a": 2}]})
    refused(tmp_path, None, r"input table: id column 'key' has type struct", data=table, id_column="key")


# -- datasets folders ------------------------------------------------------------------


def datasets_folder(folder: Path, batches: int = 3, state: Any = "ok") -> Path:
    """A folder laid out like `Dataset.save_to_disk` (one Arrow stream file, state.json)."""
    folder.mkdir(parents=True)
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as f, \
            pa.ipc.new_stream(f, pa.schema([("text", pa.string()), ("n", pa.int64())])) as w:
        for i in range(batches):
            w.write_batch(pa.record_batch({"text": DOCS[i:i + 2], "n": [i, i]}))
    (folder / "dataset_info.json").write_text("{}")
    if state == "ok":
        state = {"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}
    if state is not None:
        (folder / "state.json").write_text(state if isinstance(state, str) else json.dumps(state))
    return folder


def test_datasets_folder_reads_and_counts(tmp_path: Path) -> None:
    folder = datasets_folder(tmp_path / "ds")
    with pa.memory_map(str(folder / "data-00000-of-00001.arrow")) as src:
        n = pa.ipc.open_stream(src).read_all().num_rows
    assert accounted(tmp_path, run_input(tmp_path, folder), n) == {}


@pytest.mark.parametrize("state,pattern", [
    (None, r"looks like a datasets folder .* has no state\.json"),
    ("{not json", r"ds: not a datasets folder saved with save_to_disk \(state\.json: JSONDecodeError"),
    ({"no_files": []}, r"ds: not a datasets folder .*KeyError"),
    ({"_data_files": []}, r"ds: state\.json lists no data files"),
    ({"_data_files": [{"filename": "gone.arrow"}]}, r"gone\.arrow: not a readable Arrow file"),
], ids=["state_missing", "state_not_json", "state_without_files", "state_lists_nothing", "state_names_missing_file"])
def test_broken_datasets_folder(tmp_path: Path, state: Any, pattern: str) -> None:
    refused(tmp_path, datasets_folder(tmp_path / "ds", state=state), pattern)


def test_truncated_arrow_file_is_refused_at_plan_time(tmp_path: Path) -> None:
    folder = datasets_folder(tmp_path / "ds")
    arrow = folder / "data-00000-of-00001.arrow"
    data = arrow.read_bytes()
    arrow.write_bytes(data[: len(data) * 2 // 3])
    refused(tmp_path, folder, r"data-00000-of-00001\.arrow: not a readable Arrow file")


def test_datasets_folder_inside_a_folder_is_not_read_as_jsonl(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_bytes(GOOD_JSONL)
    datasets_folder(tmp_path / "in" / "ds")
    refused(tmp_path, tmp_path / "in", r"ds is a datasets folder")


# -- text files ------------------------------------------------------------------------


@pytest.mark.parametrize("data,reason,text", [
    (b"", "empty_text", None),
    (b" \n\t\r\n", "empty_text", None),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xd8", "invalid_utf8", None),
    (codecs.BOM_UTF8 + b"caf\xc3\xa9 au lait", None, "caf\u00e9 au lait"),
    (codecs.BOM_UTF16_LE + "na\u00efve text".encode("utf-16-le"), None, "na\u00efve text"),
    (codecs.BOM_UTF16_BE + b"\xd8\x00", "invalid_utf8", None),  # a lone surrogate
], ids=["empty", "whitespace", "binary", "utf8_bom", "utf16_bom", "utf16_lone_surrogate"])
def test_text_files(tmp_path: Path, data: bytes, reason: str | None, text: str | None) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a.txt").write_text("a good document of words")
    (tmp_path / "t" / "b.txt").write_bytes(data)
    n = len(list((tmp_path / "t").glob("*.txt")))
    by = accounted(tmp_path, run_input(tmp_path, tmp_path / "t"), n)
    assert by == ({reason: 1} if reason else {})
    if text is not None:
        assert [r["text"] for r in output(tmp_path)] == ["a good document of words", text]


# -- the file system -------------------------------------------------------------------


@pytest.mark.parametrize("target,pattern", [
    ("x.jsonl", r"x\.jsonl: cannot read \(Too many levels of symbolic links\)"),
    ("nowhere.jsonl", r"x\.jsonl: cannot read \(No such file or directory\)"),
], ids=["symlink_loop", "dangling_symlink"])
def test_broken_links_in_a_folder(tmp_path: Path, target: str, pattern: str) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_bytes(GOOD_JSONL)
    os.symlink(target, tmp_path / "in" / "x.jsonl")
    refused(tmp_path, tmp_path / "in", pattern)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads every file")
def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(GOOD_JSONL)
    path.chmod(0)
    try:
        refused(tmp_path, path, r"d\.jsonl: cannot read \(Permission denied\)")
    finally:
        path.chmod(0o644)
