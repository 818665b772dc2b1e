"""The Spark engine: the two map stages as `mapInArrow` over a DataFrame of shard tasks.

(`parallel_map` is one RDD task per item; `shuffle` is flatMap -> groupByKey -> map on RDDs.)

Design (shard-level, the same atomic outputs and resume as the local engine):

- The driver builds a DataFrame with one row per input shard (`shard` index, the shard as
  JSON, and for in-memory inputs the shard's slice as Arrow IPC bytes) in one partition
  per shard, so a Spark task is exactly one shard.
- `mapInArrow` runs `_run_tasks` in a Python worker: it reads its shard itself (files are
  opened on the executor; no wide data goes through the driver for file inputs), calls
  the stage function (`stages.score_shard` / `stages.write_shard`: they skip a shard whose
  completion marker exists and write atomically) and yields one small result row (the
  result dict as JSON). The driver collects only those rows.
- Scorers are built once per Python worker by the cache in `thresher.pipelines.worker`
  (an importable module; `spark.python.worker.reuse=true` keeps workers alive between
  tasks, so a model loads once per worker, not once per task).
- A failed task is retried by Spark (`spark.task.maxFailures`): the retry either finds
  the marker (skip) or rewrites the shard from scratch, so no row is duplicated or lost.
  Spark's local mode ignores that key (it reads the retries from `local[N,F]`), so a
  `local`/`local[N]`/`local[*]` master with `spark.task.maxFailures: F` starts as
  `local[N,F]` (`local_master`).
- GPUs: with `spark.executor.resource.gpu.amount` / `spark.task.resource.gpu.amount`
  (see jobs/spark/README.md) each task reads its GPU address from
  `TaskContext.get().resources()["gpu"]` and the scorers of that task use `cuda:<addr>`.

In-memory inputs (`thresher.run(job, data=table)`): each shard's slice is shipped inside
its task row as Arrow IPC bytes (the data is already in the driver's memory; keep such
tables well below `spark.driver.maxResultSize`/2 GiB per shard, or write Parquet first).

Engine-specific Spark conf keys (read by thresher, ignored by Spark):
- `spark.thresher.shipPackage`: auto (default) | true | false. Ship the `thresher`
  package to executors as a zip (`addPyFile`). auto: in local mode only when the workers'
  Python cannot import this same thresher; on clusters always (the executors' Python
  may not have it; shipping the driver's copy also keeps versions equal).
- `spark.thresher.executorWaitSeconds` (default 90): on a cluster master, how long to
  wait for a first executor before failing with a clear error instead of hanging.
- `spark.thresher.executorEnv` (default none): comma-separated environment variable names
  (`*` globs allowed, e.g. `AWS_*`) copied from the driver's environment into
  `spark.executorEnv.NAME` when thresher starts the session, so executors on a cluster reach
  an object store (`s3://` output and input: endpoint, region, credentials) the way the
  driver does. Only the names live in the job; the values never enter the job or the manifest
  (Spark's UI redacts keys matching `spark.redaction.regex`, e.g. `*SECRET*`, `*TOKEN*`).
  Under spark-submit, `spark_submit.main` applies it before the SparkContext starts.

Paths: the output root (and the input) may be a URI (`s3://...`): executors write their
shard outputs straight to the store through `thresher.io.storage` and the driver reads only
small results, so no folder has to be shared between the nodes.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from thresher.config import JobSpec, SparkEngineSpec
from thresher.io.readers import InputShard
from thresher.pipelines.engine import (EmitFn, ItemFn, ReduceFn, StageFn, check_item_count, in_shard_order,
                                       short_error, shuffle_name)
from thresher.pipelines.tasks import (adopt_storage_registry, call_item, decode_task, emit_pairs, encode_tasks,
                                      reduce_group, storage_registry, task_root)
from thresher.pipelines.worker import init_worker, set_task_device
from thresher.specs import JobError

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the thresher package folder (shipped to executors)

RESULT_SCHEMA = "shard int, result string"
# test hook: "STAGE:SHARD:MODE" (MODE = fail_before | fail_after | hang) from the job's local
# property `thresher.fault` (sc.setLocalProperty) or the env var THRESHER_SPARK_FAULT
FAULT_ENV = "THRESHER_SPARK_FAULT"
FAULT_PROPERTY = "thresher.fault"
SHIP_KEY = "spark.thresher.shipPackage"
WAIT_KEY = "spark.thresher.executorWaitSeconds"
ENV_KEY = "spark.thresher.executorEnv"


# -- executor side ----------------------------------------------------------------------

_JOBS: dict[str, JobSpec] = {}
# driver side: the package zip shipped to each SparkContext (by application id). It must
# outlive the engine (executors that start later fetch it from the driver), so it lives
# in a temp folder removed when the process exits.
_SHIPPED: dict[str, tempfile.TemporaryDirectory[str]] = {}


def _job_from_json(text: str) -> JobSpec:
    """The JobSpec of a task, parsed once per Python worker."""
    if text not in _JOBS:
        _JOBS[text] = JobSpec.model_validate(json.loads(text))
    return _JOBS[text]


def _use_task_gpu(ctx: Any) -> str | None:
    """Point this task's scorers at the GPU Spark assigned to it (`device: auto` scorers use
    it; the per-worker cache keys on it); returns the device or None."""
    resources = ctx.resources() if ctx is not None else {}
    gpu = resources.get("gpu")
    if gpu is None or not gpu.addresses:
        return None
    device = f"cuda:{gpu.addresses[0]}"
    set_task_device(device)
    return device


def _fault(spec: str | None, stage: str, shard: int, attempt: int, when: str) -> None:
    """Test hook, comma-separated `STAGE:SHARD:MODE` items. MODE: fail_before / fail_after
    (fail attempt 0 before / after the stage function ran), fail_always, hang."""
    for item in (spec or "").split(","):
        if not item.strip():
            continue
        f_stage, f_shard, mode = item.strip().split(":")
        if f_stage != stage or int(f_shard) != shard:
            continue
        if mode == "hang" and when == "before":
            time.sleep(3600)
        if (mode == f"fail_{when}" and attempt == 0) or (mode == "fail_always" and when == "before"):
            raise RuntimeError(f"injected fault: {stage} shard {shard} attempt {attempt} ({mode})")


def _run_tasks(batches: Iterator[pa.RecordBatch], fn: StageFn, stage: str, job_json: str, out_root: str,
               torch_threads: int, storage_options: str | None = None) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: run the stage on each shard task of the partition, yield result rows."""
    from pyspark import TaskContext

    init_worker(torch_threads)
    adopt_storage_registry(storage_options)
    ctx = TaskContext.get()
    attempt = ctx.attemptNumber() if ctx is not None else 0
    device = _use_task_gpu(ctx)
    gpus = list(ctx.resources()["gpu"].addresses) if ctx is not None and "gpu" in ctx.resources() else []
    job = _job_from_json(job_json)
    fault = (ctx.getLocalProperty(FAULT_PROPERTY) if ctx is not None else None) or os.environ.get(FAULT_ENV)
    for batch in batches:
        cols = batch.to_pydict()
        out_idx: list[int] = []
        out_res: list[str] = []
        for idx, shard_json, data in zip(cols["shard"], cols["task"], cols["data"]):
            shard, table = decode_task(shard_json, data)
            _fault(fault, stage, shard.index, attempt, "before")
            res = fn(job, shard, out_root, table)
            _fault(fault, stage, shard.index, attempt, "after")
            # where it ran: the driver reports it (worker reuse, retries, GPU assignment)
            res = {**res, "_task": {"pid": os.getpid(), "attempt": attempt, "gpus": gpus, "device": device}}
            out_idx.append(idx)
            out_res.append(json.dumps(res, default=str))
        yield pa.RecordBatch.from_arrays([pa.array(out_idx, pa.int32()), pa.array(out_res, pa.string())],
                                         names=["shard", "result"])


