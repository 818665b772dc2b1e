"""The local engine: a process pool over input shards, with a progress bar.

Workers die with the main process (`worker.die_with_parent`), and Ctrl-C or SIGTERM of the
main process (a BaseException that is not an Exception) kills them at once instead of
waiting for the shards they are on: their temporaries are removed by the next run."""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from typing import Any

import pyarrow as pa
from tqdm.auto import tqdm

from thresher.config import JobSpec
from thresher.io.readers import InputShard
from thresher.pipelines.engine import ItemFn, StageFn, check_item_count, in_shard_order
from thresher.pipelines.worker import init_worker


class LocalEngine:
    """Run a stage over shards in `workers` processes (in this process when workers == 1)."""

    name = "local"

    def __init__(self, job: JobSpec, progress: bool = True) -> None:
        spec = job.engine.local
        self.workers = spec.workers or os.cpu_count() or 1
        self.torch_threads = spec.torch_threads or (1 if self.workers > 1 else None)
        self.progress = progress
        self._pool: ProcessPoolExecutor | None = None

    def map_shards(self, stage: str, fn: StageFn, job: JobSpec, shards: list[InputShard], out_root: str,
                   table: pa.Table | None = None) -> list[dict[str, Any]]:
        """Call `fn(job, shard, out_root, slice)` for every shard; results in shard order."""
        total = sum(s.rows or 0 for s in shards) or None
        bar = tqdm(total=total, desc=f"{stage:>6}", unit="doc", disable=not self.progress, dynamic_ncols=True)
        results: list[dict[str, Any]] = []

        def done(res: dict[str, Any]) -> None:
            results.append(res)
            bar.update(res.get("rows_in", 0))
            bar.set_postfix_str(f"shards {len(results)}/{len(shards)}")

        try:
            if min(self.workers, len(shards)) <= 1:
                for s in shards:
                    done(fn(job, s, out_root, _slice(table, s)))
            else:
                pool = self._get_pool()
                futures = [pool.submit(fn, job, s, out_root, _slice(table, s)) for s in shards]
                pending = set(futures)
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for f in finished:
                        done(f.result())  # re-raises a worker's error with its message
        except BaseException as exc:
            if not isinstance(exc, Exception):  # interrupted: stop the workers now
                self.terminate()
            raise
        finally:
            bar.close()
        return in_shard_order(self.name, stage, shards, results)

    def parallel_map(self, fn: ItemFn, items: list[Any]) -> list[Any]:
        """Map a picklable function over items in the worker pool (in order)."""
        if min(self.workers, len(items)) <= 1:
            return [fn(x) for x in items]
        try:
            return check_item_count(self.name, list(self._get_pool().map(fn, items)), items)
        except BaseException as exc:
            if not isinstance(exc, Exception):
                self.terminate()
            raise

    def _get_pool(self) -> ProcessPoolExecutor:
        """One pool for the whole job, so workers (and their models) live across stages."""
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"),
                                             initializer=init_worker, initargs=(self.torch_threads, os.getpid()))
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def terminate(self) -> None:
        """Kill the workers (mid-shard: what they leave are temporaries) and drop the pool."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        procs = list((getattr(pool, "_processes", None) or {}).values())
        for proc in procs:
            proc.kill()
        pool.shutdown(wait=True, cancel_futures=True)
        for proc in procs:
            proc.join(timeout=5)


def _slice(table: pa.Table | None, shard: InputShard) -> pa.Table | None:
    if table is None or shard.kind != "memory":
        return None
    return table.slice(shard.start, shard.rows)
