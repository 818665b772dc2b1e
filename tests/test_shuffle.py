"""Engine.shuffle: local (1 and 2 workers), Spark local[2] and Beam DirectRunner give what the
in-process reference `serial_shuffle` gives; errors are one line naming the item or key.

The toy emit/reduce live in this module; Spark and Beam workers cannot import it, so it is
registered with their cloudpickles to travel by value (thresher's own callers pass module-level
functions of the thresher package, which the workers import)."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from conftest import job_dict
from thresher.config import JobError, SparkEngineSpec, load_job
from thresher.pipelines.engine import serial_shuffle

MASTER = "local[2,2]"
SPARK_CONF = {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"}
SPARK = {"name": "spark", "spark": {"master": MASTER, "conf": SPARK_CONF}}
BEAM = {"name": "beam", "beam": {"runner": "DirectRunner", "options": {"direct_num_workers": 2}}}

# item -> its (key, rows) pairs in emit order: key 2 only ever gets empty batches, item 3 emits
# nothing, item 1 emits three batches for key 4 around one for key 0, item 4's key is a numpy int
PLAN: dict[int, list[tuple[int, int]]] = {
    0: [(0, 3), (1, 2), (2, 0)],
    1: [(4, 2), (0, 1), (4, 3), (4, 1)],
    2: [(1, 5)],
    3: [],
    4: [(3, 4), (0, 2)],
    5: [(4, 2), (3, 1), (2, 0)],
}
ITEMS = sorted(PLAN)
SCHEMA = pa.schema([("id", pa.string()), ("val", pa.int64())])


def toy_emit(item: int) -> Iterator[tuple[int, pa.RecordBatch]]:
    for seq, (key, rows) in enumerate(PLAN[item]):
        ids = [f"{item}-{seq}-{j}" for j in range(rows)]
        vals = [item * 100 + seq * 10 + j for j in range(rows)]
        yield (np.int64(key) if item == 4 else key), pa.record_batch([pa.array(ids), pa.array(vals, pa.int64())],
                                                                     schema=SCHEMA)


def digest(key: int, table: pa.Table) -> dict[str, Any]:
    ids = table.column("id").to_pylist()
    return {"key": key, "rows": table.num_rows, "sum": np.int64(pc.sum(table.column("val")).as_py()),
            "order": hashlib.sha1("|".join(ids).encode()).hexdigest()[:16], "first": ids[:2]}


def failing_emit(item: int) -> Iterator[tuple[int, pa.RecordBatch]]:
    if item == 4:
        raise ValueError("bad item 4\n(second line)")
    yield from toy_emit(item)


def failing_reduce(key: int, table: pa.Table) -> dict[str, Any]:
    if key == 3:
        raise KeyError("key three")
    return digest(key, table)


def mixed_schema_emit(item: int) -> Iterator[tuple[int, pa.RecordBatch]]:
    yield 0, pa.record_batch({"id": [str(item)], "val": pa.array([item], pa.int32() if item else pa.int64())})


@pytest.fixture(scope="module", autouse=True)
def by_value() -> None:
    """Ship this module's functions by value to Spark and Beam workers."""
    picklers = []
    for name in ("apache_beam.internal.cloudpickle.cloudpickle", "pyspark.cloudpickle"):
        with contextlib.suppress(ImportError):
            picklers.append(importlib.import_module(name))
    module = sys.modules[__name__]
    for p in picklers:
        p.register_pickle_by_value(module)
    yield
    for p in picklers:
        p.unregister_pickle_by_value(module)


@pytest.fixture(scope="module")
def spark() -> Any:
    pytest.importorskip("pyspark")
    from thresher.pipelines.spark_engine import get_session, stop_session

    session, owned = get_session(SparkEngineSpec(master=MASTER, conf=SPARK_CONF), progress=False)
    yield session
    if owned:
        stop_session(session)


def make(engine: dict[str, Any], progress: bool = False) -> Any:
    from thresher.pipelines.engine import make_engine

    return make_engine(load_job(data=job_dict("unused", "unused", engine=engine)), progress=progress)


def local(workers: int) -> dict[str, Any]:
    return {"name": "local", "local": {"workers": workers}}


EXPECTED = serial_shuffle(toy_emit, ITEMS, digest)


def test_serial_reference() -> None:
    """Keys with rows only, ascending; each key's rows in (item, emit order); results as JSON."""
    assert list(EXPECTED) == [0, 1, 3, 4]
    assert [EXPECTED[k]["rows"] for k in EXPECTED] == [6, 7, 5, 8]
    assert EXPECTED[4]["first"] == ["1-0-0", "1-0-1"]
    order = "|".join([f"1-0-{j}" for j in range(2)] + [f"1-2-{j}" for j in range(3)] + ["1-3-0"]
                     + [f"5-0-{j}" for j in range(2)])
    assert EXPECTED[4]["order"] == hashlib.sha1(order.encode()).hexdigest()[:16]
    assert EXPECTED[0]["sum"] == (0 + 1 + 2) + 110 + (410 + 411) and isinstance(EXPECTED[0]["sum"], int)


@pytest.mark.parametrize("workers", [1, 2])
def test_local_matches_serial(workers: int, tmp_path: Path) -> None:
    stale = tmp_path / "spill" / "toy" / "k-000009" / "i-000099-0000.arrow"  # left by an interrupted run
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"junk")
    eng = make(local(workers))
    try:
        assert eng.shuffle("toy", toy_emit, ITEMS, digest, str(tmp_path / "spill")) == EXPECTED
    finally:
        eng.close()
    assert not (tmp_path / "spill" / "toy").exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_local_spills_to_object_store(workers: int, s3_bucket: str) -> None:
    """spill_dir on s3:// (inside an output folder on a store): emit tasks PUT their spill objects,
    reduce tasks list and read their key's prefix; the prefix is gone afterwards."""
    from thresher.io import storage

    spill = f"{s3_bucket}/out/_thresher/spill"
    storage.write_bytes(f"{spill}/toy/k-000009/i-000099-0000.arrow", b"junk")  # left by an interrupted run
    eng = make(local(workers))
    try:
        assert eng.shuffle("toy", toy_emit, ITEMS, digest, spill) == EXPECTED
    finally:
        eng.close()
    assert storage.list_names(f"{spill}/toy") == []


