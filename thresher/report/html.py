"""Build the self-contained HTML report of one or several runs (and of a selection benchmark).

`load_run(path)` reads an output folder's narrow tables (`_scores`, `_selection`) and its
manifest, or a benchmark folder's `selection_quality.json`; the few example documents per score
decile are read afterwards (`fetch_texts`: selected ones from the part files, the others from
the job's input, bounded). `build_report(runs)` turns them into
sections of tables and figures; `write_report(paths, out)` writes the HTML (every image
embedded as a base64 PNG) and the same PNG files next to it.

The page carries a small script that, once the page has loaded, sets `data-images-ok` on
`<body>` ("true" when every image decoded) and records script errors in `data-errors`: the
headless-browser test reads both.
"""

from __future__ import annotations

import base64
import html
import json
import re
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from thresher.common.atomic import write_bytes_atomic, write_text_atomic
from thresher.specs import JobError
from thresher.io.output import MANIFEST_NAME, find_manifest
from thresher.report import plots

BENCH_FILE = "selection_quality.json"
MAX_HISTOGRAMS = 9
MAX_RUN_FIGURES = 6  # runs that get their own counts/histogram figures
SKIP_COLUMNS = {"_shard", "_row"}
CLUSTER_RE = re.compile(r"^clusters\w*_id$")


@dataclass
class RunData:
    """What the report needs from one output folder (narrow tables; the text of a few example
    documents is read separately, `fetch_texts`)."""

    path: Path
    name: str
    manifest: dict[str, Any]
    frame: pd.DataFrame  # one row per scored document: id, status, reason, numeric scores
    score_columns: list[str]  # numeric (non-bool) score / selector columns
    cluster_columns: list[str]

    @property
    def selector(self) -> dict[str, Any]:
        return self.manifest.get("job", {}).get("selector", {}) or {}

    @property
    def selected(self) -> pd.Series:
        return self.frame["status"] == "selected"

    @property
    def pool(self) -> pd.Series:
        return self.frame["status"] != "rejected"


@dataclass
class BenchData:
    path: Path
    name: str
    results: dict[str, Any]


@dataclass
class Figure:
    name: str  # file stem, unique within the report
    title: str
    png: bytes
    caption: str = ""


@dataclass
class Section:
    title: str
    html: str = ""  # tables and text (already escaped)
    figures: list[Figure] = field(default_factory=list)


# -- loading ----------------------------------------------------------------------------


def _numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def _is_cluster_column(name: str, s: pd.Series) -> bool:
    """A `clusters*_id` column of whole numbers (nullable ints arrive as floats)."""
    if not CLUSTER_RE.match(name):
        return False
    if pd.api.types.is_integer_dtype(s.dtype):
        return True
    if pd.api.types.is_float_dtype(s.dtype):
        v = s.dropna().to_numpy()
        return bool(np.all(v == np.round(v)))
    return False


def load_run(path: str | Path) -> RunData | BenchData:
    """Read an output folder (or a selection-benchmark folder, `python -m benchmarks.selection`) for the report."""
    root = Path(path)
    if (root / BENCH_FILE).exists():
        return BenchData(root, root.name, json.loads((root / BENCH_FILE).read_text()))
    mpath = find_manifest(root)
    if mpath is None:
        raise JobError(f"{root}: no {MANIFEST_NAME} (not a finished thresher output folder) and no {BENCH_FILE}")
    manifest = json.loads(mpath.read_text())
    if "selection" not in manifest:
        raise JobError(f"{root}: the manifest has no selection (a score-only run); run `thresher select` first")
    score_files = sorted((root / "_scores").glob("part-*.parquet"))
    if not score_files:
        raise JobError(f"{root}: no _scores/part-*.parquet")
    frames = []
    for sf in score_files:
        sel_file = root / "_selection" / sf.name
        if not sel_file.exists():
            raise JobError(f"{sel_file}: missing (the selection stage did not finish)")
        scores, sel = pq.read_table(sf), pq.read_table(sel_file)
        if scores.num_rows != sel.num_rows:
            raise JobError(f"{sf.name}: score and selection tables differ in length; re-run the job")
        cols: dict[str, Any] = {"id": scores.column("id").to_pylist()}
        for tbl in (scores, sel):
            for f in tbl.schema:
                if f.name in cols or f.name in SKIP_COLUMNS:
                    continue
                if f.name in ("status", "reason") or _numeric(f.type) or pa.types.is_boolean(f.type):
                    cols[f.name] = tbl.column(f.name).to_pandas()
        frames.append(pd.DataFrame(cols))
    frame = pd.concat(frames, ignore_index=True)
    clusters = [c for c in frame.columns if _is_cluster_column(c, frame[c])]
    scores_cols = [c for c in frame.columns
                   if c not in ("id", "status", "reason") and c not in clusters
                   and pd.api.types.is_numeric_dtype(frame[c].dtype) and not pd.api.types.is_bool_dtype(frame[c].dtype)]
    return RunData(root, root.name, manifest, frame, scores_cols, clusters)


