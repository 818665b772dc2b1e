"""Output folder: layout, atomic writes, completion markers and the job lock.

Layout of an output folder:
    part-00000.parquet ...       selected rows, one part per input shard (the dataset), or parts of
                                 `output.target_rows_per_part` rows re-chunked in (shard, row) order
    _manifest.json, _summary.txt what the run did, counts that add up, timings
    _README.md, .huggingface.yaml  the dataset card, and its `configs:` (data_files: part-*.parquet)
    _scores/part-*.parquet       narrow score table (id + scores), "score once, select many"
    _rejected/part-*.parquet     rows that could not be used, with the reason and raw bytes
    _selection/part-*.parquet    per-row status and selector columns
    _thresher/                   state (config hashes), completion markers, lock (and, while parts
                                 are re-chunked, the per-shard parts in `_thresher/staged/`)
Every file is written to a temporary name in the same folder and renamed into place,
and a completion marker is written only after the rename, so a reader never sees half a
shard and a re-run never trusts one.

Everything that is not a selected row starts with "_" (or ".") so that the folder itself is a
Parquet dataset: `pandas.read_parquet(folder)`, `pyarrow.dataset.dataset(folder)` and
`spark.read.parquet(folder)` read the parts and nothing else. That is why the card is `_README.md`,
not `README.md` (those readers would try to read a `README.md` as Parquet and fail); `datasets`
reads `.huggingface.yaml` (the same `configs:` a card's front matter holds), so
`datasets.load_dataset(folder)` loads exactly the parts.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from thresher.common.atomic import add_commit_guard, commit_point, remove_commit_guard, temp_name, write_error
from thresher.io import storage
from thresher.io.storage import StoragePath
from thresher.specs import JobError

STAGES = ("score", "select", "write")
MANIFEST_NAME = "_manifest.json"
SUMMARY_NAME = "_summary.txt"
CARD_NAME = "_README.md"  # the dataset card (upload it as README.md to publish the folder on the Hub)
HF_YAML_NAME = ".huggingface.yaml"  # the card's `configs:` on their own: what `datasets.load_dataset` reads


def find_manifest(root: str | os.PathLike[str]) -> Path | StoragePath | None:
    """The manifest (`_manifest.json`) of the output folder `root` (local or a URI).

    None when `root` is not a folder or holds none (an unfinished or score-only run)."""
    if storage.is_remote(root):
        path = StoragePath(storage.normalize(root)) / MANIFEST_NAME
        return path if storage.is_file(path) else None
    path = Path(root) / MANIFEST_NAME
    return path if path.is_file() else None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class OutputLayout:
    """Paths inside one output folder (local or an object-store URI); every path stays inside it.

    Paths are `StoragePath`s: `str`s with the `pathlib` methods the pipeline uses. A local root
    is resolved (absolute, symlinks followed); a URI is normalised. `storage_options` (the job's
    `output.storage_options`) are registered for the folder (`storage.configure`)."""

    def __init__(self, root: str | os.PathLike[str], storage_options: dict[str, Any] | None = None) -> None:
        self.remote = storage.is_remote(root)
        if self.remote:
            self.root = StoragePath(storage.normalize(root))
            storage.configure(self.root, storage_options)
        else:
            self.root = StoragePath(Path(storage.local_path_or_none(root) or root).resolve())

    def _inside(self, *parts: str) -> StoragePath:
        if self.remote:
            path = StoragePath(storage.normalize(storage.join(self.root, *parts)))
            if path != self.root and not path.startswith(self.root + "/"):
                raise JobError(f"output path {path} escapes the output folder {self.root}")
            return path
        root = Path(self.root)
        p = root.joinpath(*parts).resolve()
        if p != root and root not in p.parents:
            raise JobError(f"output path {p} escapes the output folder {self.root}")
        return StoragePath(p)

    def part(self, i: int) -> StoragePath:
        return self._inside(f"part-{i:05d}.parquet")

    def staged_part(self, i: int) -> StoragePath:
        """Shard i's selected rows before they are re-chunked into parts (`target_rows_per_part`)."""
        return self._inside("_thresher", "staged", f"part-{i:05d}.parquet")

    def scores(self, i: int) -> StoragePath:
        return self._inside("_scores", f"part-{i:05d}.parquet")

    def rejected(self, i: int) -> StoragePath:
        return self._inside("_rejected", f"part-{i:05d}.parquet")

    def selection(self, i: int) -> StoragePath:
        return self._inside("_selection", f"part-{i:05d}.parquet")

    def marker(self, stage: str, i: int | None = None) -> StoragePath:
        name = stage if i is None else f"{stage}-{i:05d}"
        return self._inside("_thresher", "done", f"{name}.json")

    @property
    def state(self) -> StoragePath:
        return self._inside("_thresher", "state.json")

    @property
    def manifest(self) -> StoragePath:
        return self._inside(MANIFEST_NAME)

    @property
    def summary(self) -> StoragePath:
        return self._inside(SUMMARY_NAME)

    @property
    def card(self) -> StoragePath:
        return self._inside(CARD_NAME)

    @property
    def hf_yaml(self) -> StoragePath:
        return self._inside(HF_YAML_NAME)

    def read_state(self) -> dict[str, Any]:
        """The folder's run state (`_thresher/state.json`); a missing or corrupt one is a JobError
        naming the file."""
        try:
            state = json.loads(storage.read_text(self.state))
            if not isinstance(state, dict) or not {"job", "score_hash", "models"} <= set(state):
                raise ValueError("not a thresher run state")
        except (OSError, ValueError) as exc:
            raise JobError(f"{self.state}: corrupt or missing run state ({type(exc).__name__}: "
                           f"{' '.join(str(exc).split())}); re-run with --overwrite to start afresh") from None
        return state

    def read_marker(self, stage: str, i: int | None = None) -> dict[str, Any] | None:
        """A stage's completion marker (None when there is none); a corrupt one is a JobError
        naming the file. On an object store a marker is trusted only when the objects it vouches
        for exist with the sizes it records (`_vouched`); otherwise it counts as absent."""
        path = self.marker(stage, i)
        if not self.remote and not path.exists():
            return None
        try:
            marker = json.loads(storage.read_text(path))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise JobError(f"{path}: corrupt completion marker ({type(exc).__name__}: {' '.join(str(exc).split())}); "
                           f"re-run with --overwrite to start afresh") from None
        if not isinstance(marker, dict):
            raise JobError(f"{path}: corrupt completion marker (a {type(marker).__name__}, not a JSON object); "
                           f"re-run with --overwrite to start afresh")
        if self.remote and not self._vouched(stage, i, marker):
            return None
        return marker

    def _vouched(self, stage: str, i: int | None, marker: dict[str, Any]) -> bool:
        """Whether the objects a marker names exist with the sizes it records (object stores)."""
        def has(path: StoragePath, entry: Any) -> bool:
            if not isinstance(entry, dict) or "bytes" not in entry:
                return True  # nothing recorded to check
            got = storage.info(path)
            return got.type == pafs.FileType.File and got.size == entry["bytes"]

        if i is None:
            return True
        if stage == "score":
            return has(self.scores(i), marker.get("scores")) and has(self.rejected(i), marker.get("rejected_file"))
        if stage == "write-part":
            return has(self.part(i), marker.get("part"))
        if stage == "write":
            entry = marker.get("part")
            if has(self.staged_part(i), entry) or has(self.part(i), entry):
                return True
            # re-chunked: the staged part is gone once every part is written; the part markers vouch
            return storage.exists(self.marker("write-part", 0))
        return True

    def clear_stage(self, stage: str) -> None:
        """Forget a stage's markers and files (used when its config changed). The write stage's
        manifest, summary and card go first: a folder with a manifest is a finished run."""
        if stage == "write":
            for p in (self.manifest, self.summary, self.card, self.hf_yaml):
                p.unlink(missing_ok=True)
        done = self._inside("_thresher", "done")
        if done.exists():
            for p in done.glob(f"{stage}*.json"):
                p.unlink()
        folder = {"score": ["_scores", "_rejected"], "select": ["_selection"], "write": []}[stage]
        for name in folder:
            storage.remove_tree(self._inside(name))
        if stage == "write":
            for p in self.root.glob("part-*.parquet"):
                p.unlink()
            storage.remove_tree(self._inside("_thresher", "staged"))


