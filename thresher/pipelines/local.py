"""The local engine: a process pool over input shards, with progress that moves.

Progress (`thresher.common.progress`): on a terminal a bar per stage, updated per batch while
shards run (workers send their counts through a `Channel` the pool initializer hands them),
with documents per second and an ETA; otherwise one line per stage when it ends; nothing with
`progress=False`. Shards a previous run finished are out of the total and the rate.

Workers die with the main process (`worker.die_with_parent`), and Ctrl-C or SIGTERM of the
main process (a BaseException that is not an Exception) kills them at once instead of
waiting for the shards they are on: their temporaries are removed by the next run.

`shuffle` routes rows to keys through spill files (Arrow IPC, one per emitted batch, written
atomically by the emit tasks under `spill_dir/<name>/k-<key>/`); each reduce task reads only
its key's folder, so no task holds more than one item's or one key's rows. `spill_dir` may be
a local folder or an object-store URI (`s3://...`): the spill I/O goes through
`thresher.io.storage` (locally a temporary renamed; on a store one PUT, so an object appears
whole under its final name or not at all)."""

from __future__ import annotations

import inspect
import json
import multiprocessing as mp
import os
import re
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

import pyarrow as pa

from thresher.common.atomic import write_bytes_atomic
from thresher.io import storage
from thresher.common.progress import Channel, Progress, call_in_process, call_reporting, item_label
from thresher.config import JobSpec
from thresher.io.readers import InputShard
from thresher.pipelines.engine import (EmitFn, ItemFn, ReduceFn, StageFn, check_item_count, emitted,
                                       in_shard_order, reduced, shuffle_name)
from thresher.pipelines.tasks import from_ipc, to_ipc
from thresher.pipelines.worker import init_worker
from thresher.specs import JobError

VERBS = {"score": "scored", "write": "written"}


