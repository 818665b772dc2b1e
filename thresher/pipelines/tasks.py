"""Shard tasks and shuffled batches as plain values, so Spark rows and Beam elements can carry them.

A task is (shard index, the InputShard as JSON, the shard's slice of an in-memory input
table as Arrow IPC bytes or None). Executors decode it and run the stage function.
Tables and batches travel as Arrow IPC bytes (`to_ipc` / `from_ipc`, the IPC file format:
also what the local engine's shuffle spill files hold). The driver's storage options (object
store settings registered with `storage.configure`) travel with every task as text
(`storage_registry`) and are registered on the worker before it touches a path.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa

from thresher.common.threads import limit_process_threads
from thresher.io import storage
from thresher.io.readers import InputShard
from thresher.pipelines.engine import EmitFn, ReduceFn, emitted, reduced
from thresher.specs import JobError

Task = tuple[int, str, "bytes | None"]


def to_ipc(data: pa.Table | pa.RecordBatch) -> bytes:
    """A table or batch as Arrow IPC (file format) bytes."""
    sink = io.BytesIO()
    with pa.ipc.new_file(sink, data.schema) as w:
        if isinstance(data, pa.RecordBatch):
            w.write_batch(data)
        else:
            w.write_table(data)
    return sink.getvalue()


def from_ipc(data: bytes) -> pa.Table:
    """The table `to_ipc` encoded."""
    return pa.ipc.open_file(pa.py_buffer(data)).read_all()


def task_root(path: str | os.PathLike[str]) -> str:
    """An output root as the workers see it: a URI (`s3://...`) unchanged (every worker writes to
    the store itself; no shared local folder), a local path made absolute (the workers' cwd
    differs from the driver's)."""
    return str(path) if storage.is_uri(path) else os.path.abspath(path)


def storage_registry() -> str | None:
    """The storage options registered in this process (`storage.configure`: a job's
    `input.storage_options` / `output.storage_options`) as text, to travel with the tasks: a Spark
    executor or a remote Beam worker does not inherit the driver's environment. None when none."""
    return os.environ.get(storage.OPTIONS_ENV) or None


_ADOPTED: str | None = None


def adopt_storage_registry(raw: str | None) -> None:
    """On a worker: register the driver's storage options (`storage_registry`), once per process."""
    global _ADOPTED
    if not raw or raw == _ADOPTED:
        return
    for prefix, options in json.loads(raw).items():
        storage.configure(prefix, options)
    _ADOPTED = raw


def call_item(item: Any, fn: Any, storage_options: str | None = None) -> Any:
    """A parallel_map call on a worker: `fn(item)`, with the driver's storage options registered."""
    adopt_storage_registry(storage_options)
    return fn(item)


def encode_tasks(shards: list[InputShard], table: pa.Table | None) -> list[Task]:
    """One task per shard; memory shards carry their slice of `table`."""
    tasks: list[Task] = []
    for s in shards:
        data = None
        if s.kind == "memory":
            if table is None:
                raise JobError(f"{s.name}: an in-memory shard but no table was given")
            data = to_ipc(table.slice(s.start, s.rows))
        tasks.append((s.index, json.dumps(dataclasses.asdict(s)), data))
    return tasks


def decode_task(shard_json: str, data: bytes | None) -> tuple[InputShard, pa.Table | None]:
    """The shard and its table slice (None for file shards)."""
    d = json.loads(shard_json)
    d["paths"] = tuple(d["paths"])
    table = from_ipc(data) if data is not None else None
    return InputShard(**d), table


# -- shuffle elements (Spark RDD records, Beam elements) ------------------------------------------


def emit_pairs(pair: tuple[int, Any], name: str, emit: EmitFn, torch_threads: int | None = None,
               storage_options: str | None = None) -> Iterator[tuple[int, tuple[int, int, bytes]]]:
    """A shuffle's map side: (item index, item) -> (key, (item index, seq, the batch as Arrow IPC))
    for every non-empty batch `emit(item)` yields."""
    limit_process_threads(torch_threads)
    adopt_storage_registry(storage_options)
    index, item = pair
    for key, seq, batch in emitted(name, emit, index, item):
        yield key, (index, seq, to_ipc(batch))


def reduce_group(group: tuple[int, Iterable[tuple[int, int, bytes]]], name: str, reduce: ReduceFn,
                 torch_threads: int | None = None, storage_options: str | None = None) -> tuple[int, str]:
    """A shuffle's reduce side: one key's (item, seq, IPC) values, put in (item, seq) order (engines
    deliver them in any order) -> (key, reduce result as JSON text)."""
    limit_process_threads(torch_threads)
    adopt_storage_registry(storage_options)
    key, values = group
    parts = sorted(values, key=lambda v: (v[0], v[1]))
    return key, reduced(name, reduce, key, (from_ipc(data) for _, _, data in parts))
