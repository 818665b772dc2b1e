"""The engine contract: how a job's work is spread over workers.

An engine runs the two map stages (score, write) over input shards and maps independent
work items (e.g. DATAMASK blocks) over workers. The stage code is the same everywhere
(`thresher.pipelines.stages`); an engine only brings plumbing: a process pool (local),
`mapInArrow` tasks (Spark) or `DoFn`s (Beam). Every engine returns results in input
order, checks that it got exactly one result per shard or item, and reports a worker's
error as one short line (`short_error`).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import operator
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from thresher.config import JobSpec
from thresher.io.readers import InputShard
from thresher.specs import JobError

# a map stage: (job, shard, output folder, the shard's slice of an in-memory table or None) -> result
StageFn = Callable[[JobSpec, InputShard, str, "pa.Table | None"], dict[str, Any]]
# a work item function: picklable, module-level
ItemFn = Callable[[Any], Any]
# a shuffle's map side: item -> (key, batch) pairs; picklable (module-level or a functools.partial of one)
EmitFn = Callable[[Any], Iterable[tuple[int, pa.RecordBatch]]]
# a shuffle's reduce side: (key, all of the key's rows) -> a SMALL json-able dict; picklable
ReduceFn = Callable[[int, pa.Table], dict[str, Any]]

ENGINES = {
    "local": "thresher.pipelines.local:LocalEngine",
    "spark": "thresher.pipelines.spark_engine:SparkEngine",
    "beam": "thresher.pipelines.beam_engine:BeamEngine",
}


class Engine(Protocol):
    """What every engine provides."""

    name: str

    def map_shards(self, stage: str, fn: StageFn, job: JobSpec, shards: list[InputShard], out_root: str,
                   table: pa.Table | None = None) -> list[dict[str, Any]]:
        """Call `fn(job, shard, out_root, slice)` once per shard; results in shard order."""
        ...

    def parallel_map(self, fn: ItemFn, items: list[Any]) -> list[Any]:
        """Map a picklable module-level function over items on the workers; results in order."""
        ...

    def shuffle(self, name: str, emit: EmitFn, items: list[Any], reduce: ReduceFn,
                spill_dir: str) -> dict[int, dict[str, Any]]:
        """Run emit(item) for every item on the workers; route every emitted (key, batch) to its key
        through the engine's own shuffle (local: Arrow IPC spill files
        `spill_dir/<name>/k-<key>/i-<item>-<seq>.arrow` written by the map tasks, atomically; Spark: RDD
        groupByKey; Beam: GroupByKey); then call reduce(key, table) once per key that received at least
        one row, on the workers, where `table` is all of that key's batches concatenated in (item index,
        emit order) order — the same table on every engine. Returns {key: reduce result}. No per-row
        data comes back to the driver. Batches of one key share a schema (emit must cast to one schema).
        A task's memory is bounded by its item (emit) or its key's rows (reduce).

        Keys are ints >= 0; empty batches are dropped. Results travel as JSON on every engine (tuples
        come back as lists, dict keys as strings; numpy scalars/arrays become numbers/lists). An error
        in emit or reduce is one JobError line naming the shuffle and the item or key (`emitted`,
        `reduced`); `serial_shuffle` is the in-process reference."""
        ...

    def close(self) -> None:
        """Release workers and sessions this engine started."""
        ...


def make_engine(job: JobSpec, progress: bool = True) -> Engine:
    """The engine named by `job.engine.name` (a missing optional dependency is a clear error)."""
    module, cls = ENGINES[job.engine.name].split(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise JobError(f"engine {job.engine.name!r} is not available: {exc}") from None
    return getattr(mod, cls)(job, progress=progress)


def in_shard_order(engine: str, stage: str, shards: list[InputShard], results: Iterable[dict[str, Any]]
                   ) -> list[dict[str, Any]]:
    """The stage results in shard order; an error unless there is exactly one per shard."""
    got = list(results)
    by_shard = {int(r["shard"]): r for r in got}
    missing = [s.index for s in shards if s.index not in by_shard]
    if missing or len(got) != len(shards):
        raise JobError(f"engine {engine}: {stage} returned {len(got)} results for {len(shards)} shards "
                       f"(missing {missing[:10]})")
    return [by_shard[s.index] for s in shards]


def check_item_count(engine: str, results: list[Any], items: list[Any]) -> list[Any]:
    """`results` unchanged; an error unless there is one per item."""
    if len(results) != len(items):
        raise JobError(f"engine {engine}: parallel_map returned {len(results)} results for {len(items)} items")
    return results


# -- shuffle: the pieces every engine runs on its workers (and serial_shuffle in-process) -------------

_END = object()


@contextlib.contextmanager
def _named(what: str) -> Iterator[None]:
    """An error inside becomes one JobError line that says what failed (`what`) and why."""
    try:
        yield
    except Exception as exc:
        msg = " ".join(str(exc).split())
        why = msg if isinstance(exc, JobError) and msg else f"{type(exc).__name__}: {msg}".rstrip(": ")
        raise JobError(f"{what} failed: {why}") from exc


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def shuffle_name(name: str) -> str:
    """`name` if it is a shuffle name (letters, digits, `_ . -`: it names a folder), else a JobError."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise JobError(f"shuffle name {name!r}: use letters, digits, '_', '.' and '-' (it names a folder)")
    return name


