"""The Beam engine: one pipeline per map stage, a DoFn per shard task.

    Create(shard tasks) -> Reshuffle -> ParDo(_StageDoFn) -> WriteToText(results)
    shuffle: Create(items) -> Reshuffle -> FlatMap(emit) -> GroupByKey -> Map(reduce) -> WriteToText

- `_StageDoFn.setup()` builds the job's scorers once per SDK worker process through the
  per-process cache in `thresher.pipelines.worker` (never in `__init__`, which would
  pickle models into the graph); `process()` runs the stage function on one shard: it
  reads the shard's files itself and writes the shard's outputs atomically with a
  completion marker, exactly like the local engine, so resume works the same way.
- Beam has no `collect`: each result dict goes out as one JSON line through
  `beam.io.WriteToText` into a temporary folder (a local one on DirectRunner, under the
  `temp_location` option on other runners), which the driver reads back with Beam's
  FileSystems (results are small: counts and file infos, never rows).
- In-memory inputs: a shard's slice travels inside its task element as Arrow IPC bytes.
- Paths: input and output may be object-store URIs (`s3://`, `gs://`): workers read and write
  them through `thresher.io.storage` themselves (no shared local folder), with the driver's
  storage options shipped in the DoFns (`tasks.storage_registry`); credentials and endpoint
  otherwise come from the workers' standard environment.
- `engine.beam.options` go to `PipelineOptions` unchanged (unknown keys are an error).
  DirectRunner defaults here: `direct_running_mode=multi_processing`,
  `direct_num_workers=<cores>`. Other runners (DataflowRunner, FlinkRunner, SparkRunner,
  PrismRunner, PortableRunner) get the options as given; Prism, Flink and Spark download
  a binary or job-server jar when they start, which fails on an offline machine.
- Parquet IO: not used. The stage functions read and write Parquet themselves so that
  every shard keeps one atomic output file and marker (Beam's `ReadFromParquet` splits
  files into bundles and `WriteToParquet` names shards itself, which would lose both),
  and the select stage reads only the narrow score table on the driver.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import pickle
import re
import tempfile
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from thresher.config import JobSpec
from thresher.io.readers import InputShard
from thresher.pipelines.engine import (EmitFn, ItemFn, ReduceFn, StageFn, check_item_count, in_shard_order,
                                       short_error, shuffle_name)
from thresher.pipelines.tasks import (adopt_storage_registry, call_item, decode_task, emit_pairs, encode_tasks,
                                      reduce_group, storage_registry, task_root)
from thresher.specs import JobError

try:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
except ImportError as _exc:  # runner.make_engine turns this into a JobError
    raise ModuleNotFoundError(f"engine beam needs apache-beam: pip install 'thresher[beam]' ({_exc})") from None

DIRECT = {"DirectRunner", "direct", "SwitchingDirectRunner", "BundleBasedDirectRunner", "FnApiRunner"}


class _StageDoFn(beam.DoFn):  # type: ignore[misc]
    """Run one map stage on shard tasks; scorers are set up once per worker process."""

    def __init__(self, fn: StageFn, job_json: str, out_root: str, torch_threads: int | None,
                 storage_options: str | None = None) -> None:
        self.fn = fn
        self.job_json = job_json
        self.out_root = out_root
        self.torch_threads = torch_threads
        self.storage_options = storage_options  # the driver's object-store settings (tasks.storage_registry)
        self.job: JobSpec | None = None

    def setup(self) -> None:
        from thresher.pipelines.worker import init_worker, scorers_for

        init_worker(self.torch_threads)
        adopt_storage_registry(self.storage_options)
        self.job = JobSpec.model_validate(json.loads(self.job_json))
        scorers_for(self.job.scorers)  # build (and cache) the scorers once per process

    def process(self, element: tuple[int, str, bytes | None]) -> Iterator[str]:
        _, shard_json, data = element
        shard, table = decode_task(shard_json, data)
        assert self.job is not None
        res = self.fn(self.job, shard, self.out_root, table)
        yield json.dumps({**res, "_task": {"pid": os.getpid()}}, default=str)


class _CallDoFn(beam.DoFn):  # type: ignore[misc]
    """parallel_map: call fn on (index, item) and emit base64(pickle((index, result)))."""

    def __init__(self, fn: ItemFn, storage_options: str | None = None) -> None:
        self.fn = fn
        self.storage_options = storage_options

    def process(self, element: tuple[int, Any]) -> Iterator[str]:
        i, item = element
        result = call_item(item, self.fn, self.storage_options)
        yield base64.b64encode(pickle.dumps((i, result), protocol=5)).decode()


class BeamEngine:
    """Run the map stages as Beam pipelines (`engine.beam.runner`, `engine.beam.options`)."""

    name = "beam"

    def __init__(self, job: JobSpec, progress: bool = True) -> None:
        spec = job.engine.beam
        self.runner = spec.runner
        self.progress = progress
        self.options = dict(spec.options)
        self.direct = self.runner in DIRECT or self.runner.endswith(".DirectRunner")
        if self.direct:
            self.options.setdefault("direct_running_mode", "multi_processing")
            self.options.setdefault("direct_num_workers", os.cpu_count() or 1)
            self.options.setdefault("default_sdk_harness_log_level", "WARNING")
        known = set(PipelineOptions().get_all_options())
        unknown = sorted(k for k in self.options if k not in known)
        if unknown:
            raise JobError(f"engine.beam.options: unknown Beam pipeline option(s) {unknown} "
                           f"(use the Python names, e.g. direct_num_workers, flink_master, project)")
        workers = int(self.options.get("direct_num_workers") or 1) if self.direct else 1
        mode = self.options.get("direct_running_mode")
        self.torch_threads = 1 if (self.direct and workers > 1 and mode != "in_memory") else None
        self._runner_obj = self._make_runner()
        # result lines must be readable by the driver: a remote runner writes them under its
        # temp_location (gs://, s3://: never a local folder the driver cannot see), DirectRunner
        # (workers on this machine) into a local temp folder
        remote_tmp = None if self.direct else self.options.get("temp_location")
        if not self.direct and not remote_tmp:
            raise JobError(f"engine.beam.runner {self.runner!r}: set engine.beam.options.temp_location to a "
                           f"location every worker and this driver can reach (e.g. s3://BUCKET/tmp or "
                           f"gs://BUCKET/tmp): the workers' small result files go there")
        self._tmp = tempfile.TemporaryDirectory(prefix="thresher-beam-")
        self._results_root = (remote_tmp.rstrip("/") + f"/thresher-results-{os.getpid()}-{id(self)}"
                              if remote_tmp else self._tmp.name)
        self._n = 0

    def _make_runner(self) -> Any:
        from apache_beam.runners.runner import create_runner

        try:
            return create_runner(self.runner)
        except (ValueError, ImportError, AttributeError) as exc:
            raise JobError(f"engine.beam.runner {self.runner!r} is not available: {exc}".rstrip(".")
                           + " (DirectRunner always works; others may need extras, e.g. apache-beam[gcp])") from None

    def _pipeline(self) -> Any:
        opts = PipelineOptions(flags=[], **self.options)
        return beam.Pipeline(runner=self._runner_obj, options=opts)

    def _run(self, label: str, elements: list[Any], *steps: tuple[str, Any]) -> list[str]:
        """Run Create(elements) -> Reshuffle -> the (name, transform) steps -> WriteToText (the last
        step yields text lines); return the lines."""
        self._n += 1
        prefix = f"{self._results_root}/{self._n:03d}-{label}/out"
        p = self._pipeline()
        pcoll = p | "Tasks" >> beam.Create(elements, reshuffle=False) | "Spread" >> beam.Reshuffle()
        for step, transform in steps:
            pcoll = pcoll | step >> transform
        pcoll | "Results" >> beam.io.WriteToText(prefix, file_name_suffix=".jsonl")
        try:
            result = p.run()
            result.wait_until_finish()
        except JobError:
            raise
        except Exception as exc:
            why = re.sub(r" \[while running '[^']*'\]$", "", short_error(exc))  # Beam's step name: noise
            raise JobError(f"engine beam ({self.runner}): the {label} pipeline failed: {why}") from None
        from apache_beam.io.filesystems import FileSystems

        lines: list[str] = []
        for match in FileSystems.match([prefix + "*"]):
            for meta in sorted(match.metadata_list, key=lambda m: m.path):
                with FileSystems.open(meta.path) as fh:
                    lines.extend(line for line in fh.read().decode("utf-8").splitlines() if line)
        return lines

    def map_shards(self, stage: str, fn: StageFn, job: JobSpec, shards: list[InputShard], out_root: str,
                   table: pa.Table | None = None) -> list[dict[str, Any]]:
        """Run `fn` on every shard as one Beam pipeline; results in shard order."""
        if not shards:
            return []
        tasks = encode_tasks(shards, table)
        dofn = _StageDoFn(fn, job.model_dump_json(), task_root(out_root), self.torch_threads, storage_registry())
        lines = self._run(stage, tasks, (stage, beam.ParDo(dofn)))
        return in_shard_order(self.name, stage, shards, [json.loads(line) for line in lines])

    def parallel_map(self, fn: ItemFn, items: list[Any]) -> list[Any]:
        """Map a picklable function over items, one element per item (in order)."""
        if not items:
            return []
        lines = self._run("parallel_map", list(enumerate(items)), ("parallel_map", beam.ParDo(_CallDoFn(fn, storage_registry()))))
        pairs = dict(pickle.loads(base64.b64decode(line)) for line in lines)
        check_item_count(self.name, list(pairs), items)
        return [pairs[i] for i in range(len(items))]

    def shuffle(self, name: str, emit: EmitFn, items: list[Any], reduce: ReduceFn,
                spill_dir: str) -> dict[int, dict[str, Any]]:
        """`Engine.shuffle` through Beam's GroupByKey: FlatMap(emit -> (key, (item, seq, IPC bytes)))
        -> GroupByKey -> Map(reduce) -> result lines. `spill_dir` is not used (the runner keeps its
        shuffle data)."""
        shuffle_name(name)
        if not items:
            return {}
        options = storage_registry()
        lines = self._run(f"shuffle-{name}", list(enumerate(items)),
                          ("Emit", beam.FlatMap(functools.partial(emit_pairs, name=name, emit=emit,
                                                                 torch_threads=self.torch_threads,
                                                                 storage_options=options))),
                          ("ByKey", beam.GroupByKey()),
                          ("Reduce", beam.Map(functools.partial(reduce_group, name=name, reduce=reduce,
                                                                torch_threads=self.torch_threads,
                                                                storage_options=options))),
                          ("Lines", beam.Map(json.dumps)))
        got = [json.loads(line) for line in lines]
        if len({k for k, _ in got}) != len(got):
            raise JobError(f"engine beam: shuffle {name} returned a key twice")
        return {int(k): json.loads(text) for k, text in sorted(got)}

    def close(self) -> None:
        tmp = getattr(self, "_tmp", None)
        if tmp is not None:
            tmp.cleanup()
        root = getattr(self, "_results_root", None)
        if root is not None and tmp is not None and root != tmp.name:  # under a remote temp_location
            from apache_beam.io.filesystems import FileSystems

            try:
                FileSystems.delete([root + "/"])
            except Exception:  # best effort: a leftover result file is harmless
                pass
