"""Input files as the readers see them: listing, globbing, sizes and byte streams, for local
paths and object-store URIs (`s3://`, `gs://`, `hdfs://`, `file://`, ...) alike.

All access goes through `thresher.io.storage.filesystem(path)` (a `pyarrow.fs` filesystem and
the path inside it); a path keeps the spelling the job gave (a relative local path stays
relative, a URI stays a URI), so shard names and default ids (`<file>:<row>`, the file relative
to the inputs' common folder) are what they always were.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from thresher.io import storage
from thresher.specs import JobError


def is_uri(path: str) -> bool:
    return storage.is_uri(path)


def _split_uri(path: str) -> tuple[str, str]:
    """`s3://bucket/a/b` -> (`s3://`, `bucket/a/b`)."""
    scheme, _, rest = path.partition("://")
    return scheme + "://", rest


def info(path: str) -> pafs.FileInfo:
    return storage.info(path)


def is_dir(path: str) -> bool:
    return storage.is_dir(path)


def exists(path: str) -> bool:
    return storage.exists(path)


def join(folder: str, name: str) -> str:
    return storage.join(folder, name)


def _children(folder: str) -> list[tuple[str, pafs.FileInfo]]:
    """(name, info) of the entries directly inside `folder`, sorted by name."""
    fs, inner = storage.filesystem(folder)
    try:
        infos = fs.get_file_info(pafs.FileSelector(inner, recursive=False))
    except (OSError, pa.ArrowException) as exc:
        raise storage.storage_error(folder, exc, "list") from None
    return sorted(((posixpath.basename(i.path.rstrip("/")), i) for i in infos), key=lambda x: x[0])


def list_names(folder: str) -> list[str]:
    """Names of the entries directly inside `folder`."""
    return storage.list_names(folder)


def walk(folder: str) -> Iterator[tuple[str, list[str], list[str]]]:
    """`os.walk` for local folders and URIs: (folder, sub-folder names, file names), top down;
    prune by editing the sub-folder list in place. Locally a broken link is listed as a file
    (reading it then says what is wrong), as `os.walk` does."""
    if not is_uri(folder):
        yield from os.walk(folder)
        return
    children = _children(folder)
    dirs = [n for n, i in children if i.type == pafs.FileType.Directory]
    files = [n for n, i in children if i.type == pafs.FileType.File]
    yield folder, dirs, files
    for d in dirs:
        yield from walk(join(folder, d))


def glob(pattern: str) -> list[str]:
    """Files and folders matching `pattern` (`*`, `?`, `[...]`; `**` any depth), sorted."""
    return storage.glob(pattern)


def common_root(paths: list[str]) -> str:
    """The deepest folder holding every file of `paths`."""
    if not paths:
        return ""
    if all(is_uri(p) for p in paths):
        schemes = {_split_uri(p)[0] for p in paths}
        if len(schemes) == 1:
            scheme = schemes.pop()
            return scheme + posixpath.commonpath([posixpath.dirname(_split_uri(p)[1]) for p in paths])
        return ""
    if any(is_uri(p) for p in paths):
        return ""
    return os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])


def relative(path: str, root: str) -> str:
    """`path` relative to the folder `root` (its base name when there is no root)."""
    if is_uri(path):
        rest = _split_uri(path)[1]
        if root and is_uri(root):
            return posixpath.relpath(rest, _split_uri(root)[1])
        return posixpath.basename(rest)
    return os.path.relpath(path, root) if root else os.path.basename(path)


def stat(path: str) -> tuple[int, int | None]:
    """(size in bytes, modification time in ns or None); an error naming the file if unreadable."""
    if not is_uri(path):
        try:
            st = os.stat(path)
        except OSError as exc:
            raise JobError(f"{path}: cannot read ({exc.strerror or exc})") from None
        return st.st_size, st.st_mtime_ns
    try:
        fi = info(path)
    except (OSError, pa.ArrowException) as exc:
        raise JobError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    if fi.type != pafs.FileType.File:
        raise JobError(f"{path}: cannot read (No such file or directory)")
    return int(fi.size or 0), fi.mtime_ns


def fingerprint(paths: list[str] | tuple[str, ...], extra: str = "") -> str:
    """What identifies the files' content for resume: path, size and modification time (and
    `extra`, a shard's range inside its file)."""
    h = hashlib.sha256()
    for p in paths:
        size, mtime = stat(p)
        where = p if is_uri(p) else os.path.abspath(p)
        h.update(f"{where}|{size}|{mtime if mtime is not None else ''}".encode())
    if extra:
        h.update(f"#{extra}".encode())
    return h.hexdigest()[:16]


def open_stream(path: str) -> Any:
    """A sequential byte stream of the file as stored (no decompression)."""
    if storage.local_path_or_none(path) is not None:
        return storage.open_input(path)
    fs, inner = storage.filesystem(path)
    try:
        return fs.open_input_stream(inner, compression=None)
    except (OSError, pa.ArrowException) as exc:
        raise storage.storage_error(path, exc) from None


def parquet_file(path: str) -> Any:
    """A `pyarrow.parquet.ParquetFile` (a context manager: closing it closes the file)."""
    return storage.parquet_file(path)


def open_file(path: str) -> Any:
    """A seekable file (Parquet footers, byte ranges, Arrow streams)."""
    return storage.open_input(path)


def read_bytes(path: str) -> bytes:
    return storage.read_bytes(path)


def open_arrow(path: str) -> Any:
    """An Arrow IPC file to read: memory-mapped when local."""
    local = storage.local_path_or_none(path)
    if local is not None:
        return pa.memory_map(local)
    return open_file(path)
