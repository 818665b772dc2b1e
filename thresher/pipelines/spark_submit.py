"""spark-submit entry point: run a thresher job on the session spark-submit configured.

spark-submit wants a Python *file* as the application, so give it this module's file; from a
pip install (a wheel, no repository checkout) that is

    ENTRY=$(python -c "import thresher.pipelines.spark_submit as m; print(m.__file__)")
    spark-submit --master spark://HOST:7077 --driver-memory 4g \\
        "$ENTRY" JOB.yaml [--set KEY=VALUE ...] [--output DIR] [--overwrite]

(in a checkout, `thresher/pipelines/spark_submit.py` is the same file). Or run
`python -m thresher.pipelines.spark_submit JOB.yaml ...`, which starts its own JVM with the
job's `engine.spark.master` and `engine.spark.conf`. jobs/spark/README.md says how the
executors get the same Python environment and how a GPU job is submitted.

Under spark-submit the master, memory and resource settings come from spark-submit (its
flags, `--conf`, `spark-defaults.conf`); the job's `engine.spark.conf` keys are applied
too where Spark still accepts them (runtime SQL settings; JVM and executor settings from
the job are ignored once the JVM runs, so pass those to spark-submit). One exception:
`spark.thresher.executorEnv` (e.g. `AWS_*`, from the job or `--conf`) copies the named
variables of the driver's environment to the executors (`spark.executorEnv.NAME`, set before
the SparkContext starts here; a `--conf spark.executorEnv.NAME` of spark-submit wins), so
executors reach an object store as the driver does. The job's engine is forced to `spark`
and its master to the session's master.
"""

from __future__ import annotations

import argparse
import os
import sys

if __name__ == "__main__" and sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(
        os.path.abspath(__file__)):
    # run as a file (spark-submit .../thresher/pipelines/spark_submit.py): Python put this folder
    # first on sys.path, where its siblings (engine, local, plan, tasks, worker, ...) would
    # shadow top-level modules of those names; thresher itself is imported as a package
    sys.path.pop(0)

from thresher.config import JobError, load_job  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spark_submit.py", description="Run a thresher job on Spark.")
    p.add_argument("job", help="job spec (YAML)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any job key (repeatable)")
    p.add_argument("--output", "-o", help="override output.path")
    p.add_argument("--overwrite", action="store_true", help="replace another job's output in the folder")
    p.add_argument("--quiet", "-q", action="store_true", help="no console progress")
    return p


def under_spark_submit() -> bool:
    """True when spark-submit started this interpreter (its JVM is waiting for us)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = list(args.overrides) + ["engine.name=spark"]
    if args.output:
        overrides.append(f"output.path={args.output}")
    session = None
    try:
        job = load_job(args.job, overrides)
        if under_spark_submit():
            from pyspark import SparkConf, SparkContext
            from pyspark.sql import SparkSession

            from thresher.pipelines.spark_engine import ENV_KEY, executor_env

            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
            builder = SparkSession.builder
            # the context (and so its executors) starts here: the job's spark.thresher.executorEnv
            # still reaches them; spark-submit's own --conf spark.executorEnv.NAME wins
            SparkContext._ensure_initialized()  # the JVM spark-submit started: its conf is readable now
            submitted = SparkConf()  # spark-submit's --conf / spark-defaults.conf (the JVM's spark.* properties)
            names = submitted.get(ENV_KEY) or str(job.engine.spark.conf.get(ENV_KEY, ""))
            for k, v in executor_env(names, os.environ).items():
                if not submitted.contains(k):
                    builder = builder.config(k, v)
            session = builder.getOrCreate()
            for k, v in job.engine.spark.conf.items():
                try:
                    session.conf.set(k, v)
                except Exception:  # static/JVM settings cannot change now: spark-submit owns them
                    pass
            spark = job.engine.spark.model_copy(update={"master": session.sparkContext.master})
            job = job.model_copy(update={"engine": job.engine.model_copy(update={"spark": spark})})
        from thresher.pipelines.runner import run_job

        result = run_job(job, overwrite=args.overwrite or None, progress=not args.quiet)
        print(result.summary, end="")
        print(f"output: {result.output}")
        return 0
    except JobError as exc:
        print(f"thresher: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if session is not None:
            session.stop()


if __name__ == "__main__":
    sys.exit(main())
