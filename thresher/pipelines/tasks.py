"""Shard tasks as plain values, so Spark rows and Beam elements can carry them.

A task is (shard index, the InputShard as JSON, the shard's slice of an in-memory input
table as Arrow IPC bytes or None). Executors decode it and run the stage function.
"""

from __future__ import annotations

import dataclasses
import io
import json

import pyarrow as pa

from thresher.specs import JobError
from thresher.io.readers import InputShard

Task = tuple[int, str, "bytes | None"]


def encode_tasks(shards: list[InputShard], table: pa.Table | None) -> list[Task]:
    """One task per shard; memory shards carry their slice of `table`."""
    tasks: list[Task] = []
    for s in shards:
        data = None
        if s.kind == "memory":
            if table is None:
                raise JobError(f"{s.name}: an in-memory shard but no table was given")
            sink = io.BytesIO()
            piece = table.slice(s.start, s.rows)
            with pa.ipc.new_stream(sink, piece.schema) as w:
                w.write_table(piece)
            data = sink.getvalue()
        tasks.append((s.index, json.dumps(dataclasses.asdict(s)), data))
    return tasks


def decode_task(shard_json: str, data: bytes | None) -> tuple[InputShard, pa.Table | None]:
    """The shard and its table slice (None for file shards)."""
    d = json.loads(shard_json)
    d["paths"] = tuple(d["paths"])
    table = pa.ipc.open_stream(pa.py_buffer(data)).read_all() if data is not None else None
    return InputShard(**d), table
