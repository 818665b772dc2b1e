"""Score statistics and the short text summary printed at the end of a run."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

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
    schema = pq.read_schema(layout.scores(0))
    cols = [f.name for f in schema if f.name not in SKIP and _numeric(f)]
    scores = pa.concat_tables([pq.read_table(layout.scores(i), columns=cols) for i in range(n_shards)])
    status = pa.concat_tables([pq.read_table(layout.selection(i), columns=["status"]) for i in range(n_shards)])
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
    rate = c["input_rows"] / t["score"] if t.get("score") else None
    lines.append("  time            " + ", ".join(f"{k} {v:.2f}s" for k, v in t.items())
                 + (f"  ({rate:,.0f} docs/s scoring)" if rate else ""))
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