def unique_names(runs: list[RunData | BenchData]) -> None:
    """Make run labels unique (folder name, then parent/name)."""
    names = [r.name for r in runs]
    for r in runs:
        if names.count(r.name) > 1:
            r.name = f"{r.path.parent.name}/{r.path.name}"


# -- analysis ---------------------------------------------------------------------------


def counts_rows(m: dict[str, Any]) -> dict[str, int]:
    """Selected / not selected by reason / rejected by reason, from the manifest."""
    c = m["counts"]
    out = {"selected": int(c["selected"])}
    for reason, k in sorted(c["not_selected"]["by_reason"].items()):
        out[f"not selected: {reason}"] = int(k)
    for reason, k in sorted(c["rejected"]["by_reason"].items()):
        out[f"rejected: {reason}"] = int(k)
    return out


def _selector_columns(sel: dict[str, Any]) -> list[str]:
    cols = [sel.get("column"), sel.get("quality")] + list((sel.get("quality_weights") or {}).keys())
    cols.append({"datamask": "datamask_logit", "greedy": "greedy_rank"}.get(sel.get("type")))  # type: ignore[arg-type]
    return [c for c in cols if c]


def informative_columns(run: RunData, cap: int = MAX_HISTOGRAMS) -> list[str]:
    """The selector's own columns first, then the rest by how far the selection moved their mean."""
    pool, sel = run.pool, run.selected
    shift: dict[str, float] = {}
    for c in run.score_columns:
        v = run.frame.loc[pool, c].astype(float)
        v = v[np.isfinite(v)]
        if v.size < 2 or v.nunique() < 2:
            continue
        s = run.frame.loc[sel, c].astype(float)
        s = s[np.isfinite(s)]
        shift[c] = abs(float(s.mean()) - float(v.mean())) / float(v.std()) if s.size else 0.0
    first = [c for c in _selector_columns(run.selector) if c in shift]
    rest = sorted((c for c in shift if c not in first), key=lambda c: (-shift[c], c))
    chosen: list[str] = []
    pool_frame = run.frame.loc[pool]
    for c in first + rest:  # skip a column that repeats one already shown (e.g. n_words twice)
        v = pool_frame[c].astype(float)
        if any(abs(v.corr(pool_frame[d].astype(float))) > 0.999 for d in chosen):
            continue
        chosen.append(c)
        if len(chosen) == cap:
            break
    return chosen


def cluster_stats(run: RunData, column: str) -> dict[str, Any]:
    """Per-cluster totals and selected counts over the pool, and the covered fraction."""
    f = run.frame.loc[run.pool & run.frame[column].notna(), [column, "status"]]
    g = f.groupby(column)["status"]
    total = g.size()
    sel = g.apply(lambda s: int((s == "selected").sum()))
    covered = float((sel > 0).mean()) if len(total) else 0.0
    return {"clusters": int(len(total)), "covered": covered, "total": total.to_numpy(), "selected": sel.to_numpy(),
            "ids": total.index.to_numpy(),
            "median_fraction": float(np.median(sel.to_numpy() / total.to_numpy())) if len(total) else 0.0}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if (a or b) else 1.0


# -- html helpers -------------------------------------------------------------------------


def esc(x: Any) -> str:
    return html.escape(str(x))


