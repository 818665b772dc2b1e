"""One home for file access: local paths and object-store URIs behind one small API.

Every path thresher reads or writes may be a local path or a URI (`s3://`, `gs://`, `hdfs://`,
anything `pyarrow.fs` opens). Code outside this module never calls `open`/`os.*` on an output
path directly: it calls these functions, so the same stage runs on a laptop and on a cluster
whose data lives in a bucket.

(Local implementation first; object stores are added here and nowhere else.)
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

_SCHEMES = ("s3://", "gs://", "gcs://", "hdfs://", "viewfs://", "abfs://", "abfss://", "file://")


def is_uri(path: str | os.PathLike[str]) -> bool:
    """Whether `path` names an object store (or any scheme) rather than a local path."""
    return "://" in str(path)


def filesystem(path: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """The `pyarrow.fs` filesystem that holds `path`, and the path inside it."""
    path = str(path)
    if is_uri(path):
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(path)


def join(base: str | os.PathLike[str], *parts: str) -> str:
    """`base/part/...` for local paths and URIs alike."""
    base = str(base)
    if is_uri(base):
        return posixpath.join(base, *parts)
    return os.path.join(base, *parts)


def exists(path: str | os.PathLike[str]) -> bool:
    """Whether a file (or folder) exists at `path`."""
    return os.path.exists(path)


def read_table(path: str | os.PathLike[str], columns: list[str] | None = None) -> pa.Table:
    """A Parquet file (or the named columns) as a table."""
    return pq.read_table(str(path), columns=columns)


def read_schema(path: str | os.PathLike[str]) -> pa.Schema:
    """The schema of a Parquet file."""
    return pq.read_schema(str(path))


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """The whole content of a file."""
    with open(path, "rb") as fh:
        return fh.read()


def read_json(path: str | os.PathLike[str]) -> Any:
    """A JSON file."""
    return json.loads(read_bytes(path).decode("utf-8"))


def list_names(folder: str | os.PathLike[str]) -> list[str]:
    """Sorted names of the entries directly inside `folder` ([] when it does not exist)."""
    try:
        return sorted(os.listdir(folder))
    except FileNotFoundError:
        return []


def remove_tree(folder: str | os.PathLike[str]) -> None:
    """Remove a folder thresher wrote (scratch space), and everything in it."""
    shutil.rmtree(folder, ignore_errors=True)
