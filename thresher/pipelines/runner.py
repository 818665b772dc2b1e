"""Run a job: plan shards, score (map), select (global), write (map), then the manifest.

`run_job` is the one entry point the CLI and the Python API use; the engine only
decides how the two map stages are spread over workers.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any


from thresher.config import JobSpec, job_identity
from thresher.specs import JobError, config_diff
from thresher.common.atomic import write_json_atomic, write_text_atomic
from thresher.io import storage
from thresher.io.output import JobLock, OutputLayout, check_own_or_empty, check_storage_path, remove_stale_temporaries
from thresher.io.readers import InputShard, as_arrow_table, plan_shards
from thresher.models.fingerprint import changed_models, model_fingerprints
from thresher.pipelines import dedup_stage, stages
from thresher.pipelines.selection import stage as select_stage
from thresher.pipelines.engine import make_engine
from thresher.pipelines.plan import check_plan
from thresher.pipelines.manifest import build_manifest, summary_text
from thresher.pipelines.card import write_card
from thresher.pipelines.parts import forget_other_parts, rechunk, rechunks

@dataclass
class RunResult:
    """What `run_job` (`thresher.run`) returns: the manifest, the summary text and the output folder."""

    manifest: dict[str, Any]
    summary: str
    output: str

    def part_files(self) -> list[str]:
        """The paths of the parts (`part-*.parquet`), in order (a JobError for a score-only run)."""
        parts = self.manifest.get("shards")
        if parts is None:
            raise JobError(f"{self.output}: a score-only run wrote no selected rows; run the whole job "
                           f"(or `thresher select`) first")
        return [storage.join(self.output, p["file"]) for p in parts]

    def to_dataset(self, **load_kwargs: Any) -> Any:
        """The selected rows as a `datasets.Dataset` (memory-mapped from the datasets cache, in
        part order); `load_kwargs` go to `datasets.load_dataset` (e.g. `cache_dir=`)."""
        try:
            import datasets
        except ImportError:
            raise JobError("RunResult.to_dataset() needs the `datasets` package: pip install datasets "
                           "(or use to_pandas())") from None
        files = self.part_files()
        if not files:
            raise JobError(f"{self.output}: the run wrote no parts (no input shards)")
        return datasets.load_dataset("parquet", data_files=files, split="train", **load_kwargs)

    def to_pandas(self) -> Any:
        """The selected rows as a `pandas.DataFrame`, in part order."""
        import pyarrow as pa

        tables = [storage.read_table(f) for f in self.part_files()]
        if not tables:
            raise JobError(f"{self.output}: the run wrote no parts (no input shards)")
        return pa.concat_tables(tables, promote_options="default").to_pandas()


def _inputs_hash(shards: list[InputShard]) -> str:
    return hashlib.sha256(json.dumps([s.fingerprint for s in shards]).encode()).hexdigest()[:16]


def prepare_output(layout: OutputLayout, job: JobSpec, shards: list[InputShard], overwrite: bool,
                   reselect: bool = False) -> None:
    """Check the output folder against this job; refuse to mix with another job's output.

    A folder with the same config resumes, wherever it lies now (`output.path` is not part of
    the config's identity). A changed config is an error unless `overwrite`
    (which always starts afresh) or `reselect` (only the selection changed: `thresher select`).
    """
    root = layout.root
    models = {"score": model_fingerprints(job.scorers), "select": model_fingerprints(job.selector)}
    state = {"score_hash": job.score_hash(), "select_hash": job.select_hash(), "inputs_hash": _inputs_hash(shards),
             "models": models, "job": job.model_dump(mode="json")}
    if layout.state.exists():
        try:
            old = layout.read_state()
            old_models = old["models"]
        except JobError:  # damaged: refuse, or start afresh
            if not overwrite:
                raise
            old, old_models = {}, {}
        changed = {k: changed_models(old_models.get(k, {}), models[k]) for k in models}
        if reselect:  # re-selecting on saved scores: the scorers' models are not used again
            changed["score"] = []
            models["score"] = old_models.get("score", models["score"])
        same_scores = (old.get("score_hash") == state["score_hash"] and old.get("inputs_hash") == state["inputs_hash"]
                       and not changed["score"])
        same_select = old.get("select_hash") == state["select_hash"] and not changed["select"]
        if overwrite:  # start afresh (also when the config is unchanged)
            same_scores = same_select = False
        if not (same_scores and same_select):
            what = ("input files or scorers" if not same_scores else "filters or selector") + " differ"
            # where the folder lies (output.path) and output.overwrite are no part of the identity
            keys = (config_diff(job_identity(old["job"]), job_identity(state["job"]))
                    if isinstance(old.get("job"), dict) else [])
            if keys:
                what += ": " + "; ".join(keys[:8]) + (f"; and {len(keys) - 8} more" if len(keys) > 8 else "")
            if changed["score"] or changed["select"]:
                what += f"; model files changed: {', '.join(changed['score'] + changed['select'])}"
            if not (overwrite or (reselect and same_scores)):
                raise JobError(f"output folder {root} holds another job's output ({what}); "
                               f"use --overwrite, or `thresher select` to re-select on saved scores, "
                               f"or another --output")
            if not same_scores:
                for stage in ("score", "select", "write"):
                    layout.clear_stage(stage)
            else:
                layout.clear_stage("select")
                layout.clear_stage("write")
    else:
        check_own_or_empty(root)
    write_json_atomic(state, layout.state)


MODEL_SCORERS = ("perplexity", "classifier", "embedding", "icon")  # seconds per hundred documents on a CPU


def few_shards_hint(job: JobSpec, n_shards: int) -> str | None:
    """A one-line hint when model scorers would leave local workers idle (fewer shards than
    workers); None otherwise."""
    if job.engine.name != "local" or not any(s.get("type") in MODEL_SCORERS for s in job.scorers):
        return None
    workers = job.engine.local.workers or os.cpu_count() or 1
    if n_shards == 0 or n_shards >= workers:
        return None
    return (f"thresher: {n_shards} shard{'s' if n_shards > 1 else ''} for {workers} workers: model scoring will "
            f"leave {workers - n_shards} idle; set input.shard_rows lower (now {job.input.shard_rows:,}) to cut "
            f"big files into more shards")


def run_job(job: JobSpec, data: Any = None, overwrite: bool | None = None, progress: bool = True,
            score_only: bool = False, reselect: bool = False) -> RunResult:
    """Run a whole job (or only its score stage) and return the manifest and summary."""
    t0 = time.perf_counter()
    check_plan(job, reselect=reselect, in_memory=data is not None)  # before the output folder is touched
    table = as_arrow_table(data) if data is not None else None
    shards = plan_shards(job.input, table)
    if progress:
        hint = few_shards_hint(job, len(shards))
        if hint:
            print(hint, file=sys.stderr)
    check_storage_path(job.output.path, "output.path", job.output.storage_options)  # a bad URI or unreachable store: one line, nothing written
    layout = OutputLayout(job.output.path, job.output.storage_options)
    timings: dict[str, float] = {"plan": time.perf_counter() - t0}
    # the lock refuses a folder that is not thresher's own before creating anything in it;
    # only then, holding it, are a killed run's temporaries removed
    with JobLock(layout):
        remove_stale_temporaries(layout.root)
        prepare_output(layout, job, shards, overwrite if overwrite is not None else job.output.overwrite,
                       reselect=reselect)
        engine = make_engine(job, progress=progress)
        try:
            t = time.perf_counter()
            score_res = engine.map_shards("score", stages.score_shard, job, shards, str(layout.root), table)
            timings["score"] = time.perf_counter() - t
            if score_only:
                manifest = build_manifest(job, layout, shards, score_res, None, None, timings, engine.name)
                return RunResult(manifest, summary_text(manifest), str(layout.root))
            dedup_res = None
            if job.dedup is not None:  # opt-in: exact and MinHash near-duplicates, before filters and selection
                t = time.perf_counter()
                dedup_res = dedup_stage.dedup(job, layout, shards, engine, input_table=table,
                                              fresh=overwrite if overwrite is not None else job.output.overwrite)
                timings["dedup"] = time.perf_counter() - t
            t = time.perf_counter()
            select_res = select_stage.select(job, layout, len(shards), engine, shards=shards, input_table=table)
            timings["select"] = time.perf_counter() - t
            t = time.perf_counter()
            forget_other_parts(job, layout, len(shards))  # output.columns or a part size changed
            write_res = engine.map_shards("write", stages.write_shard, job, shards, str(layout.root), table)
            # output.target_rows_per_part: the per-shard parts re-chunked, one map task per part
            parts = rechunk(job, layout, write_res, engine.parallel_map) if rechunks(job) else None
            timings["write"] = time.perf_counter() - t
            timings["total"] = time.perf_counter() - t0
        finally:
            engine.close()
        manifest = build_manifest(job, layout, shards, score_res, select_res, write_res, timings, engine.name,
                                  parts=[r["part"] for r in parts] if parts is not None else None, dedup=dedup_res)
        write_card(manifest, layout)  # after the parts, before the manifest
        write_json_atomic(manifest, layout.manifest)
        text = summary_text(manifest)
        write_text_atomic(text, layout.summary)
    return RunResult(manifest, text, str(layout.root))
