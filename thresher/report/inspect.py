"""`thresher inspect`: schema, counts and a score summary of any output or Parquet file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds

from thresher.specs import JobError
from thresher.io.output import find_manifest
from thresher.pipelines.manifest import _as_float, _numeric, describe


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        parts = sorted(path.glob("part-*.parquet"))
        return parts or sorted(p for p in path.rglob("*.parquet") if not p.name.startswith("."))
    raise JobError(f"{path}: no such file or folder")


def inspect_data(path: str | Path) -> dict[str, Any]:
    """Schema, row count and per-numeric-column statistics of Parquet data."""
    p = Path(path)
    files = _files(p)
    if not files:
        raise JobError(f"{p}: no Parquet files")
    try:
        dataset = ds.dataset([str(f) for f in files], format="parquet")
    except (pa.ArrowInvalid, OSError) as exc:
        raise JobError(f"{p}: cannot read as Parquet ({exc})") from None
    numeric = [f.name for f in dataset.schema if _numeric(f) and f.name not in ("_row", "_shard")]
    table = dataset.to_table(columns=numeric)
    stats = {c: describe(_as_float(table.column(c))) for c in numeric}
    info: dict[str, Any] = {
        "path": str(p), "files": len(files), "rows": dataset.count_rows(),
        "schema": {f.name: str(f.type) for f in dataset.schema}, "columns": stats,
    }
    manifest = find_manifest(p)
    if manifest is not None:
        m = json.loads(manifest.read_text())
        info["counts"] = m.get("counts")
        info["job"] = m.get("job", {}).get("name")
        info["selector"] = m.get("job", {}).get("selector")
    return info


def inspect_path(path: str | Path, as_json: bool = False) -> str:
    """Human-readable (or JSON) description of `path`."""
    info = inspect_data(path)
    if as_json:
        return json.dumps(info, indent=2, default=str)
    lines = [f"{info['path']}: {info['rows']:,} rows in {info['files']} file(s)"]
    if "counts" in info and info["counts"]:
        c = info["counts"]
        lines.append(f"job {info['job']!r}, selector {info['selector']}")
        lines.append(f"input {c['input_rows']:,}: selected {c.get('selected', 0):,}, not selected "
                     f"{c.get('not_selected', {}).get('total', 0):,}, rejected {c.get('rejected', {}).get('total', 0):,}")
        for reason, n in sorted((c.get("rejected") or {}).get("by_reason", {}).items()):
            lines.append(f"  rejected {reason}: {n:,}")
    lines.append("schema:")
    lines.extend(f"  {name}: {typ}" for name, typ in info["schema"].items())
    if info["columns"]:
        lines.append(f"{'column':<36}{'count':>10}{'mean':>12}{'std':>12}{'min':>12}{'p50':>12}{'max':>12}")
        for name, s in info["columns"].items():
            vals = [s[k] for k in ("mean", "std", "min", "p50", "max")]
            cells = "".join(f"{v:>12.4g}" if v is not None else f"{'-':>12}" for v in vals)
            lines.append(f"{name:<36}{s['count']:>10,}{cells}")
    return "\n".join(lines)


__all__ = ["inspect_data", "inspect_path"]