def fmt(x: Any) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "–"
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    if isinstance(x, (float, np.floating)):
        return f"{float(x):,.4g}"
    return str(x)


def table(header: list[str], rows: list[list[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(fmt(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


# -- sections ---------------------------------------------------------------------------


def run_label(r: RunData) -> str:
    s = r.selector
    extra = ", ".join(f"{k}={s[k]}" for k in ("budget", "column", "quality", "lam") if s.get(k) is not None)
    return f"{s.get('type', '?')}" + (f" ({extra})" if extra else "")


def overview(runs: list[RunData]) -> Section:
    rows = []
    for r in runs:
        c = r.manifest["counts"]
        n = max(c["input_rows"], 1)
        rows.append([r.name, r.manifest["job"].get("name"), run_label(r), c["input_rows"], c["selected"],
                     f"{100 * c['selected'] / n:.1f}%", c["not_selected"]["total"], c["rejected"]["total"],
                     r.manifest.get("engine")])
    return Section("Runs", budget_note(runs) + table(["run", "job", "selector", "input rows", "selected", "share",
                                                      "not selected", "rejected", "engine"], rows))


def counts_section(runs: list[RunData]) -> Section:
    keys: list[str] = []
    per_run = [counts_rows(r.manifest) for r in runs]
    for d in per_run:
        keys += [k for k in d if k not in keys]
    rows = [[k] + [d.get(k, 0) for d in per_run] for k in keys]
    rows.append(["total (= input rows)"] + [sum(d.values()) for d in per_run])
    sec = Section("Counts", table(["status / reason"] + [r.name for r in runs], rows))
    shown = runs[:MAX_RUN_FIGURES]
    title = "Counts: " + (shown[0].name if len(shown) == 1 else "runs side by side")
    sec.figures.append(Figure("counts", title, plots.counts_grouped([r.name for r in shown], per_run[:len(shown)])))
    return sec


def histogram_section(runs: list[RunData]) -> Section:
    sec = Section("Scores: pool against selection")
    parts = []
    for i, r in enumerate(runs[:MAX_RUN_FIGURES]):
        cols = informative_columns(r)
        if not cols:
            continue
        pool, sel = r.pool, r.selected
        data = [(c, r.frame.loc[pool, c].to_numpy(dtype=float, na_value=np.nan),
                 r.frame.loc[sel, c].to_numpy(dtype=float, na_value=np.nan)) for c in cols]
        rows = []
        for c, pv, sv in data:
            rows.append([c, np.nanmean(pv) if np.isfinite(pv).any() else None,
                         np.nanmean(sv) if np.isfinite(sv).any() else None,
                         np.nanstd(pv) if np.isfinite(pv).any() else None])
        hidden = len(r.score_columns) - len(cols)
        parts.append(f"<h3>{esc(r.name)}</h3>" + table(["column", "pool mean", "selected mean", "pool std"], rows)
                     + (f"<p class='note'>{hidden} more numeric column(s) not shown (constant, or a smaller "
                        f"shift between pool and selection).</p>" if hidden > 0 else ""))
        sec.figures.append(Figure(f"scores-{i}", f"Score histograms: {r.name}", plots.score_histograms(data),
                                  "grey: valid pool; orange outline: selection (densities; the outer bins also hold "
                                  "the values beyond the central 99%; a heavy-tailed column gets a log x axis and "
                                  "shows the share of documents per log-spaced bin)"))
    sec.html = "".join(parts)
    return sec


def budget_text(r: RunData) -> str:
    """A run's budget as the page states it: the selector's setting and what it selected."""
    s, c = r.selector, r.manifest["counts"]
    b = s.get("budget")
    picked = f"{int(c['selected']):,} of {int(c['input_rows']):,} rows selected"
    if b is None:
        return f"none ({s.get('type', '?')}; {picked})"
    unit = "tokens" if s.get("budget_unit") == "tokens" else "documents"
    share = f"{100 * float(b):g}% of the valid {unit}" if isinstance(b, (int, float)) and b <= 1 else f"{fmt(b)} {unit}"
    return f"{share} ({picked})"


def budget_note(runs: list[RunData]) -> str:
    """A visible note when compared runs select with different budgets (empty otherwise)."""
    if len(runs) < 2:
        return ""
    if len({(json.dumps(r.selector.get("budget")), r.selector.get("budget_unit", "docs")) for r in runs}) < 2:
        return ""
    items = "".join(f"<li><b>{esc(r.name)}</b>: budget {esc(budget_text(r))}</li>" for r in runs)
    return (f'<div class="warn" id="budgets-differ"><b>Budgets differ between these runs.</b> Overlaps and score '
            f"means below compare selections of different sizes:<ul>{items}</ul></div>")


# -- example documents ------------------------------------------------------------------

MAX_EXAMPLE_RUNS = 3
MAX_EXAMPLE_COLUMNS = 3
EXAMPLE_DECILES = (0, 2, 4, 7, 9)  # D1, D3, D5, D8, D10: one selected + one not each, <= 10 docs per column
EXAMPLE_CHARS = 300
MAX_EXAMPLE_SCAN_ROWS = 200_000  # input rows read again, at most, to find not-selected examples


def decile_examples(run: RunData, column: str) -> list[dict[str, Any]]:
    """Per chosen decile of `column` over the pool: range, size, selected share, and the ids of one
    selected and one not-selected document nearest the decile's median (either may be absent)."""
    f = run.frame.loc[run.pool, ["id", "status", column]]
    f = f[np.isfinite(f[column].to_numpy(dtype=float, na_value=np.nan))]
    if len(f) < 10 or f[column].nunique() < 2:
        return []
    rank = f[column].rank(method="first").to_numpy()
    dec = ((rank - 1) * 10 // len(f)).astype(int)
    out: list[dict[str, Any]] = []
    for d in EXAMPLE_DECILES:
        part = f[dec == d]
        if part.empty:
            continue
        vals = part[column].astype(float)
        if out and out[-1]["lo"] == out[-1]["hi"] == float(vals.min()) == float(vals.max()):
            continue  # the same single value again (a mostly-constant column): nothing new to show
        med = float(vals.median())
        row: dict[str, Any] = {"decile": d + 1, "lo": float(vals.min()), "hi": float(vals.max()), "docs": len(part),
                               "share": float((part["status"] == "selected").mean())}
        for key, mask in (("selected", part["status"] == "selected"), ("not", part["status"] != "selected")):
            cand = part[mask]
            if len(cand):
                i = (cand[column].astype(float) - med).abs().idxmin()
                row[key] = (str(cand.at[i, "id"]), float(cand.at[i, column]), str(cand.at[i, "status"]))
        out.append(row)
    return out


def fetch_texts(run: RunData, ids: set[str]) -> tuple[dict[str, str], str]:
    """The text of these documents: selected ones from the output's part files, the rest read
    again from the job's input (only the shards that hold them, at most MAX_EXAMPLE_SCAN_ROWS
    rows). Returns (id -> text, a note on what could not be read, or "")."""
    import pyarrow.compute as pc

    got: dict[str, str] = {}

    def take(tbl: pa.Table | pa.RecordBatch, want: set[str]) -> None:
        mask = pc.is_in(tbl.column("id"), value_set=pa.array(sorted(want), pa.string()))
        hit = tbl.filter(mask)
        for i, t in zip(hit.column("id").to_pylist(), hit.column("text").to_pylist()):
            got[str(i)] = "" if t is None else str(t)

    for part in sorted(run.path.glob("part-*.parquet")):
        want = ids - got.keys()
        if not want:
            break
        try:
            take(pq.read_table(part, columns=["id", "text"]), want)
        except (OSError, KeyError, pa.ArrowException):
            continue
    missing = ids - got.keys()
    if not missing:
        return got, ""
    try:
        from thresher.config import InputSpec
        from thresher.io.readers import plan_shards, read_shard

        spec = InputSpec.model_validate(run.manifest["job"]["input"])
        shards = plan_shards(spec)
        recorded = {int(x["shard"]): x for x in run.manifest.get("inputs", [])}
        need: dict[int, set[str]] = {}
        for sf in sorted((run.path / "_scores").glob("part-*.parquet")):
            i = int(sf.stem.split("-")[1])
            col = pq.read_table(sf, columns=["id"]).column("id")
            hit = set(col.filter(pc.is_in(col, value_set=pa.array(sorted(missing), pa.string()))).to_pylist())
            if hit:
                need[i] = {str(h) for h in hit}
        scanned = 0
        for i in sorted(need, key=lambda k: -len(need[k])):
            shard = shards[i] if i < len(shards) else None
            rec = recorded.get(i, {})
            if shard is None or (rec.get("fingerprint") and rec["fingerprint"] != shard.fingerprint):
                return got, "the input changed since the run: some examples are shown without their text"
            rows = int(rec.get("rows") or shard.rows or 0)
            if scanned + rows > MAX_EXAMPLE_SCAN_ROWS:
                break
            scanned += rows
            for rb in read_shard(shard, spec):
                want = need[i] - got.keys()
                if not want:
                    break
                take(rb.good, want)
    except Exception as exc:  # the input moved, is in memory only, ...: the page still renders
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        return got, f"the input could not be read again ({type(exc).__name__}: {first}): examples without text"
    if ids - got.keys():
        return got, "some inputs were too large to scan again: those examples are shown without their text"
    return got, ""


def _snippet(text: str | None) -> str:
    if text is None:
        return "<i>text not available</i>"
    flat = " ".join(text.split())
    return esc(flat[:EXAMPLE_CHARS] + ("…" if len(flat) > EXAMPLE_CHARS else ""))


def _doc_cell(pick: tuple[str, float, str] | None, texts: dict[str, str]) -> str:
    if pick is None:
        return '<td class="doc">–</td>'
    doc_id, value, status = pick
    return (f'<td class="doc"><span class="docid">{esc(doc_id)} · {esc(fmt(value))}'
            f'{"" if status in ("selected", "not_selected") else " · " + esc(status)}</span><br>'
            f"{_snippet(texts.get(doc_id))}</td>")


def examples_section(runs: list[RunData]) -> Section | None:
    """A few documents per score decile, selected against not selected (text truncated, escaped)."""
    plan: list[tuple[RunData, str, list[dict[str, Any]]]] = []
    for r in runs[:MAX_EXAMPLE_RUNS]:
        for c in informative_columns(r, cap=MAX_EXAMPLE_COLUMNS):
            rows = decile_examples(r, c)
            if rows:
                plan.append((r, c, rows))
    if not plan:
        return None
    parts = [f"<p class='note'>For the first {min(len(runs), MAX_EXAMPLE_RUNS)} run(s) and up to "
             f"{MAX_EXAMPLE_COLUMNS} of their most informative score columns: deciles 1, 3, 5, 8 and 10 of the pool "
             f"(by the column's value), each with the selected and the not-selected document nearest the decile's "
             f"median; id · value, then the first {EXAMPLE_CHARS} characters. Click a run to open it.</p>"]
    for r in [r for r in runs[:MAX_EXAMPLE_RUNS] if any(p[0] is r for p in plan)]:
        mine = [(c, rows) for rr, c, rows in plan if rr is r]
        ids = {pick[0] for _, rows in mine for row in rows for k in ("selected", "not") if (pick := row.get(k))}
        texts, note = fetch_texts(r, ids)
        first = not parts[1:]
        parts.append(f"<details{' open' if first else ''}><summary>{esc(r.name)}: "
                     f"{', '.join(esc(c) for c, _ in mine)}</summary>"
                     + (f"<p class='note'>{esc(note)}</p>" if note else ""))
        for c, rows in mine:
            body = "".join(
                f"<tr><td>D{row['decile']}</td><td class='range'>{esc(fmt(row['lo']))} – {esc(fmt(row['hi']))}</td>"
                f"<td>{row['docs']:,}</td><td>{100 * row['share']:.0f}%</td>"
                f"{_doc_cell(row.get('selected'), texts)}{_doc_cell(row.get('not'), texts)}</tr>" for row in rows)
            parts.append(f"<h4>{esc(c)}</h4><table class='examples'><thead><tr><th>decile</th><th>range</th>"
                         f"<th>docs</th><th>selected</th><th>a selected document</th><th>a document not selected"
                         f"</th></tr></thead><tbody>{body}</tbody></table>")
        parts.append("</details>")
    return Section("Example documents per score decile", "".join(parts))


def cluster_section(runs: list[RunData]) -> Section | None:
    rows, figs = [], []
    for i, r in enumerate(runs[:MAX_RUN_FIGURES]):
        for j, col in enumerate(r.cluster_columns):
            st = cluster_stats(r, col)
            rows.append([r.name, col, st["clusters"], f"{100 * st['covered']:.1f}%", st["median_fraction"]])
            figs.append(Figure(f"clusters-{i}-{j}", f"Cluster coverage: {r.name} ({col})",
                               plots.cluster_coverage(st["total"], st["selected"], col, ids=st["ids"])))
    if not rows:
        return None
    return Section("Cluster coverage", table(["run", "column", "clusters", "covered (≥1 selected)",
                                              "median selected fraction"], rows), figs)


def reward_section(runs: list[RunData]) -> Section | None:
    curves = {}
    for r in runs:
        stats = r.manifest["selection"].get("selector_stats") or {}
        if stats.get("reward_curve"):
            curves[r.name] = stats["reward_curve"]
    if not curves:
        return None
    rows = []
    for r in runs:
        st = r.manifest["selection"].get("selector_stats") or {}
        if "reward_curve" in st:
            rows.append([r.name, st.get("lam"), st.get("diversity"), st.get("objective"),
                         st.get("objective_quality_topk"), st.get("seconds")])
    return Section("DATAMASK", table(["run", "lam", "diversity", "objective", "objective of quality top-k",
                                      "seconds"], rows),
                   [Figure("reward-curve", "DATAMASK reward curve", plots.reward_curves(curves),
                           "mean set objective of the sampled masks during optimisation")])


def comparison_section(runs: list[RunData]) -> Section | None:
    if len(runs) < 2:
        return None
    names = [r.name for r in runs]
    ids = [set(r.frame.loc[r.selected, "id"].astype(str)) for r in runs]
    k = len(runs)
    mat = np.eye(k)
    for i, j in combinations(range(k), 2):
        mat[i, j] = mat[j, i] = jaccard(ids[i], ids[j])
    sec = Section("Comparison of runs", budget_note(runs).replace('id="budgets-differ"', ""))
    sec.html += "<h3>Overlap (Jaccard of selected ids)</h3>" + table(
        ["run"] + names, [[n] + [float(x) for x in mat[i]] for i, n in enumerate(names)])
    sec.figures.append(Figure("jaccard", "Overlap between runs", plots.jaccard_heatmap(names, mat)))

    common = [c for c in runs[0].score_columns if all(c in r.score_columns for r in runs[1:])]
    pick: list[str] = []
    for r in runs:
        pick += [c for c in informative_columns(r) if c in common and c not in pick]
    pick = pick[:MAX_HISTOGRAMS]
    if pick:
        pm = np.array([[np.nanmean(r.frame.loc[r.pool, c].to_numpy(float, na_value=np.nan)) for c in pick]
                       for r in runs])
        ps = np.array([[np.nanstd(r.frame.loc[r.pool, c].to_numpy(float, na_value=np.nan)) for c in pick]
                       for r in runs])
        sm = np.array([[np.nanmean(r.frame.loc[r.selected, c].to_numpy(float, na_value=np.nan))
                        if r.selected.any() else np.nan for c in pick] for r in runs])
        sec.html += "<h3>Score means of each selection</h3>" + table(
            ["column", "pool (run 1)"] + names, [[c, pm[0, j]] + list(sm[:, j]) for j, c in enumerate(pick)])
        sec.figures.append(Figure("score-means", "Score means per run", plots.score_means(names, pick, pm, ps, sm)))

        for param in ("budget", "lam"):
            vals = [r.selector.get(param) for r in runs]
            if all(v is not None for v in vals) and len(set(vals)) > 1 and \
                    len({r.selector.get("type") for r in runs}) == 1:
                series = {c: list(sm[:, j]) for j, c in enumerate(pick[:4])}
                shares = [r.manifest["counts"]["selected"] / max(r.manifest["counts"]["input_rows"], 1) for r in runs]
                sec.html += f"<h3>Effect of {esc(param)}</h3>" + table(
                    [param, "run", "selected share"] + pick[:4],
                    [[v, r.name, s] + [sm[i, j] for j in range(min(4, len(pick)))]
                     for i, (v, r, s) in enumerate(zip(vals, runs, shares))])
                sec.figures.append(Figure(f"sweep-{param}", f"Effect of {param}",
                                          plots.sweep(param, [float(v) for v in vals], series,
                                                      "mean score of the selection")))
    return sec


def bench_section(b: BenchData) -> Section:
    res = b.results
    summary = res["summary"]
    budgets = sorted({s["budget"] for s in summary if s["method"] != "full"})
    methods = [m for m in res["methods"] if m != "full"]
    means = np.full((len(budgets), len(methods)), np.nan)
    stds = np.full_like(means, np.nan)
    for s in summary:
        if s["method"] in methods and s["budget"] in budgets:
            i, j = budgets.index(s["budget"]), methods.index(s["method"])
            means[i, j], stds[i, j] = s["loss_mean"], s["loss_std"]
    ref = {f"full data ({s['loss_mean']:.3f})": s["loss_mean"] for s in summary if s["method"] == "full"}
    rows = [[s["method"], s["budget"], f"{s['loss_mean']:.4f} ± {s['loss_std']:.4f}",
             "–" if s.get("diff_mean") is None else f"{s['diff_mean']:+.4f} ± {s['diff_std']:.4f}",
             s.get("wins", "–"), s["junk_frac"], s["dup_frac"], s["docs"]] for s in summary]
    cfg = res.get("config", {})
    text = (f"<p>Pool: {fmt(cfg.get('pool_docs'))} documents; {len(res.get('seeds', []))} seeds; every "
            f"selection trained for the same {fmt(cfg.get('train_tokens'))} tokens. Differences are paired per seed "
            f"against random at the same budget (negative = lower loss than random).</p>")
    sec = Section(f"Selection benchmark: {b.name}", text + table(
        ["method", "budget", "held-out loss", "Δ vs random", "wins vs random", "junk frac", "dup frac", "docs"],
        rows))
    sec.figures.append(Figure("heldout-loss", "Held-out loss per method",
                              plots.heldout_loss([f"budget {x:g}" for x in budgets], methods, means, stds, ref)))
    labels = [f"{s['method']} @ {s['budget']:g}" for s in summary]
    junk = [s["junk_frac"] for s in summary]
    dup = [s["dup_frac"] for s in summary]
    sec.figures.append(Figure("composition", "What each selection holds", plots.stacked_fractions(
        labels, {"junk": junk, "duplicate": dup, "clean": [max(0.0, 1 - a - b) for a, b in zip(junk, dup)]},
        "Planted junk and near-duplicates in each selection")))
    curves = {f"{r['method']} @ {r['budget']:g}": r["stats"]["reward_curve"] for r in res.get("runs", [])
              if r.get("seed") == res["seeds"][0] and (r.get("stats") or {}).get("reward_curve")}
    if curves:
        sec.figures.append(Figure("bench-reward-curve", "DATAMASK reward curves (first seed)",
                                  plots.reward_curves(curves)))
    return sec


def build_report(items: list[RunData | BenchData]) -> list[Section]:
    """All sections for these runs, in reading order."""
    unique_names(items)
    runs = [r for r in items if isinstance(r, RunData)]
    benches = [b for b in items if isinstance(b, BenchData)]
    sections: list[Section] = []
    for b in benches:
        sections.append(bench_section(b))
    if runs:
        sections += [overview(runs), counts_section(runs), histogram_section(runs)]
        for s in (examples_section(runs), cluster_section(runs), reward_section(runs), comparison_section(runs)):
            if s is not None:
                sections.append(s)
    return sections


# -- writing ----------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1180px;color:#212529;
padding:0 16px}
h1{font-size:1.6em;margin-bottom:4px} h2{border-bottom:2px solid #dee2e6;padding-bottom:4px;margin-top:32px}
h3{font-size:1.05em;margin:18px 0 6px}
table{border-collapse:collapse;margin:8px 0 12px;font-size:0.85em}
th,td{border:1px solid #dee2e6;padding:3px 8px;text-align:right} th{background:#f1f3f5}
td:first-child,th:first-child{text-align:left}
figure{margin:12px 0} figure img{max-width:100%;border:1px solid #e9ecef}
figcaption{font-size:0.8em;color:#495057} .note,.meta{font-size:0.85em;color:#495057}
nav a{margin-right:12px}
.warn{background:#fff4e6;border-left:4px solid #e8590c;padding:6px 12px;margin:8px 0;font-size:0.9em}
.warn ul{margin:4px 0 2px;padding-left:20px}
h4{font-size:0.95em;margin:14px 0 4px;font-family:ui-monospace,monospace}
table.examples td.doc{text-align:left;vertical-align:top;max-width:440px;font-size:0.95em;line-height:1.3}
table.examples td{vertical-align:top} table.examples th{text-align:left} table.examples td.range{white-space:nowrap}
.docid{color:#495057;font-family:ui-monospace,monospace;font-size:0.9em}
details{margin:6px 0} summary{cursor:pointer;font-weight:600;margin:10px 0 4px}
"""

CHECK_JS = """
(function () {
  var errors = [];
  function note(msg) { errors.push(String(msg)); }
  window.addEventListener('error', function (e) {
    if (e.target && e.target !== window && e.target.tagName) { note('failed to load ' + e.target.tagName); }
    else { note(e.message || 'script error'); }
  }, true);
  window.addEventListener('unhandledrejection', function (e) { note('unhandled rejection: ' + e.reason); });
  window.addEventListener('load', function () {
    var imgs = document.images, bad = [];
    for (var i = 0; i < imgs.length; i++) {
      var im = imgs[i];
      if (!(im.complete && im.naturalWidth > 0)) { bad.push(im.getAttribute('data-name') || String(i)); }
    }
    var b = document.body;
    b.setAttribute('data-images-total', String(imgs.length));
    b.setAttribute('data-images-bad', bad.join(','));
    b.setAttribute('data-images-ok', bad.length === 0 && imgs.length > 0 ? 'true' : 'false');
    b.setAttribute('data-errors', errors.join(' | '));
    b.setAttribute('data-checked', 'true');
  });
})();
"""


def render_html(sections: list[Section], title: str, subtitle: str = "") -> str:
    """The whole page as one string; images are inline data URIs."""
    from thresher.version import __version__

    nav = "".join(f'<a href="#s{i}">{esc(s.title)}</a>' for i, s in enumerate(sections))
    body = []
    for i, s in enumerate(sections):
        figs = "".join(
            f'<figure><img data-name="{esc(f.name)}" alt="{esc(f.title)}" '
            f'src="data:image/png;base64,{base64.b64encode(f.png).decode("ascii")}">'
            f"<figcaption>{esc(f.title)}{(': ' + esc(f.caption)) if f.caption else ''}</figcaption></figure>"
            for f in s.figures)
        body.append(f'<section id="s{i}"><h2>{esc(s.title)}</h2>{s.html}{figs}</section>')
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<style>{CSS}</style><script>{CHECK_JS}</script></head><body>"
            f"<h1>{esc(title)}</h1><p class=\"meta\">{esc(subtitle)} · thresher {esc(__version__)}</p>"
            f"<nav>{nav}</nav>{''.join(body)}</body></html>\n")


def write_report(paths: list[str | Path], out: str | Path | None = None) -> Path:
    """Write the report of `paths` to `out` and its PNGs next to it.

    The default is FIRST/_report/report.html: inside the output folder but, like everything there
    that is not a selected row, under a `_` name, so the folder stays readable as a dataset.
    """
    if not paths:
        raise JobError("report: give at least one output folder")
    items = [load_run(p) for p in paths]
    out_path = Path(out) if out is not None else Path(paths[0]) / "_report" / "report.html"
    sections = build_report(items)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    for s in sections:
        for f in s.figures:
            write_bytes_atomic(f.png, out_path.parent / f"{f.name}.png", fsync=False)
    title = "thresher report: " + ", ".join(i.name for i in items)
    subtitle = "; ".join(str(Path(p).resolve()) for p in paths)
    write_text_atomic(render_html(sections, title, subtitle), out_path)
    return out_path