# -- driver side ----------------------------------------------------------------------------


def is_local_master(master: str) -> bool:
    return master == "local" or master.startswith("local[")


def local_master(master: str, conf: dict[str, str]) -> str:
    """The master to start: `local`, `local[N]` or `local[*]` plus `spark.task.maxFailures: F`
    becomes `local[N,F]` (local mode reads its task retries only from the master URL);
    anything else is returned as it is."""
    m = re.fullmatch(r"local(?:\[(\d+|\*)\])?", master.strip())
    failures = conf.get("spark.task.maxFailures")
    if m is None or failures is None:
        return master
    try:
        n = int(failures)
    except ValueError:
        raise JobError(f"engine.spark.conf spark.task.maxFailures={failures!r}: expected a whole number") from None
    if n < 1:
        raise JobError(f"engine.spark.conf spark.task.maxFailures={failures!r}: expected at least 1")
    return f"local[{m.group(1) or 1},{n}]"


def check_master_reachable(master: str, timeout: float = 5.0) -> None:
    """Fail fast (seconds, not minutes of registration retries) when a master cannot be reached."""
    if master.startswith("spark://"):
        hostports = master[len("spark://"):].split(",")
    elif master.startswith("k8s://"):
        m = re.match(r"k8s://(?:https?://)?([^/]+)", master)
        hostports = [m.group(1)] if m else []
    else:
        return  # local[...], yarn (config from HADOOP_CONF_DIR): nothing to probe here
    errors = []
    for hp in hostports:
        host, _, port = hp.rpartition(":")
        if not host or not port.isdigit():
            raise JobError(f"engine.spark.master {master!r}: expected spark://HOST:PORT[,HOST:PORT]")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
            return
        except OSError as exc:
            errors.append(f"{hp}: {exc.strerror or exc}")
    raise JobError(f"engine.spark.master {master!r} is not reachable ({'; '.join(errors)}); is the master "
                   f"running? (start one with `spark-class org.apache.spark.deploy.master.Master`, "
                   f"see jobs/spark/README.md)")


