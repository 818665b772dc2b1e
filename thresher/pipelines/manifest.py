"""The manifest of a run (counts that add up, per-part checksums, score statistics) and the
short text summary printed at the end of it."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.config import JobSpec
from thresher.io import storage
from thresher.io.output import OutputLayout
from thresher.io.readers import InputShard
from thresher.specs import JobError
from thresher.version import __version__

SKIP = {"id", "_shard", "_row"}
MAX_SCORE_LINES = 10


def _numeric(field: pa.Field) -> bool:
    t = field.type
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def describe(values: np.ndarray) -> dict[str, float | int | None]:
    """count / mean / std / min / p50 / max of the finite values (None when there are none)."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return {"count": 0, "mean": None, "std": None, "min": None, "p50": None, "max": None}
    return {"count": int(v.size), "mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()),
            "p50": float(np.median(v)), "max": float(v.max())}


def _as_float(col: pa.ChunkedArray) -> np.ndarray:
    arr = col.to_numpy() if col.null_count == 0 else col.to_pandas().to_numpy(dtype=float, na_value=np.nan)
    return np.asarray(arr, dtype=float)


def score_summary(layout: Any, n_shards: int) -> dict[str, dict[str, Any]]:
    """Per numeric score column: statistics over the valid pool and over the selection."""
    if n_shards == 0:
        return {}
    schema = storage.read_schema(layout.scores(0))
    cols = [f.name for f in schema if f.name not in SKIP and _numeric(f)]
    scores = pa.concat_tables([storage.read_table(layout.scores(i), columns=cols) for i in range(n_shards)])
    status = pa.concat_tables([storage.read_table(layout.selection(i), columns=["status"]) for i in range(n_shards)])
    st = np.asarray(status.column("status").to_pylist(), dtype=object)
    pool = st != "rejected"
    chosen = st == "selected"
    out = {}
    for c in cols:
        v = _as_float(scores.column(c))
        out[c] = {"pool": describe(v[pool]), "selected": describe(v[chosen])}
    return out


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.4g}"
    return f"{x:,}"


def _score_rate(manifest: dict[str, Any]) -> str:
    """The scoring rate over the documents scored in this run, or that scoring was resumed."""
    resumed = (manifest.get("resumed_shards") or {}).get("score", 0)
    n_shards = len(manifest["inputs"])
    done = (manifest.get("rows_this_run") or {}).get("score")
    if done is None:  # a manifest from before `rows_this_run`
        done = manifest["counts"]["input_rows"] if not resumed else 0 if resumed == n_shards else None
    if done == 0 and resumed:
        return "score: resumed, 0 docs scored"
    seconds = manifest["timings"].get("score")
    if not done or not seconds:
        return ""
    return f"{done / seconds:,.0f} docs/s scoring" + (f", {resumed} shard(s) resumed" if resumed else "")


def summary_text(manifest: dict[str, Any]) -> str:
    """A few lines a person reads at the end of a run."""
    c = manifest["counts"]
    lines = [f"thresher job {manifest['job']['name']!r} on the {manifest['engine']} engine"]
    lines.append(f"  input rows      {c['input_rows']:>12,}  from {len(manifest['inputs'])} shard(s)")
    if "selected" in c:
        n = max(c["input_rows"], 1)
        lines.append(f"  selected        {c['selected']:>12,}  ({100 * c['selected'] / n:.1f}%)")
        lines.append(f"  not selected    {c['not_selected']['total']:>12,}")
        for reason, k in sorted(c["not_selected"]["by_reason"].items()):
            lines.append(f"      {reason:<34} {k:>10,}")
        lines.append(f"  rejected        {c['rejected']['total']:>12,}")
        for reason, k in sorted(c["rejected"]["by_reason"].items()):
            lines.append(f"      {reason:<34} {k:>10,}")
    t = manifest["timings"]
    note = _score_rate(manifest)
    lines.append("  time            " + ", ".join(f"{k} {v:.2f}s" for k, v in t.items())
                 + (f"  ({note})" if note else ""))
    scores = manifest.get("scores") or {}
    if scores:
        lines.append(f"  {'score (mean)':<34} {'pool':>10} {'selected':>10}")
        shown = list(scores.items())[:MAX_SCORE_LINES]
        for name, s in shown:
            lines.append(f"  {name:<34} {_fmt(s['pool']['mean']):>10} {_fmt(s['selected']['mean']):>10}")
        if len(scores) > len(shown):
            lines.append(f"  ... {len(scores) - len(shown)} more score columns in _manifest.json "
                         f"(or `thresher inspect`)")
    if manifest.get("shards") is not None:
        lines.append(f"  output          {len(manifest['shards'])} part file(s) + _manifest.json")
    return "\n".join(lines) + "\n"