def test_local_progress_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A shuffle is a step of a stage: bars on a terminal (gone when done), no line in a log."""
    from thresher.common.progress import Progress

    for tty in (False, True):
        monkeypatch.setattr(Progress, "tty", tty)
        eng = make(local(1), progress=True)
        try:
            assert eng.shuffle("toy", toy_emit, ITEMS, digest, str(tmp_path)) == EXPECTED
        finally:
            eng.close()
        err = capsys.readouterr().err
        if tty:
            assert "shuffle toy: emit" in err and "shuffle toy: reduce" in err and "6/6" in err
        else:
            assert err == ""


def test_spark_matches_serial(spark: Any, tmp_path: Path) -> None:
    eng = make(SPARK)
    try:
        assert eng.shuffle("toy", toy_emit, ITEMS, digest, str(tmp_path)) == EXPECTED
        assert eng.shuffle("none", toy_emit, [], digest, str(tmp_path)) == {}
        assert eng.shuffle("nothing", toy_emit, [3, 3], digest, str(tmp_path)) == {}
        with pytest.raises(JobError) as err:
            eng.shuffle("boom", failing_emit, ITEMS, digest, str(tmp_path))
        assert str(err.value) == ("engine spark: shuffle boom failed: JobError: shuffle boom: emit(item 4) failed: "
                                  "ValueError: bad item 4 (second line)")
        with pytest.raises(JobError, match=r"^engine spark: shuffle boom failed: JobError: shuffle boom: "
                                           r"reduce\(key 3\) failed: KeyError: 'key three'$"):
            eng.shuffle("boom", toy_emit, ITEMS, failing_reduce, str(tmp_path))
    finally:
        eng.close()
    assert spark.sparkContext._jsc is not None, "the engine must not stop a session it did not start"


def test_beam_matches_serial(tmp_path: Path) -> None:
    pytest.importorskip("apache_beam")
    eng = make(BEAM)
    try:
        assert eng.shuffle("toy", toy_emit, ITEMS, digest, str(tmp_path)) == EXPECTED
        assert eng.shuffle("none", toy_emit, [], digest, str(tmp_path)) == {}
        with pytest.raises(JobError, match=r"^engine beam \(DirectRunner\): the shuffle-boom pipeline failed: "
                                           r"JobError: shuffle boom: reduce\(key 3\) failed: KeyError: 'key three'$"):
            eng.shuffle("boom", toy_emit, ITEMS, failing_reduce, str(tmp_path))
    finally:
        eng.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_local_errors_are_one_line(workers: int, tmp_path: Path) -> None:
    eng = make(local(workers))
    try:
        with pytest.raises(JobError) as err:
            eng.shuffle("boom", failing_emit, ITEMS, digest, str(tmp_path))
        assert str(err.value) == "shuffle boom: emit(item 4) failed: ValueError: bad item 4 (second line)"
        with pytest.raises(JobError, match=r"^shuffle boom: reduce\(key 3\) failed: KeyError: 'key three'$"):
            eng.shuffle("boom", toy_emit, ITEMS, failing_reduce, str(tmp_path))
        with pytest.raises(JobError, match=r"^shuffle mixed: key 0: emitted batches with different schemas"):
            eng.shuffle("mixed", mixed_schema_emit, [0, 1], digest, str(tmp_path))
        assert eng.shuffle("none", toy_emit, [], digest, str(tmp_path)) == {}
        assert eng.shuffle("nothing", toy_emit, [3], digest, str(tmp_path)) == {}
        with pytest.raises(JobError, match=r"shuffle name 'a/b'"):
            eng.shuffle("a/b", toy_emit, ITEMS, digest, str(tmp_path))
    finally:
        eng.close()
    assert sorted(os.listdir(tmp_path)) == ["boom", "mixed"]  # a failed shuffle's spill stays (cleared next time)


def test_serial_errors() -> None:
    with pytest.raises(JobError, match=r"^shuffle serial: emit\(item 0\): key -1: keys must be >= 0$"):
        serial_shuffle(lambda item: [(-1, pa.record_batch({"a": [1]}))], [0], digest)
    with pytest.raises(JobError, match=r"expected \(int key, pyarrow.RecordBatch\) pairs, got 'ab'"):
        serial_shuffle(lambda item: ["ab"], [0], digest)
    with pytest.raises(JobError, match=r"key 0: expected a pyarrow.RecordBatch, got Table"):
        serial_shuffle(lambda item: [(0, pa.table({"a": [1]}))], [0], digest)
    with pytest.raises(JobError, match=r"reduce\(key 0\): the result is not JSON-able"):
        serial_shuffle(toy_emit, [0], lambda k, t: {"x": object()})
    with pytest.raises(JobError, match=r"^shuffle serial: emit\(item 0\) failed: cannot read x.parquet$"):
        serial_shuffle(raise_job_error, [0], digest)
    with pytest.raises(JobError, match=r"shuffle name '../x': use letters"):
        serial_shuffle(toy_emit, ITEMS, digest, name="../x")
    assert serial_shuffle(toy_emit, [], digest) == {}


def raise_job_error(item: int) -> Iterator[tuple[int, pa.RecordBatch]]:
    raise JobError("cannot read x.parquet")