class AtomicParquetWriter:
    """Stream batches into a Parquet file that appears under its name only when complete.

    Local: a temporary beside the target, fsynced and renamed into place. Object store: a local
    spool file (`storage.spool_path`), checksummed, then uploaded as one object under its final
    name; nothing appears there before `close` (after `commit_point`), and an aborted or killed
    write leaves nothing under the name."""

    def __init__(self, path: str | os.PathLike[str], schema: pa.Schema | None = None,
                 compression: str = "zstd") -> None:
        self.remote = storage.is_remote(path)
        self.path: Any = (StoragePath(storage.normalize(path)) if self.remote
                          else path if isinstance(path, (Path, StoragePath)) else StoragePath(path))
        self.tmp: Any = None if self.remote else temp_name(Path(path))
        self.schema = schema
        self.compression = None if compression == "none" else compression
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None

    def _open(self) -> None:
        if self.remote:
            self.tmp = Path(storage.spool_path(self.path.name))
        else:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._writer = pq.ParquetWriter(self.tmp, self.schema, compression=self.compression)

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Append a batch. A failed write (disk full, ...) is a WriteError naming the file."""
        if batch.schema != (self.schema or batch.schema):
            try:
                batch = batch.select(self.schema.names).cast(self.schema)
            except (pa.ArrowInvalid, KeyError, ValueError) as exc:
                raise JobError(f"{self.path.name}: batch schema differs from the shard's "
                               f"({batch.schema} vs {self.schema}): {exc}") from None
        try:
            if self._writer is None:
                self.schema = self.schema or batch.schema
                self._open()
            table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
            assert self._writer is not None
            self._writer.write_table(table)
        except OSError as exc:
            raise write_error(self.path, exc) from exc
        self.rows += batch.num_rows

    def close(self) -> dict[str, Any]:
        """Finish the file, rename (upload) it into place and return rows, bytes and sha256 (a
        failed write is a WriteError naming the file)."""
        if self._writer is None and self.schema is None:
            raise JobError(f"{self.path}: nothing written and no schema known")
        try:
            if self._writer is None:
                self._open()
            assert self._writer is not None
            self._writer.close()
            if self.remote:
                return self._publish()
            with open(self.tmp, "rb") as fh:
                os.fsync(fh.fileno())
            commit_point(self.path)
            os.replace(self.tmp, self.path)
        except OSError as exc:
            raise write_error(self.path, exc) from exc
        path = Path(self.path)
        return {"file": path.name, "rows": self.rows, "bytes": path.stat().st_size, "sha256": _sha256(path)}

    def _publish(self) -> dict[str, Any]:
        out = {"file": self.path.name, "rows": self.rows, "bytes": self.tmp.stat().st_size,
               "sha256": _sha256(self.tmp)}
        commit_point(self.path)
        try:
            storage.put_file(self.tmp, self.path)
        finally:
            self.tmp.unlink(missing_ok=True)
        return out

    def abort(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # the file is being discarded anyway
                pass
        if self.tmp is not None:
            Path(self.tmp).unlink(missing_ok=True)

    def __enter__(self) -> "AtomicParquetWriter":
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is not None:
            self.abort()


_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# temporaries thresher's own writers leave: `.<name>.tmp-<pid>` (see common/atomic.py)
_TMP_NAME = re.compile(r"^\.(?P<name>.+)\.tmp-\d+$")
_ROOT_TMP_TARGETS = re.compile(r"^(part-.*|_manifest\.json|_summary\.txt|_README\.md|\.huggingface\.yaml)$")
_OWN_FOLDERS = ("_scores", "_rejected", "_selection", "_thresher", "_thresher/done", "_thresher/staged")


def require_local_path(path: str | os.PathLike[str], what: str) -> None:
    """A clear error for an object-store URI (s3://, gs://, hdfs://, ...), for code that reads or
    writes through local files only (the output folder takes URIs: `check_storage_path`)."""
    m = _URI.match(str(path))
    if m:
        raise JobError(f"{what} {str(path)!r}: {m.group(1)}:// paths are not supported yet; thresher reads "
                       f"and writes local (or mounted) folders only. Copy the data to a local disk or mount "
                       f"the bucket, and give that path")


def check_storage_path(path: str | os.PathLike[str], what: str, storage_options: dict[str, Any] | None = None) -> None:
    """Check that `path` (a local path or a URI) can be used, before anything is written: a bad
    URI, unknown scheme, missing credentials or unreachable endpoint is a one-line JobError that
    names `what` and the path (within seconds: short timeouts, few retries)."""
    if not storage.is_remote(path):
        return
    try:
        storage.configure(storage.normalize(path), storage_options, replace=True)
        storage.exists(storage.normalize(path))
    except JobError as exc:
        msg = str(exc)
        raise JobError(msg if msg.startswith(what) else f"{what}: {msg}") from None


def check_own_or_empty(root: str | os.PathLike[str]) -> None:
    """Refuse (JobError) a folder that thresher may not touch; creates and deletes nothing.

    Thresher's own: it holds `_thresher/state.json`, or nothing but a `_thresher/` with the
    lock of a run killed before it wrote its state. Also allowed: a new or empty folder."""
    if storage.is_remote(root):
        _check_own_or_empty_remote(StoragePath(storage.normalize(root)))
        return
    root = Path(root)
    if not root.exists():
        return
    if not root.is_dir():
        raise JobError(f"output folder {root} is a file, not a folder; choose an empty or new folder")
    if (root / "_thresher" / "state.json").is_file():
        return
    entries = sorted(p.name for p in root.iterdir())
    if not entries:
        return
    meta = root / "_thresher"
    if entries == ["_thresher"] and meta.is_dir() and not meta.is_symlink():
        inside = {p.name for p in meta.iterdir()}
        done = meta / "done"
        if all(n in ("lock", "done") or _TMP_NAME.match(n) for n in inside) and (
                not done.exists() or (done.is_dir() and not any(done.iterdir()))):
            return
    foreign = [n for n in entries if n != "_thresher"] or entries
    raise JobError(f"output folder {root} is not empty and was not written by thresher "
                   f"(found {foreign[:5]}); choose an empty or new folder")


def _check_own_or_empty_remote(root: StoragePath) -> None:
    """`check_own_or_empty` on an object store: prefixes stand for folders."""
    kind = storage.info(root).type
    if kind == pafs.FileType.NotFound:
        return
    if kind == pafs.FileType.File:
        raise JobError(f"output folder {root} is a file, not a folder; choose an empty or new folder")
    if storage.is_file(root / "_thresher" / "state.json"):
        return
    entries = storage.list_names(root)
    if not entries:
        return
    if entries == ["_thresher"]:
        inside = set(storage.list_names(root / "_thresher"))
        if inside <= {"lock", "done"} and not storage.list_names(root / "_thresher" / "done"):
            return
    foreign = [n for n in entries if n != "_thresher"] or entries
    raise JobError(f"output folder {root} is not empty and was not written by thresher "
                   f"(found {foreign[:5]}); choose an empty or new folder")


def remove_stale_temporaries(root: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary files a killed job left in an output folder; returns what was removed.

    Only thresher's own temporaries go: `.part-*.tmp-<pid>`, `._manifest.json.tmp-<pid>`,
    `._summary.txt.tmp-<pid>`, `._README.md.tmp-<pid>` and `..huggingface.yaml.tmp-<pid>` beside
    the parts, and `.<name>.tmp-<pid>` directly inside `_scores/`, `_rejected/`, `_selection/`,
    `_thresher/`, `_thresher/done/` and `_thresher/staged/`; no other folder is looked into. Only call this holding the folder's JobLock, after
    `check_own_or_empty` passed: then no live writer owns any of them.

    On an object store there are none: nothing is written there under a temporary name (an
    upload cut short is an incomplete multipart upload, invisible; a bucket lifecycle rule
    `AbortIncompleteMultipartUpload` reclaims its space); the local spool files of dead
    processes of this machine go instead (`storage.clean_spool`).
    """
    if storage.is_remote(root):
        storage.clean_spool()  # a killed run's local spool files (this machine)
        return []
    root = Path(root)
    candidates: list[Path] = []
    if root.is_dir():
        candidates += [p for p in root.iterdir()
                       if (m := _TMP_NAME.match(p.name)) and _ROOT_TMP_TARGETS.match(m["name"])]
    for sub in _OWN_FOLDERS:
        folder = root / sub
        if folder.is_dir() and not folder.is_symlink():
            candidates += [p for p in folder.iterdir() if _TMP_NAME.match(p.name)]
    removed = []
    for p in sorted(candidates):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


LOCK_TTL_ENV = "THRESHER_LOCK_TTL"  # seconds a lease on an object store lasts without renewal
DEFAULT_LOCK_TTL_S = 120.0


class JobLock:
    """An exclusive lock on an output folder; a second job on the same folder is refused.

    Local: `fcntl.flock` on `_thresher/lock` (released by the kernel when the process dies).
    Object store: a lease object `_thresher/lock` (`_Lease`): created with a conditional write,
    holding its owner and expiry, renewed by a background thread, taken over once expired (or
    at once when its owner is a dead process on this machine)."""

    def __init__(self, layout: OutputLayout) -> None:
        self.path = layout._inside("_thresher", "lock")
        self.root = layout.root
        self.remote = layout.remote
        self._fh: Any = None
        self._lease: _Lease | None = None

    def acquire(self) -> None:
        """Take the lock; a folder that is not thresher's own (or new/empty) is refused before
        anything is created in it."""
        check_own_or_empty(self.root)
        if self.remote:
            lease = _Lease(self.path, self.root)
            lease.acquire()
            self._lease = lease
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise JobError(_in_use(self.root, holder)) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {os.uname().nodename}")
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._lease is not None:
            self._lease.release()
            self._lease = None
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "JobLock":
        self.acquire()
        return self

    def __exit__(self, *_: Any) -> None:
        self.release()


def _in_use(root: Any, holder: str) -> str:
    return (f"output folder {root} is in use by another thresher job ({holder}); "
            f"wait for it or choose another --output")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Lease:
    """A lease object on an object store: `{"owner", "host", "pid", "token", "expires", "ttl"}`.

    Taken with a conditional create (S3: `PutObject` with `If-None-Match: *`, through boto3);
    a held lease is renewed every ttl/3 by a daemon thread with a write conditional on its ETag
    (`If-Match`), so a lease taken over by another job is never overwritten; an expired lease
    (or one whose owner is a dead process on this host) is taken over the same way. Released by
    a delete conditional on the ETag. Without boto3, or on a store with no conditional writes
    through pyarrow (gs://, hdfs://, ...), `_BestEffortStore` checks, writes and reads back its
    token: a race of two jobs starting within the same moment is not excluded there."""

    def __init__(self, path: StoragePath, root: StoragePath) -> None:
        self.path, self.root = path, root
        self.ttl = float(os.environ.get(LOCK_TTL_ENV) or DEFAULT_LOCK_TTL_S)
        self.token = uuid.uuid4().hex
        self.host = os.uname().nodename
        self.owner = f"pid {os.getpid()} on {self.host}"
        self.store = _S3LeaseStore(path) if _S3LeaseStore.usable(path) else _BestEffortStore(path)
        self._etag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    def _body(self) -> bytes:
        return json.dumps({"owner": self.owner, "host": self.host, "pid": os.getpid(), "token": self.token,
                           "expires": time.time() + self.ttl, "ttl": self.ttl}).encode()

    def _takeable(self, holder: dict[str, Any] | None) -> bool:
        if not isinstance(holder, dict):
            return True  # unreadable: a lease cut short
        try:
            if float(holder.get("expires", 0)) < time.time():
                return True
        except (TypeError, ValueError):
            return True
        pid = holder.get("pid")
        return holder.get("host") == self.host and isinstance(pid, int) and pid != os.getpid() \
            and not _pid_alive(pid)

    def acquire(self) -> None:
        etag = self.store.create(self._body())
        if etag is None:
            holder, old = self.store.read()
            if old is None:  # released in between
                etag = self.store.create(self._body())
            elif self._takeable(holder):
                etag = self.store.replace(self._body(), old)
            if etag is None:
                who = holder.get("owner", "unknown") if isinstance(holder, dict) else "unknown"
                raise JobError(_in_use(self.root, str(who)))
        self._etag = etag
        add_commit_guard(self._guard)
        self._thread = threading.Thread(target=self._renew, name="thresher-lease", daemon=True)
        self._thread.start()

    def _guard(self, target: str) -> None:
        """No commit under the folder once the lease is lost (another job took it over)."""
        if self.lost and (target == self.root or target.startswith(self.root + "/")):
            raise JobError(f"output folder {self.root}: lost the lock to another thresher job (the lease "
                           f"was not renewed in time); stopped before writing {target}")

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                etag = self.store.replace(self._body(), self._etag or "")
            except JobError:
                continue  # a failed renewal: try again before the lease expires
            if etag is None:
                self.lost = True
                import sys

                print(f"thresher: lost the lease on {self.root} (taken over by another job)", file=sys.stderr)
                return
            self._etag = etag

    def release(self) -> None:
        remove_commit_guard(self._guard)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._etag is not None and not self.lost:
            try:
                self.store.delete(self._etag)
            except JobError:
                pass  # it expires
        self._etag = None


class _S3LeaseStore:
    """Conditional writes on S3 through boto3 (endpoint, region, credentials as `storage` resolves them)."""

    def __init__(self, path: StoragePath) -> None:
        import boto3
        from botocore.config import Config

        self.path = path
        bucket_key = path.split("://", 1)[1]
        self.bucket, _, self.key = bucket_key.partition("/")
        s = storage.s3_settings(path, storage.options_for(path))
        kw: dict[str, Any] = {}
        cfg: dict[str, Any] = {"connect_timeout": storage.CONNECT_TIMEOUT_S, "read_timeout": 30,
                               "retries": {"max_attempts": storage.MAX_ATTEMPTS, "mode": "standard"}}
        if s["anonymous"]:
            from botocore import UNSIGNED

            cfg["signature_version"] = UNSIGNED
        elif s["key"]:
            kw.update(aws_access_key_id=s["key"], aws_secret_access_key=s["secret"], aws_session_token=s["token"])
        self.client = boto3.client("s3", endpoint_url=s["endpoint_url"],
                                   region_name=s["region"] or ("us-east-1" if s["endpoint_url"] else None),
                                   config=Config(**cfg), **kw)

    @staticmethod
    def usable(path: str) -> bool:
        if storage.scheme_of(path) not in ("s3", "s3a"):
            return False
        try:
            import boto3  # noqa: F401
        except ImportError:
            return False
        return True

    def _call(self, fn: Any, conflict: tuple[str, ...] = (), **kw: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(Bucket=self.bucket, Key=self.key, **kw)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in conflict or str(status) in conflict:
                return None
            raise storage.storage_error(self.path, exc, "lock") from None
        except BotoCoreError as exc:
            raise storage.storage_error(self.path, exc, "lock") from None

    _LOST = ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "412", "409", "404")

    def create(self, body: bytes) -> str | None:
        r = self._call(self.client.put_object, ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"),
                       Body=body, IfNoneMatch="*")
        return None if r is None else r["ETag"]

    def read(self) -> tuple[dict[str, Any] | None, str | None]:
        r = self._call(self.client.get_object, ("NoSuchKey", "404"))
        if r is None:
            return None, None
        try:
            holder = json.loads(r["Body"].read())
        except ValueError:
            holder = None
        return holder, r["ETag"]

    def replace(self, body: bytes, etag: str) -> str | None:
        r = self._call(self.client.put_object, self._LOST, Body=body, IfMatch=etag)
        return None if r is None else r["ETag"]

    def delete(self, etag: str) -> None:
        self._call(self.client.delete_object, self._LOST + ("NotImplemented", "501"), IfMatch=etag)


class _BestEffortStore:
    """A lease through pyarrow only (no conditional writes): check, write, read back the token."""

    def __init__(self, path: StoragePath) -> None:
        self.path = path

    def read(self) -> tuple[dict[str, Any] | None, str | None]:
        try:
            holder = storage.read_json(self.path)
        except FileNotFoundError:
            return None, None
        except ValueError:
            return None, "?"
        return (holder, str(holder.get("token"))) if isinstance(holder, dict) else (None, "?")

    def _write(self, body: bytes) -> str | None:
        try:
            storage._put_bytes(self.path, body)
        except OSError as exc:
            raise storage.storage_error(self.path, exc, "lock") from None
        time.sleep(0.2)  # let a racing writer land, then see who won
        holder, token = self.read()
        return token if token == json.loads(body)["token"] else None

    def create(self, body: bytes) -> str | None:
        return None if storage.exists(self.path) else self._write(body)

    def replace(self, body: bytes, etag: str) -> str | None:
        _, token = self.read()
        return self._write(body) if token == etag else None

    def delete(self, etag: str) -> None:
        _, token = self.read()
        if token == etag:
            storage.remove_file(self.path)
