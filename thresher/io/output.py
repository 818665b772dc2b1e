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
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from thresher.common.atomic import commit_point, temp_name, write_error
from thresher.specs import JobError

STAGES = ("score", "select", "write")
MANIFEST_NAME = "_manifest.json"
SUMMARY_NAME = "_summary.txt"
CARD_NAME = "_README.md"  # the dataset card (upload it as README.md to publish the folder on the Hub)
HF_YAML_NAME = ".huggingface.yaml"  # the card's `configs:` on their own: what `datasets.load_dataset` reads


def find_manifest(root: str | os.PathLike[str]) -> Path | None:
    """The manifest (`_manifest.json`) of the output folder `root`.

    None when `root` is not a folder or holds none (an unfinished or score-only run).
    """
    path = Path(root) / MANIFEST_NAME
    return path if path.is_file() else None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class OutputLayout:
    """Paths inside one output folder; every path stays inside it."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()

    def _inside(self, *parts: str) -> Path:
        path = self.root.joinpath(*parts).resolve()
        if path != self.root and self.root not in path.parents:
            raise JobError(f"output path {path} escapes the output folder {self.root}")
        return path

    def part(self, i: int) -> Path:
        return self._inside(f"part-{i:05d}.parquet")

    def staged_part(self, i: int) -> Path:
        """Shard i's selected rows before they are re-chunked into parts (`target_rows_per_part`)."""
        return self._inside("_thresher", "staged", f"part-{i:05d}.parquet")

    def scores(self, i: int) -> Path:
        return self._inside("_scores", f"part-{i:05d}.parquet")

    def rejected(self, i: int) -> Path:
        return self._inside("_rejected", f"part-{i:05d}.parquet")

    def selection(self, i: int) -> Path:
        return self._inside("_selection", f"part-{i:05d}.parquet")

    def marker(self, stage: str, i: int | None = None) -> Path:
        name = stage if i is None else f"{stage}-{i:05d}"
        return self._inside("_thresher", "done", f"{name}.json")

    @property
    def state(self) -> Path:
        return self._inside("_thresher", "state.json")

    @property
    def manifest(self) -> Path:
        return self._inside(MANIFEST_NAME)

    @property
    def summary(self) -> Path:
        return self._inside(SUMMARY_NAME)

    @property
    def card(self) -> Path:
        return self._inside(CARD_NAME)

    @property
    def hf_yaml(self) -> Path:
        return self._inside(HF_YAML_NAME)

    def read_state(self) -> dict[str, Any]:
        """The folder's run state (`_thresher/state.json`); a missing or corrupt one is a JobError
        naming the file."""
        try:
            state = json.loads(self.state.read_text(encoding="utf-8"))
            if not isinstance(state, dict) or not {"job", "score_hash", "models"} <= set(state):
                raise ValueError("not a thresher run state")
        except (OSError, ValueError) as exc:
            raise JobError(f"{self.state}: corrupt or missing run state ({type(exc).__name__}: "
                           f"{' '.join(str(exc).split())}); re-run with --overwrite to start afresh") from None
        return state

    def read_marker(self, stage: str, i: int | None = None) -> dict[str, Any] | None:
        """A stage's completion marker (None when there is none); a corrupt one is a JobError
        naming the file."""
        path = self.marker(stage, i)
        if not path.exists():
            return None
        try:
            marker = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise JobError(f"{path}: corrupt completion marker ({type(exc).__name__}: {' '.join(str(exc).split())}); "
                           f"re-run with --overwrite to start afresh") from None
        if not isinstance(marker, dict):
            raise JobError(f"{path}: corrupt completion marker (a {type(marker).__name__}, not a JSON object); "
                           f"re-run with --overwrite to start afresh")
        return marker

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
            shutil.rmtree(self._inside(name), ignore_errors=True)
        if stage == "write":
            for p in self.root.glob("part-*.parquet"):
                p.unlink()
            shutil.rmtree(self._inside("_thresher", "staged"), ignore_errors=True)


class AtomicParquetWriter:
    """Stream batches into a Parquet file that appears under its name only when complete."""

    def __init__(self, path: Path, schema: pa.Schema | None = None, compression: str = "zstd") -> None:
        self.path = path
        self.tmp = temp_name(path)
        self.schema = schema
        self.compression = None if compression == "none" else compression
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None

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
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._writer = pq.ParquetWriter(self.tmp, self.schema, compression=self.compression)
            table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
            self._writer.write_table(table)
        except OSError as exc:
            raise write_error(self.path, exc) from exc
        self.rows += batch.num_rows

    def close(self) -> dict[str, Any]:
        """Finish the file, rename it into place and return rows, bytes and sha256 (a failed
        write is a WriteError naming the file)."""
        if self._writer is None and self.schema is None:
            raise JobError(f"{self.path}: nothing written and no schema known")
        try:
            if self._writer is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._writer = pq.ParquetWriter(self.tmp, self.schema, compression=self.compression)
            self._writer.close()
            with open(self.tmp, "rb") as fh:
                os.fsync(fh.fileno())
            commit_point(self.path)
            os.replace(self.tmp, self.path)
        except OSError as exc:
            raise write_error(self.path, exc) from exc
        return {"file": self.path.name, "rows": self.rows, "bytes": self.path.stat().st_size,
                "sha256": _sha256(self.path)}

    def abort(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # the file is being discarded anyway
                pass
        self.tmp.unlink(missing_ok=True)

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
    """A clear error for an object-store URI (s3://, gs://, hdfs://, ...): not supported yet."""
    m = _URI.match(str(path))
    if m:
        raise JobError(f"{what} {str(path)!r}: {m.group(1)}:// paths are not supported yet; thresher reads "
                       f"and writes local (or mounted) folders only. Copy the data to a local disk or mount "
                       f"the bucket, and give that path")


def check_own_or_empty(root: str | os.PathLike[str]) -> None:
    """Refuse (JobError) a folder that thresher may not touch; creates and deletes nothing.

    Thresher's own: it holds `_thresher/state.json`, or nothing but a `_thresher/` with the
    lock of a run killed before it wrote its state. Also allowed: a new or empty folder."""
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


def remove_stale_temporaries(root: Path) -> list[Path]:
    """Delete temporary files a killed job left in an output folder; returns what was removed.

    Only thresher's own temporaries go: `.part-*.tmp-<pid>`, `._manifest.json.tmp-<pid>`,
    `._summary.txt.tmp-<pid>`, `._README.md.tmp-<pid>` and `..huggingface.yaml.tmp-<pid>` beside
    the parts, and `.<name>.tmp-<pid>` directly inside `_scores/`, `_rejected/`, `_selection/`,
    `_thresher/`, `_thresher/done/` and `_thresher/staged/`; no other folder is looked into. Only call this holding the folder's JobLock, after
    `check_own_or_empty` passed: then no live writer owns any of them.
    """
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


class JobLock:
    """An exclusive lock on an output folder; a second job on the same folder is refused."""

    def __init__(self, layout: OutputLayout) -> None:
        self.path = layout._inside("_thresher", "lock")
        self._fh: Any = None

    def acquire(self) -> None:
        """Take the lock; a folder that is not thresher's own (or new/empty) is refused before
        anything is created in it."""
        check_own_or_empty(self.path.parent.parent)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise JobError(f"output folder {self.path.parent.parent} is in use by another thresher job "
                           f"({holder}); wait for it or choose another --output") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {os.uname().nodename}")
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "JobLock":
        self.acquire()
        return self

    def __exit__(self, *_: Any) -> None:
        self.release()
