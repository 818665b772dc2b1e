"""A finished output folder is itself a Parquet dataset: readers pointed at the folder get the
selected rows and nothing else (the manifest, summary and side tables all start with "_")."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest

from conftest import job_dict
from thresher import run
from thresher.io.output import OutputLayout, find_manifest
from thresher.report.html import load_run
from thresher.report.inspect import inspect_data


def part_ids(out: Path) -> list[str]:
    ids: list[str] = []
    for p in sorted(out.glob("part-*.parquet")):
        ids.extend(pq.read_table(p, columns=["id"]).column("id").to_pylist())
    return ids


@pytest.fixture
def out(tmp_path: Path, corpus: Path) -> Path:
    run(job_dict(corpus, tmp_path / "out"), progress=False)
    return tmp_path / "out"


def test_only_parts_beside_parts(out: Path) -> None:
    names = {p.name for p in out.iterdir()}
    assert {"_manifest.json", "_summary.txt"} <= names
    assert not {"manifest.json", "summary.txt"} & names
    # the dataset card is `_README.md` (a README.md would break pandas/pyarrow/Spark folder reads) and
    # its `configs:` are `.huggingface.yaml`, a "." name those readers skip too
    assert {"_README.md", ".huggingface.yaml"} <= names
    assert all(n.startswith("_") or n == ".huggingface.yaml" or (n.startswith("part-") and n.endswith(".parquet"))
               for n in names), names


def test_pandas_and_pyarrow_read_the_folder(out: Path) -> None:
    manifest = json.loads((out / "_manifest.json").read_text())
    ids = part_ids(out)
    df = pd.read_parquet(out)
    assert len(df) == manifest["counts"]["selected"] == len(ids) == 300
    assert sorted(df["id"]) == sorted(ids)
    assert set(df.columns) >= {"id", "text", "url", "n_words"}
    dataset = pds.dataset(out, format="parquet")
    assert sorted(Path(f).name for f in dataset.files) == sorted(p.name for p in out.glob("part-*.parquet"))
    assert dataset.count_rows() == manifest["counts"]["selected"]
    assert sorted(dataset.to_table(columns=["id"]).column("id").to_pylist()) == sorted(ids)


def test_folder_stays_a_dataset_after_report(out: Path) -> None:
    from thresher.report.html import write_report

    page = write_report([out])  # the default place: inside the folder, under a "_" name
    assert page == out / "_report" / "report.html" and list(page.parent.glob("*.png"))
    assert len(pd.read_parquet(out)) == len(part_ids(out))


def test_datasets_loads_the_parts(out: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the folder alone works: datasets reads `.huggingface.yaml` (configs: data_files part-*.parquet);
    # without it, datasets (which skips only "." and "__" names) would also read _scores/ and the rest.
    # Naming the parts still works too.
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    cache = str(tmp_path / "hf")
    manifest = json.loads((out / "_manifest.json").read_text())
    ids = part_ids(out)
    ds = datasets.load_dataset("parquet", data_files=str(out / "part-*.parquet"), split="train", cache_dir=cache)
    assert len(ds) == manifest["counts"]["selected"]
    assert sorted(ds["id"]) == sorted(ids)
    ds2 = datasets.load_dataset("parquet", data_dir=str(out), data_files="part-*.parquet", split="train",
                                cache_dir=cache)
    assert len(ds2) == manifest["counts"]["selected"]
    ds3 = datasets.load_dataset(str(out), split="train", cache_dir=cache)
    assert ds3["id"] == ids


def test_find_manifest(tmp_path: Path) -> None:
    assert find_manifest(tmp_path / "missing") is None
    assert find_manifest(tmp_path) is None
    (tmp_path / "manifest.json").write_text("{}")  # not thresher's name: no legacy names at 0.1.0
    assert find_manifest(tmp_path) is None
    (tmp_path / "_manifest.json").write_text("{}")
    assert find_manifest(tmp_path) == tmp_path / "_manifest.json"
    assert find_manifest(tmp_path / "_manifest.json") is None  # a file is not an output folder


def test_clear_write_stage_removes_manifest_and_summary(out: Path) -> None:
    OutputLayout(out).clear_stage("write")
    assert not list(out.glob("part-*.parquet"))
    assert not any((out / n).exists() for n in ("_manifest.json", "_summary.txt"))