@functools.lru_cache(maxsize=8)
def _thresher_importable_by(python: str) -> bool:
    """Whether `python` (started outside this folder) imports this very thresher package."""
    here = os.path.realpath(PACKAGE_DIR)
    try:
        out = subprocess.run([python, "-c", "import os, thresher; print(os.path.realpath(os.path.dirname("
                              "thresher.__file__)))"], capture_output=True, text=True, timeout=60, cwd="/")
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and out.stdout.strip() == here


def package_zip(dest_dir: str) -> str:
    """Zip the thresher package (Python files only) for `addPyFile`."""
    root = PACKAGE_DIR
    path = os.path.join(dest_dir, "thresher.zip")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(root.rglob("*.py")):
            zf.write(f, str(Path("thresher") / f.relative_to(root)))
    return path


def default_conf(spec: SparkEngineSpec, progress: bool = True) -> dict[str, str]:
    """The Spark conf thresher starts a session with (the job's `engine.spark.conf` wins)."""
    conf = {
        "spark.app.name": "thresher",
        "spark.python.worker.reuse": "true",
        "spark.driver.memory": "2g",
        "spark.ui.showConsoleProgress": "true" if progress else "false",
    }
    conf.update({k: str(v) for k, v in spec.conf.items()})
    conf.update({k: v for k, v in executor_env(conf.get(ENV_KEY, ""), os.environ).items() if k not in conf})
    return conf


def executor_env(names: str, env: Any) -> dict[str, str]:
    """`spark.executorEnv.NAME: value` for every variable of `env` that one of the comma-separated
    `names` (`*` globs allowed: `AWS_*`) matches (`spark.thresher.executorEnv`)."""
    patterns = [n.strip() for n in names.split(",") if n.strip()]
    return {f"spark.executorEnv.{k}": env[k] for k in sorted(env)
            if any(fnmatch.fnmatchcase(k, p) for p in patterns)}


# PySpark keeps a session's conf as JVM system properties, which the next session in this process
# would inherit (e.g. a spark.executorEnv.* of an earlier job): the values before thresher's
# session started, restored by `stop_session`
_CONF_BEFORE: dict[str, str | None] = {}