class LocalEngine:
    """Run a stage over shards in `workers` processes (in this process when workers == 1)."""

    name = "local"
    progress_cls: type[Progress] = Progress  # a subclass can watch the bars (tests)

    def __init__(self, job: JobSpec, progress: bool = True) -> None:
        spec = job.engine.local
        self.workers = spec.workers or os.cpu_count() or 1
        self.torch_threads = spec.torch_threads or (1 if self.workers > 1 else None)
        self.progress = progress
        self._pool: ProcessPoolExecutor | None = None
        self._channel: Channel | None = None  # workers' progress counts, only while a bar is drawn
        self._rows_seen: dict[int, int] = {}  # rows per shard from an earlier stage (totals of later ones)

    def map_shards(self, stage: str, fn: StageFn, job: JobSpec, shards: list[InputShard], out_root: str,
                   table: pa.Table | None = None) -> list[dict[str, Any]]:
        """Call `fn(job, shard, out_root, slice)` for every shard; results in shard order.

        A `fn` with a `report` parameter also gets `report(n_docs)`, called per batch: the bar moves
        while shards run. Shards whose result says `skipped` (done by an earlier run) leave the total."""
        est = _Total(shards, {s.index: s.rows if s.rows is not None else self._rows_seen.get(s.index)
                              for s in shards})
        prog = self.progress_cls(stage, est.total(), unit="doc", verb=VERBS.get(stage, "done"), enabled=self.progress)
        pass_report = _takes_report(fn)
        results: list[dict[str, Any]] = []
        resumed_rows = 0
        ok = False

        def done(shard: InputShard, res: dict[str, Any]) -> None:
            nonlocal resumed_rows
            results.append(res)
            rows = int(res.get("rows_in", 0))
            self._rows_seen[shard.index] = rows
            if res.get("skipped"):
                resumed_rows += rows
                prog.skip(shard.index, rows)
            else:
                prog.finish(shard.index, rows)
            if est.learn(shard.index, rows):  # a better estimate of a total that was unknown
                total = est.total()
                prog.set_total(None if total is None else max(total - resumed_rows, prog.n))

        try:
            if min(self.workers, len(shards)) <= 1:
                for s in shards:
                    done(s, call_in_process(prog, s.index, fn, (job, s, out_root, _slice(table, s)), pass_report))
            else:
                pool = self._get_pool()
                token = self._channel.attach(prog) if self._channel is not None and prog.live else None
                try:
                    futures = {pool.submit(call_reporting, token, s.index, fn, (job, s, out_root, _slice(table, s)),
                                           pass_report): s for s in shards}
                    pending: set[Future[Any]] = set(futures)
                    while pending:
                        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for f in finished:
                            done(futures[f], f.result())  # re-raises a worker's error with its message
                finally:
                    if token is not None and self._channel is not None:
                        self._channel.detach(token)
            ok = True
        except BaseException as exc:
            if not isinstance(exc, Exception):  # interrupted: stop the workers now
                self.terminate()
            raise
        finally:
            prog.close(ok)
        return in_shard_order(self.name, stage, shards, results)

    def parallel_map(self, fn: ItemFn, items: list[Any]) -> list[Any]:
        """Map a picklable function over items in the worker pool (in order), with a bar over the
        items done (label and unit from `progress.item_progress`; inner `report_steps` beside it)."""
        label, unit, step = item_label(fn)
        return self._map_calls(label, unit, fn, [(x,) for x in items], in_process=min(self.workers, len(items)) <= 1,
                               step=step)

    def shuffle(self, name: str, emit: EmitFn, items: list[Any], reduce: ReduceFn,
                spill_dir: str) -> dict[int, dict[str, Any]]:
        """`Engine.shuffle` through spill files: emit tasks write each (key, batch) to
        `spill_dir/<name>/k-<key>/i-<item>-<seq>.arrow`, then one reduce task per non-empty key
        reads its own folder. The folder is cleared first (what an interrupted run left) and
        removed after success. Tasks run in the pool unless workers == 1 (then in this process),
        so with workers > 1 the driver never holds a key's rows."""
        folder = storage.join(spill_dir, shuffle_name(name))
        _remove_spill(folder)
        if not items:
            return {}
        alone = self.workers <= 1
        counts = self._map_calls(f"shuffle {name}: emit", "item", _emit_to_spill,
                                 [(name, emit, i, x, folder) for i, x in enumerate(items)], in_process=alone,
                                 step=True)
        keys = sorted({k for c in counts for k in c})
        texts = self._map_calls(f"shuffle {name}: reduce", "key", _reduce_spilled,
                                [(name, reduce, k, _key_folder(folder, k)) for k in keys], in_process=alone, step=True)
        _remove_spill(folder)
        return {k: json.loads(t) for k, t in zip(keys, texts)}

    def _map_calls(self, label: str, unit: str, fn: Callable[..., Any], calls: list[tuple[Any, ...]],
                   in_process: bool, step: bool = False) -> list[Any]:
        """`fn(*args)` for every args tuple, in the pool (or in this process); results in order; a bar
        over the calls done."""
        prog = self.progress_cls(label, len(calls), unit=unit, enabled=self.progress and bool(calls),
                                 leave=not step, line=not step)
        ok = False
        try:
            if in_process or not calls:
                out = []
                for i, args in enumerate(calls):
                    out.append(call_in_process(prog, i, fn, args, False))
                    prog.finish(i, 1)
                ok = True
                return out
            pool = self._get_pool()
            token = self._channel.attach(prog) if self._channel is not None and prog.live else None
            try:
                futures = [pool.submit(call_reporting, token, i, fn, args, False) for i, args in enumerate(calls)]
                index = {f: i for i, f in enumerate(futures)}
                pending: set[Future[Any]] = set(futures)
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in finished:
                        f.result()  # re-raises a worker's error
                        prog.finish(index[f], 1)
            finally:
                if token is not None and self._channel is not None:
                    self._channel.detach(token)
            results = check_item_count(self.name, [f.result() for f in futures], calls)
            ok = True
            return results
        except BaseException as exc:
            if not isinstance(exc, Exception):
                self.terminate()
            raise
        finally:
            prog.close(ok)

    def _get_pool(self) -> ProcessPoolExecutor:
        """One pool for the whole job, so workers (and their models) live across stages.

        When bars are drawn, a progress `Channel` is made first and its queue handed to every
        worker by the initializer; it is closed after the pool (`close`, `terminate`)."""
        if self._pool is None:
            ctx = mp.get_context("spawn")
            if self._channel is None and self.progress_cls.draws_live(self.progress):
                self._channel = Channel(ctx)
            q = self._channel.queue if self._channel is not None else None
            self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=init_worker,
                                             initargs=(self.torch_threads, os.getpid(), q))
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None
        self._close_channel()

    def _close_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()

    def terminate(self) -> None:
        """Kill the workers (mid-shard: what they leave are temporaries) and drop the pool."""
        pool, self._pool = self._pool, None
        if pool is None:
            self._close_channel()
            return
        procs = list((getattr(pool, "_processes", None) or {}).values())
        for proc in procs:
            proc.kill()
        pool.shutdown(wait=True, cancel_futures=True)
        for proc in procs:
            proc.join(timeout=5)
        self._close_channel()