def emitted(name: str, emit: EmitFn, index: int, item: Any) -> Iterator[tuple[int, int, pa.RecordBatch]]:
    """(key, seq, batch) for every non-empty batch `emit(item)` yields; seq is the pair's place in
    emit's output. A failing emit or a bad pair is one JobError line naming the shuffle and item."""
    what = f"shuffle {name}: emit(item {index})"
    with _named(what):
        pairs = iter(emit(item))
    seq = 0
    while True:
        with _named(what):
            pair = next(pairs, _END)
        if pair is _END:
            return
        try:
            key, batch = pair
            key = operator.index(key)
        except (TypeError, ValueError):
            raise JobError(f"{what}: expected (int key, pyarrow.RecordBatch) pairs, got {_short(pair)}") from None
        if not isinstance(batch, pa.RecordBatch):
            raise JobError(f"{what}: key {key}: expected a pyarrow.RecordBatch, got {type(batch).__name__}")
        if key < 0:
            raise JobError(f"{what}: key {key}: keys must be >= 0")
        if batch.num_rows:
            yield key, seq, batch
        seq += 1


def key_table(name: str, key: int, batches: Iterable[pa.RecordBatch | pa.Table]) -> pa.Table:
    """One key's batches (already in (item, seq) order) as one table; a clear error when their schemas
    differ."""
    parts = list(batches)
    schema = parts[0].schema
    for b in parts[1:]:
        if not b.schema.equals(schema):
            raise JobError(f"shuffle {name}: key {key}: emitted batches with different schemas "
                           f"({_short(schema)} vs {_short(b.schema)}); emit must cast to one schema")
    return pa.concat_tables([p if isinstance(p, pa.Table) else pa.Table.from_batches([p]) for p in parts])


def reduced(name: str, reduce: ReduceFn, key: int, batches: Iterable[pa.RecordBatch | pa.Table]) -> str:
    """`reduce(key, table)` of one key's batches, as JSON text: results travel as JSON on every engine
    (so they are equal everywhere: tuples come back as lists, dict keys as strings); numpy scalars and
    arrays are turned into numbers and lists."""
    table = key_table(name, key, batches)
    what = f"shuffle {name}: reduce(key {key})"
    with _named(what):
        result = reduce(key, table)
    if not isinstance(result, dict):
        raise JobError(f"{what}: expected a dict, got {type(result).__name__}")
    try:
        return json.dumps(result, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise JobError(f"{what}: the result is not JSON-able: {exc}") from None


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.generic, np.ndarray)):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _short(obj: Any, limit: int = 200) -> str:
    text = " ".join(repr(obj).split())
    return text if len(text) <= limit else text[:limit] + "..."


def serial_shuffle(emit: EmitFn, items: list[Any], reduce: ReduceFn, *, name: str = "serial"
                   ) -> dict[int, dict[str, Any]]:
    """The in-process reference for `Engine.shuffle`: every key's batches concatenated in (item index,
    emit order), reduce called for each key with >= 1 row in ascending key order; {key: result}."""
    shuffle_name(name)
    by_key: dict[int, list[pa.RecordBatch]] = {}
    for index, item in enumerate(items):
        for key, _seq, batch in emitted(name, emit, index, item):
            by_key.setdefault(key, []).append(batch)
    return {key: json.loads(reduced(name, reduce, key, by_key[key])) for key in sorted(by_key)}


_JVM_PREFIXES = ("org.", "java.", "scala.", "py4j.")


def short_error(exc: BaseException, limit: int = 600) -> str:
    """The useful line of a worker's error: the last Python `SomeError: message` in the text
    (JVM exceptions skipped), else the text on one line."""
    text = str(exc)
    found = re.findall(r"^((?:[\w.]+\.)?\w*(?:Error|Exception)): (.+)$", text, flags=re.M)
    python_side = [f for f in found if not f[0].startswith(_JVM_PREFIXES)]
    if python_side:
        name, msg = python_side[-1]
        return f"{name.rsplit('.', 1)[-1]}: {msg}"[:limit]
    return " ".join(text.split())[:limit] or type(exc).__name__
