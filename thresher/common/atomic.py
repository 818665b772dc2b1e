"""Files that appear under their name only when complete (write a temporary, then rename).

Temporaries are named `.<name>.tmp-<pid>` beside the target, so a folder's stale ones are
recognisable (`TMP_GLOB`) and a reader listing `part-*` never sees one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_GLOB = ".*.tmp-*"


def temp_name(path: Path) -> Path:
    """The temporary name a write of `path` goes through in this process."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`, on error remove it.

    Works for files and folders (e.g. `save_pretrained` into the yielded path)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(target)
    _remove(tmp)
    try:
        yield tmp
        if target.is_dir() and tmp.is_dir():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        _remove(tmp)
        raise


def write_bytes_atomic(data: bytes, path: str | os.PathLike[str], fsync: bool = True) -> None:
    """Write bytes to `path` atomically (fsync before the rename unless told not to)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        if fsync:
            os.fsync(fh.fileno())


def write_text_atomic(text: str, path: str | os.PathLike[str]) -> None:
    """Write UTF-8 text to `path` atomically."""
    write_bytes_atomic(text.encode("utf-8"), path)


def write_json_atomic(obj: Any, path: str | os.PathLike[str]) -> None:
    """Write JSON (indented, sorted keys) to `path` atomically."""
    write_text_atomic(json.dumps(obj, indent=2, sort_keys=True, default=str), path)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)