# -- shuffle tasks (module level: the pool pickles them by reference) -------------------------------


def _key_folder(folder: str, key: int) -> str:
    return storage.join(folder, f"k-{key:06d}")


def _emit_to_spill(name: str, emit: EmitFn, index: int, item: Any, folder: str) -> dict[int, int]:
    """Emit task: each non-empty batch of `emit(item)` to its key's folder; rows per key."""
    rows: dict[int, int] = {}
    for key, seq, batch in emitted(name, emit, index, item):
        _write_spill(storage.join(_key_folder(folder, key), f"i-{index:06d}-{seq:04d}.arrow"), batch)
        rows[key] = rows.get(key, 0) + batch.num_rows
    return rows


def _reduce_spilled(name: str, reduce: ReduceFn, key: int, key_folder: str) -> str:
    """Reduce task: the key's spill files in (item, seq) order, reduced (JSON text)."""
    order = []
    for path in _list_spill(key_folder):
        m = _SPILL_NAME.fullmatch(storage.basename(path))
        if m is not None:  # temporaries of a killed writer never match
            order.append((int(m.group(1)), int(m.group(2)), path))
    if not order:
        raise JobError(f"shuffle {name}: key {key}: no spill files in {key_folder}")
    return reduced(name, reduce, key, (_read_spill(path) for _, _, path in sorted(order)))


_SPILL_NAME = re.compile(r"i-(\d+)-(\d+)\.arrow")


# the spill files' I/O, in one place: local paths and object-store URIs alike, through thresher.io.storage
def _write_spill(path: str, batch: pa.RecordBatch) -> None:
    # locally a temporary renamed (no fsync: scratch, removed after the shuffle); on a store one PUT
    write_bytes_atomic(to_ipc(batch), path, fsync=False)


def _read_spill(path: str) -> pa.Table:
    return from_ipc(storage.read_bytes(path))


def _list_spill(folder: str) -> list[str]:
    return [storage.join(folder, n) for n in storage.list_names(folder)]


def _remove_spill(folder: str) -> None:
    storage.remove_tree(folder)


def _slice(table: pa.Table | None, shard: InputShard) -> pa.Table | None:
    if table is None or shard.kind != "memory":
        return None
    return table.slice(shard.start, shard.rows)


def _takes_report(fn: Callable[..., Any]) -> bool:
    """Whether a stage function has a `report` parameter (stages of other code may not)."""
    try:
        return "report" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


class _Total:
    """The documents a stage will see: exact where shards know their rows (Parquet, text files,
    tables, or an earlier stage of this job), else estimated from the bytes per document of the
    shards finished so far (None until one is)."""

    def __init__(self, shards: list[InputShard], rows: dict[int, int | None]) -> None:
        self.known = sum(r for r in rows.values() if r is not None)
        self.unknown = {s.index: _size(s) for s in shards if rows[s.index] is None}
        self.seen_rows = 0
        self.seen_bytes = 0

    def total(self) -> int | None:
        if not self.unknown:
            return self.known + self.seen_rows
        if self.seen_bytes <= 0:
            return None
        rest = sum(self.unknown.values())
        return self.known + self.seen_rows + round(rest * self.seen_rows / self.seen_bytes)

    def learn(self, index: int, rows: int) -> bool:
        """A shard of unknown size finished with `rows` rows: True if the estimate changed."""
        if index not in self.unknown:
            return False
        self.seen_bytes += self.unknown.pop(index)
        self.seen_rows += rows
        return True


def _size(shard: InputShard) -> int:
    """The bytes of a shard's files (local paths or object-store URIs); 0 when unknown."""
    try:
        return sum(storage.size(p) for p in shard.paths)
    except (OSError, JobError):
        return 0
