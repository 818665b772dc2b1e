"""The engine contract: how a job's work is spread over workers.

An engine runs the two map stages (score, write) over input shards and maps independent
work items (e.g. DATAMASK blocks) over workers. The stage code is the same everywhere
(`thresher.pipelines.stages`); an engine only brings plumbing: a process pool (local),
`mapInArrow` tasks (Spark) or `DoFn`s (Beam). Every engine returns results in input
order, checks that it got exactly one result per shard or item, and reports a worker's
error as one short line (`short_error`).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterable
from typing import Any, Protocol

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
        A task's memory is bounded by its item (emit) or its key's rows (reduce)."""
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


def key_table(key: int, batches: Iterable[pa.RecordBatch]) -> pa.Table:
    """One key's batches (already in (item, emit order) order) as one table; a clear error when their
    schemas differ."""
    batches = list(batches)
    schema = batches[0].schema
    for b in batches[1:]:
        if not b.schema.equals(schema):
            raise JobError(f"shuffle key {key}: emitted batches with different schemas "
                           f"({schema} vs {b.schema}); emit must cast to one schema")
    return pa.Table.from_batches(batches, schema=schema)


def serial_shuffle(emit: EmitFn, items: list[Any], reduce: ReduceFn) -> dict[int, dict[str, Any]]:
    """The in-process reference for `Engine.shuffle`: every key's batches concatenated in (item index,
    emit order), reduce called for each key with >= 1 row in ascending key order; {key: result}."""
    by_key: dict[int, list[pa.RecordBatch]] = {}
    for item in items:
        for key, batch in emit(item):
            by_key.setdefault(int(key), []).append(batch)
    out: dict[int, dict[str, Any]] = {}
    for key in sorted(by_key):
        batches = [b for b in by_key[key] if b.num_rows]
        if batches:
            out[key] = reduce(key, key_table(key, batches))
    return out


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