def _system_property(key: str) -> str | None:
    from pyspark import SparkContext

    jvm = SparkContext._jvm
    return None if jvm is None else jvm.System.getProperty(key)


def stop_session(spark: Any) -> None:
    """Stop a session `get_session` started and restore the JVM system properties its conf set,
    so a later session in this process starts from the conf it is given."""
    from pyspark import SparkContext

    spark.stop()
    jvm = SparkContext._jvm
    if jvm is not None:
        for key, old in _CONF_BEFORE.items():
            if old is None:
                jvm.System.clearProperty(key)
            else:
                jvm.System.setProperty(key, old)
    _CONF_BEFORE.clear()


def get_session(spec: SparkEngineSpec, progress: bool = True) -> tuple[Any, bool]:
    """The SparkSession for `spec` and whether this call created it.

    An active session is reused when its master equals `spec.master` (spark-submit, a
    notebook, a test fixture); a different one is an error. Otherwise Java is checked,
    PYSPARK_PYTHON defaults to this interpreter, the master is probed, and a session
    starts with `default_conf` (spark.driver.memory only applies here, before the JVM
    starts; under spark-submit pass --driver-memory instead)."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise JobError("engine spark needs pyspark: pip install 'thresher[spark]'") from None
    conf = default_conf(spec, progress)
    wanted = local_master(spec.master, conf)
    active = SparkSession.getActiveSession()
    if active is not None:
        master = active.sparkContext.master
        if master not in (spec.master, wanted):
            raise JobError(f"a SparkSession with master {master!r} is already running in this process, "
                           f"but the job asks for {spec.master!r}; set engine.spark.master to {master!r} "
                           f"or stop the session first")
        if active.sparkContext.getConf().get("spark.python.worker.reuse", "true") != "true":
            print("thresher: spark.python.worker.reuse is false: scorers reload in every task", file=sys.stderr)
        return active, False
    from thresher.pipelines.java import ensure_java

    ensure_java()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    check_master_reachable(spec.master)
    builder = SparkSession.builder.master(wanted)
    for k, v in conf.items():
        builder = builder.config(k, v)
    _CONF_BEFORE.update({k: _system_property(k) for k in conf if k not in _CONF_BEFORE})
    try:
        spark = builder.getOrCreate()
    except Exception as exc:  # JVM did not start, bad conf, master refused the app
        raise JobError(f"engine spark: could not start a SparkSession on {wanted!r}: "
                       f"{type(exc).__name__}: {short_error(exc)}") from None
    return spark, True


class SparkEngine:
    """Run the map stages on Spark (`engine.spark.master`, `engine.spark.conf`)."""

    name = "spark"

    def __init__(self, job: JobSpec, progress: bool = True) -> None:
        self.spec = job.engine.spark
        self.progress = progress
        self.spark, self._owned = get_session(self.spec, progress)
        try:
            self.sc = self.spark.sparkContext
            conf = self.sc.getConf()
            self.torch_threads = int(conf.get("spark.task.cpus", "1"))
            self._ship_package(conf.get(SHIP_KEY, "auto"))
            if not is_local_master(self.sc.master):
                self._wait_for_executors(float(conf.get(WAIT_KEY, "90")))
        except BaseException:
            self.close()
            raise

    def _ship_package(self, mode: str) -> None:
        mode = mode.lower()
        if mode not in ("auto", "true", "false"):
            raise JobError(f"{SHIP_KEY}={mode!r}: expected auto, true or false")
        if mode == "auto":
            python = self.sc.pythonExec
            ship = not (is_local_master(self.sc.master) and _thresher_importable_by(python))
        else:
            ship = mode == "true"
        app = self.sc.applicationId
        if ship and app not in _SHIPPED:
            folder = tempfile.TemporaryDirectory(prefix="thresher-pyfiles-")
            self.sc.addPyFile(package_zip(folder.name))
            _SHIPPED[app] = folder
        self.shipped = ship

    def _wait_for_executors(self, seconds: float) -> None:
        """On a cluster, fail clearly when no executor registers (instead of waiting forever)."""
        deadline = time.monotonic() + seconds
        tracker = self.sc._jsc.sc().statusTracker()
        while time.monotonic() < deadline:
            if len(tracker.getExecutorInfos()) > 1:  # the driver is listed too
                return
            time.sleep(0.5)
        raise JobError(f"engine spark: no executor registered with {self.sc.master!r} within {seconds:.0f} s; "
                       f"does the cluster have a live worker with the cores/memory/GPUs the job asks for "
                       f"(spark.executor.cores, spark.executor.memory, spark.executor.resource.gpu.amount)? "
                       f"({WAIT_KEY} sets this wait)")

    def map_shards(self, stage: str, fn: StageFn, job: JobSpec, shards: list[InputShard], out_root: str,
                   table: pa.Table | None = None) -> list[dict[str, Any]]:
        """Run `fn` on every shard, one Spark task per shard; results in shard order."""
        if not shards:
            return []
        from pyspark.sql.types import BinaryType, IntegerType, StringType, StructField, StructType

        rows = encode_tasks(shards, table)
        schema = StructType([StructField("shard", IntegerType(), False), StructField("task", StringType(), False),
                             StructField("data", BinaryType(), True)])
        rdd = self.sc.parallelize(rows, len(rows))
        tasks = self.spark.createDataFrame(rdd, schema)
        body = functools.partial(_run_tasks, fn=fn, stage=stage, job_json=job.model_dump_json(),
                                 out_root=task_root(out_root), torch_threads=self.torch_threads,
                                 storage_options=storage_registry())
        self.sc.setJobDescription(f"thresher {stage}: {len(shards)} shards")
        try:
            got = tasks.mapInArrow(body, RESULT_SCHEMA).collect()
        except Exception as exc:
            raise JobError(f"engine spark: the {stage} stage failed: {short_error(exc)}") from None
        return in_shard_order(self.name, stage, shards, [json.loads(r["result"]) for r in got])

    def parallel_map(self, fn: ItemFn, items: list[Any]) -> list[Any]:
        """Map a picklable function over items, one Spark task per item (in order)."""
        if not items:
            return []
        try:
            call = functools.partial(call_item, fn=fn, storage_options=storage_registry())
            results = self.sc.parallelize(items, len(items)).map(call).collect()
        except Exception as exc:
            raise JobError(f"engine spark: parallel_map failed: {short_error(exc)}") from None
        return check_item_count(self.name, results, items)

    def shuffle(self, name: str, emit: EmitFn, items: list[Any], reduce: ReduceFn,
                spill_dir: str) -> dict[int, dict[str, Any]]:
        """`Engine.shuffle` through Spark's own shuffle: one task per item emits (key, (item, seq,
        IPC bytes)), `groupByKey` routes them (Spark spills what does not fit), one call per key
        rebuilds the key's table and reduces it; only (key, result JSON) is collected.
        `spill_dir` is not used (Spark keeps its shuffle files in spark.local.dir)."""
        shuffle_name(name)
        if not items:
            return {}
        options = storage_registry()
        emit_fn = functools.partial(emit_pairs, name=name, emit=emit, torch_threads=self.torch_threads,
                                    storage_options=options)
        reduce_fn = functools.partial(reduce_group, name=name, reduce=reduce, torch_threads=self.torch_threads,
                                      storage_options=options)
        partitions = max(self.sc.defaultParallelism, len(items))
        self.sc.setJobDescription(f"thresher shuffle {name}: {len(items)} items")
        try:
            got = (self.sc.parallelize(list(enumerate(items)), len(items)).flatMap(emit_fn)
                   .groupByKey(numPartitions=partitions).map(reduce_fn).collect())
        except Exception as exc:
            raise JobError(f"engine spark: shuffle {name} failed: {short_error(exc)}") from None
        return {int(k): json.loads(text) for k, text in sorted(got)}

    def close(self) -> None:
        """Stop the session if this engine started it (and remove the zip shipped to it)."""
        if self._owned and getattr(self, "spark", None) is not None:
            app = self.sc.applicationId
            stop_session(self.spark)
            self._owned = False
            folder = _SHIPPED.pop(app, None)
            if folder is not None:
                folder.cleanup()