def count_rows(layout: OutputLayout, n_shards: int) -> dict[str, Any]:
    """Selected / not selected / rejected counts, by reason, from the files on disk."""
    status: Counter[str] = Counter()
    reasons: dict[str, Counter[str]] = {"not_selected": Counter(), "rejected": Counter()}
    for i in range(n_shards):
        sel = storage.read_table(layout.selection(i), columns=["status", "reason"])
        for (st, rs), n in Counter(zip(sel.column("status").to_pylist(), sel.column("reason").to_pylist())).items():
            status[st] += n
            if st in reasons:
                reasons[st][rs or "unknown"] += n
        rej = layout.rejected(i)
        if storage.exists(rej):
            r = storage.read_table(rej, columns=["reason"])
            for rs, n in Counter(r.column("reason").to_pylist()).items():
                status["rejected"] += n
                reasons["rejected"][rs] += n
    return {
        "selected": status["selected"],
        "not_selected": {"total": status["not_selected"], "by_reason": dict(reasons["not_selected"])},
        "rejected": {"total": status["rejected"], "by_reason": dict(reasons["rejected"])},
    }


def build_manifest(job: JobSpec, layout: OutputLayout, shards: list[InputShard], score_res: list[dict[str, Any]],
                   select_res: dict[str, Any] | None, write_res: list[dict[str, Any]] | None,
                   timings: dict[str, float], engine: str, parts: list[dict[str, Any]] | None = None,
                   dedup: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything a reader needs to trust the output; the counts must add up.

    `parts`: the files of the parts when they are not one per shard (`output.target_rows_per_part`:
    `parts.rechunk` made them); `shards` of the manifest then lists those."""
    input_rows = sum(r["rows_in"] for r in score_res)
    scorer_stats: dict[str, dict[str, float]] = {}
    for r in score_res:
        for name, st in (r.get("scorers") or {}).items():
            agg = scorer_stats.setdefault(name, {"rows": 0, "seconds": 0.0})
            agg["rows"] += st["rows"]
            agg["seconds"] += st["seconds"]
    manifest: dict[str, Any] = {
        "thresher_version": __version__,
        "job": job.model_dump(mode="json"),
        "score_hash": job.score_hash(),
        "select_hash": job.select_hash(),
        "engine": engine,
        "inputs": [{"shard": s.index, "source": s.name, "fingerprint": s.fingerprint, "rows": r["rows_in"]}
                   for s, r in zip(shards, score_res)],
        "counts": {"input_rows": input_rows},
        "scorers": scorer_stats,
        "timings": {k: round(v, 4) for k, v in timings.items()},
        "resumed_shards": {"score": sum(bool(r.get("skipped")) for r in score_res)},
        # documents each map stage worked on in this run (not resumed): the rates of the summary
        "rows_this_run": {"score": sum(r["rows_in"] for r in score_res if not r.get("skipped"))},
    }
    if select_res is None or write_res is None:
        return manifest
    counts = count_rows(layout, len(shards))
    total = counts["selected"] + counts["not_selected"]["total"] + counts["rejected"]["total"]
    if total != input_rows:
        raise JobError(f"accounting error: {input_rows} input rows but {total} counted "
                       f"(selected + not selected + rejected); please report this bug")
    files = parts if parts is not None else [r["part"] for r in write_res]
    written = sum(p["rows"] for p in files)
    if written != counts["selected"]:
        raise JobError(f"accounting error: {counts['selected']} selected but {written} rows written")
    manifest["counts"].update(counts)
    manifest["shards"] = files
    if job.write_hash() != job.select_hash():  # output.columns or a part size target
        manifest["write_hash"] = job.write_hash()
    manifest["selection"] = {k: v for k, v in select_res.items() if k not in ("skipped",)}
    if dedup is not None:  # the dedup stage's summary; its removed rows are in counts.rejected.by_reason
        manifest["dedup"] = {k: v for k, v in dedup.items() if k not in ("skipped", "routed")}
        manifest["resumed_shards"]["dedup"] = bool(dedup.get("skipped"))
    manifest["scores"] = score_summary(layout, len(shards))
    manifest["resumed_shards"]["write"] = sum(bool(r.get("skipped")) for r in write_res)
    manifest["rows_this_run"]["write"] = sum(r.get("rows_in", 0) for r in write_res if not r.get("skipped"))
    manifest["resumed_shards"]["select"] = bool(select_res.get("skipped"))
    tokens = None
    if manifest["shards"]:
        try:
            tokens = sum(pc.sum(storage.read_table(layout.root / p["file"], columns=["n_words"]).column("n_words")).as_py()
                         or 0 for p in files)
        except (KeyError, pa.ArrowInvalid):
            tokens = None
    manifest["counts"]["selected_words"] = tokens
    return manifest
