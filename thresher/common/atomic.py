"""Files that appear under their name only when complete (write a temporary, then rename).

Temporaries are named `.<name>.tmp-<pid>` beside the target, so a folder's stale ones are
recognisable (`TMP_GLOB`) and a reader listing `part-*` never sees one.

Every rename that publishes a finished file goes through `commit_point` first: there a pool
worker whose parent is gone exits without writing (`guard_parent`), and the test hook
`THRESHER_FAULT` can kill the process at an exact commit.

Object stores (`s3://`, `gs://`, ...) have no rename: there a write of a URI goes through
`commit_point` and then publishes the whole object at once (one PUT of the bytes, or the upload of
a finished local spool file), through the functions `thresher.io.storage` registers here
(`register_object_store`; this module sits below `io` and imports nothing from it).
"""

from __future__ import annotations

import contextlib
import errno as errno_module
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from thresher.specs import JobError

TMP_GLOB = ".*.tmp-*"
# test hook, comma-separated items: "commit:N" (os._exit(137) just before this process's N-th
# commit, its temporary written: what a kill there leaves), "delay:SECONDS" (sleep before each commit)
FAULT_ENV = "THRESHER_FAULT"
PARENT_GONE_EXIT = 75  # a worker that finds its parent gone exits with this, writing nothing

_parent_pid: int | None = None
_commits = 0
# set by thresher.io.storage: (put_bytes(uri, data), put_file(local, uri), is_remote(path))
_object_store: tuple[Callable[[str, bytes], None], Callable[[str, str], None], Callable[[str], bool]] | None = None


def register_object_store(put_bytes: Callable[[str, bytes], None], put_file: Callable[[str, str], None],
                          is_remote: Callable[[str], bool]) -> None:
    """How writes of remote URIs are published (called once by `thresher.io.storage`)."""
    global _object_store
    _object_store = (put_bytes, put_file, is_remote)


def _remote(path: str | os.PathLike[str]) -> bool:
    if "://" not in str(path):
        return False
    if _object_store is None:
        if str(path).startswith("file://"):
            return False
        raise JobError(f"{path}: object-store paths need thresher.io.storage (import it first)")
    return _object_store[2](str(path))


def guard_parent(pid: int | None) -> None:
    """From now on, exit (writing nothing) at the next commit once `pid` is no longer this
    process's parent (the portable half of "workers die with their parent")."""
    global _parent_pid
    _parent_pid = pid


_guards: list[Callable[[str], None]] = []


def add_commit_guard(guard: Callable[[str], None]) -> None:
    """Call `guard(target)` at every commit of this process from now on; it raises to stop the
    commit (the object-store lease lock refuses commits once another job took the folder over)."""
    _guards.append(guard)


def remove_commit_guard(guard: Callable[[str], None]) -> None:
    if guard in _guards:
        _guards.remove(guard)


def commit_point(target: str | os.PathLike[str]) -> None:
    """Called just before a finished temporary is renamed onto `target` (on an object store:
    just before the finished object is uploaded under its name)."""
    global _commits
    for guard in list(_guards):
        guard(str(target))
    faults = [item.strip().split(":", 1) for item in os.environ.get(FAULT_ENV, "").split(",") if ":" in item]
    for kind, value in faults:
        if kind == "delay":
            time.sleep(float(value))
    if _parent_pid is not None and os.getppid() != _parent_pid:
        os._exit(PARENT_GONE_EXIT)
    _commits += 1
    for kind, value in faults:
        if kind == "commit" and int(value) == _commits:
            os._exit(137)


def temp_name(path: Path) -> Path:
    """The temporary name a write of `path` goes through in this process."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


class WriteError(JobError, OSError):
    """Writing an output file failed (disk full, no permission, ...): a JobError whose one-line
    message names the file, and still an OSError (with the cause's errno) for `except OSError`."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        OSError.__init__(self, message)
        self.errno = errno

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def write_error(path: str | os.PathLike[str], exc: OSError) -> WriteError:
    """`exc` (raised while writing `path`) as a WriteError naming `path` on one line."""
    if isinstance(exc, WriteError):
        return exc
    reason = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
    other = exc.filename if exc.filename is not None else None
    if other is not None and Path(str(other)).name not in (Path(path).name, temp_name(Path(path)).name):
        reason += f" ({other})"
    hint = ("; free some space (or choose another output folder) and re-run the same command to resume"
            if exc.errno == errno_module.ENOSPC else "")
    return WriteError(f"cannot write {path}: {reason}{hint}", exc.errno)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`, on error remove it.

    Works for files and folders (e.g. `save_pretrained` into the yielded path). An OSError
    (disk full, ...) comes out as a `WriteError` that names `path`. For an object-store URI the
    yielded path is a local spool folder's entry, uploaded whole after `commit_point`."""
    if _remote(path):
        with _remote_atomic_path(str(path)) as tmp:
            yield tmp
        return
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(target, exc) from exc
    tmp = temp_name(target)
    _remove(tmp)
    try:
        yield tmp
        commit_point(target)
        if target.is_dir() and tmp.is_dir():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except OSError as exc:
        _remove(tmp)
        raise write_error(target, exc) from exc
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def _remote_atomic_path(uri: str) -> Iterator[Path]:
    import tempfile

    assert _object_store is not None
    spool = Path(tempfile.mkdtemp(prefix="thresher-spool-"))
    tmp = spool / (uri.rstrip("/").rsplit("/", 1)[-1] or "object")
    try:
        yield tmp
        commit_point(uri)
        if tmp.exists():
            _object_store[1](str(tmp), uri)
    except OSError as exc:
        raise write_error(uri, exc) from exc
    finally:
        shutil.rmtree(spool, ignore_errors=True)


def write_bytes_atomic(data: bytes, path: str | os.PathLike[str], fsync: bool = True) -> None:
    """Write bytes to `path` atomically (fsync before the rename unless told not to); on an
    object store, `commit_point` and then one PUT of the whole object."""
    if _remote(path):
        assert _object_store is not None
        commit_point(path)
        try:
            _object_store[0](str(path), data)
        except OSError as exc:
            raise write_error(path, exc) from exc
        return
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
