"""Matplotlib (Agg) figures for `thresher report`: each function returns PNG bytes.

The functions take plain numbers (numpy arrays, dicts), never output folders, so the
notebook and the benchmark can call them directly. Figures are small and use one style.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display, the same output everywhere
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

POOL_COLOR = "#9aa5b1"
SEL_COLOR = "#d9480f"
PALETTE = ["#1c7ed6", "#d9480f", "#2b8a3e", "#862e9c", "#e67700", "#0b7285", "#c2255c", "#5f3dc4"]
DPI = 100


def to_png(fig: plt.Figure, tight: bool = True) -> bytes:
    """Render a figure to PNG bytes and close it.

    The saved area is the drawn area (`bbox_inches="tight"`), so no tick label, axis label or
    legend outside the axes is ever cut off; `tight` also runs tight_layout first (spacing
    between panels)."""
    buf = io.BytesIO()
    if tight:
        fig.tight_layout()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.08)
    plt.close(fig)
    return buf.getvalue()


HEAVY_RATIO = 100.0  # max / median above this: a heavy tail
HEAVY_Q99_RATIO = 20.0  # or the 99th percentile / median above this (one outlier is not a tail)


def _skew(v: np.ndarray) -> float:
    sd = float(v.std())
    return float(np.mean(((v - v.mean()) / sd) ** 3)) if sd > 0 else 0.0


def _heavy(v: np.ndarray) -> bool:
    med = float(np.median(v))
    return med > 0 and (float(v.max()) / med > HEAVY_RATIO or float(np.quantile(v, 0.99)) / med > HEAVY_Q99_RATIO)


def axis_scale(values: np.ndarray) -> str:
    """`linear`, `log` or `symlog` for a score's histogram axis.

    Heavy-tailed non-negative scores (max/median > 100, or 99th percentile/median > 20: e.g.
    perplexities) get a log axis: `log` when every value is positive, `symlog` (linear near
    zero) when some are zero and the positive ones are heavy-tailed. Columns with few distinct
    values (flags, small counts) and signed columns stay linear."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size < 20 or np.unique(v).size < 10 or float(v.min()) < 0:
        return "linear"
    if float(v.min()) > 0:
        return "log" if _heavy(v) else "linear"
    pos = v[v > 0]
    return "symlog" if pos.size >= 10 and (_heavy(pos) or _heavy(v)) else "linear"


def _bins(both: np.ndarray, scale: str, n: int = 30) -> tuple[np.ndarray, float]:
    """Bin edges for a histogram on `scale` (and the symlog linear threshold, else 0)."""
    if both.size == 0:
        return np.linspace(0.0, 1.0, n + 1), 0.0
    if scale == "log":
        lo, hi = float(both.min()), float(both.max())
        return np.geomspace(lo, hi if hi > lo else lo * 10, n + 1), 0.0
    if scale == "symlog":
        pos = both[both > 0]
        c = float(np.quantile(pos, 0.05)) if pos.size else 1.0
        hi = float(both.max())
        t = np.linspace(0.0, np.log10(1 + hi / c), n + 1)
        return c * (10 ** t - 1), c
    # linear: the central 99%, so one outlier does not squash the rest into one bar
    lo, hi = float(np.quantile(both, 0.005)), float(np.quantile(both, 0.995))
    if hi <= lo:  # the central 99% is one value (a mostly-zero column): the whole range then
        lo, hi = float(both.min()), float(both.max())
    if hi <= lo:
        lo, hi = lo - 0.5, lo + 0.5
    return np.linspace(lo, hi, n + 1), 0.0


def counts_bar(counts: Mapping[str, int]) -> bytes:
    """Horizontal bars of one run: selected, not selected / rejected by reason."""
    return counts_grouped(["run"], [counts])


def counts_grouped(runs: Sequence[str], counts: Sequence[Mapping[str, int]]) -> bytes:
    """Grouped horizontal bars: per status / reason, one bar per run, side by side.

    `counts[i]` maps status/reason -> documents for run `runs[i]`; a reason a run lacks is 0."""
    labels: list[str] = []
    for d in counts:
        labels += [k for k in d if k not in labels]
    n_runs = max(len(runs), 1)
    height = 0.8 / n_runs
    longest = max((len(k) for k in labels), default=0)  # long reasons: a wider figure, not a thinner plot
    fig, ax = plt.subplots(figsize=(7.5 + 0.06 * max(0, longest - 20), max(1.6, (0.32 * n_runs + 0.2) * len(labels) + 1.1)))
    y = np.arange(len(labels))
    top = max([max(d.values(), default=0) for d in counts] + [1])
    for i, (run, d) in enumerate(zip(runs, counts)):
        values = [int(d.get(k, 0)) for k in labels]
        pos = y + (i - (n_runs - 1) / 2) * height
        ax.barh(pos, values, height=height * 0.95, color=PALETTE[i % len(PALETTE)] if n_runs > 1 else
                [SEL_COLOR if k == "selected" else ("#c92a2a" if k.startswith("rejected") else POOL_COLOR)
                 for k in labels], label=run)
        for yi, v in zip(pos, values):
            ax.text(v, yi, f" {v:,}", va="center", fontsize=7 if n_runs > 1 else 8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("documents")
    ax.set_xlim(0, top * 1.2)
    ax.set_title("Where every input row went" + (" (runs side by side)" if n_runs > 1 else ""))
    if n_runs > 1:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return to_png(fig)


def _integer_valued(v: np.ndarray) -> bool:
    return bool(v.size) and bool(np.all(v == np.round(v)))


def score_histograms(columns: Sequence[tuple[str, np.ndarray, np.ndarray]], ncols: int = 3) -> bytes:
    """One panel per score column: density of the pool against the selection.

    `columns` holds (name, pool values, selected values); non-finite values are dropped.
    Heavy-tailed columns get a log x axis (`axis_scale`), whole-number columns one bin per
    value (when their range is small), and a column that is mostly zeros says how many.
    """
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator, NullFormatter

    n = len(columns)
    if n == 0:
        raise ValueError("score_histograms: no columns to plot")
    ncols = min(ncols, n)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 2.9 * nrows), squeeze=False)
    for ax, (name, pool, sel) in zip(axes.flat, columns):
        pool = pool[np.isfinite(pool)]
        sel = sel[np.isfinite(sel)]
        both = np.concatenate([pool, sel])
        scale = axis_scale(pool if pool.size else both)
        if scale != "linear" and both.size and float(both.min()) < 0:
            scale = "linear"
        bins, linthresh = _bins(both, scale)
        if scale == "linear" and both.size:
            if _integer_valued(both) and bins[-1] - bins[0] <= 60:
                lo_i, hi_i = np.floor(bins[0]), np.ceil(bins[-1])
                bins = np.arange(lo_i - 0.5, hi_i + 1.0, 1.0)  # one bin per whole number, no empty combs
                ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
            else:
                ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
        lo, hi = float(bins[0]), float(bins[-1])
        pool, sel = np.clip(pool, lo, hi), np.clip(sel, lo, hi)
        if scale == "linear":
            kw: dict = {"density": True}
            pool_kw, sel_kw = kw, kw
        else:  # share of documents per (log-spaced) bin: a density would vanish in the tail
            pool_kw = {"weights": np.full(pool.size, 1.0 / max(pool.size, 1))}
            sel_kw = {"weights": np.full(sel.size, 1.0 / max(sel.size, 1))}
        ax.hist(pool, bins=bins, histtype="stepfilled", color=POOL_COLOR, alpha=0.8, **pool_kw)
        if sel.size:
            ax.hist(sel, bins=bins, histtype="step", linewidth=1.8, color=SEL_COLOR, **sel_kw)
        if scale == "log":
            ax.set_xscale("log")
        elif scale == "symlog":
            ax.set_xscale("symlog", linthresh=linthresh)
        if scale != "linear":
            ax.xaxis.set_minor_formatter(NullFormatter())  # labelled decades only: no overlapping minor labels
        notes = [f"pool {pool.size:,}, selected {sel.size:,}"]
        zeros = float(np.mean(pool == 0)) if pool.size else 0.0
        if zeros >= 0.5:
            notes.append(f"{100 * zeros:.0f}% of pool = 0")
        if scale != "linear":
            notes.append(f"{scale} x, share per bin")
        ax.set_title(f"{name}\n({'; '.join(notes)})", fontsize=8.5)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.legend(handles=[Patch(color=POOL_COLOR, alpha=0.8, label="pool (valid documents)"),
                        Patch(facecolor="none", edgecolor=SEL_COLOR, linewidth=1.8, label="selected")],
               loc="upper center", ncol=2, fontsize=8, frameon=False, bbox_to_anchor=(0.5, 1.0))
    # fixed spacing (tight_layout would draw the 9-panel figure twice); the tight bbox of
    # to_png keeps the outer labels
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.08 / nrows, top=1 - 0.22 / nrows, wspace=0.28,
                        hspace=0.62)
    return to_png(fig, tight=False)


def cluster_coverage(per_cluster_total: np.ndarray, per_cluster_selected: np.ndarray, column: str,
                     ids: Sequence[int] | None = None) -> bytes:
    """Left: clusters by size with their selected documents side by side; right: histogram of
    the per-cluster selected fraction.

    `ids` (the cluster ids, in the order of the counts) label the bars when there are at most
    40 clusters; otherwise the x axis is the size rank. Ticks are whole numbers either way."""
    from matplotlib.ticker import MaxNLocator

    total = np.asarray(per_cluster_total, dtype=float)
    sel = np.asarray(per_cluster_selected, dtype=float)
    keep = total > 0
    total, sel = total[keep], sel[keep]
    id_arr = np.asarray(ids)[keep] if ids is not None else None
    frac = sel / total
    covered = float((sel > 0).mean()) if total.size else 0.0
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.4), gridspec_kw={"width_ratios": [1.6, 1]})
    order = np.argsort(-total, kind="stable")
    x = np.arange(total.size)
    if total.size <= 40:  # few clusters: documents and selected side by side, labelled by id
        w = 0.4
        a1.bar(x - w / 2, total[order], width=w, color=POOL_COLOR, label="documents")
        a1.bar(x + w / 2, sel[order], width=w, color=SEL_COLOR, label="selected")
        if id_arr is not None:
            a1.set_xticks(x, [str(int(i)) for i in id_arr[order]], fontsize=7,
                          rotation=90 if total.size > 20 else 0)
            a1.set_xlabel(f"{column} (cluster id, largest first)")
        else:
            a1.xaxis.set_major_locator(MaxNLocator(integer=True))
            a1.set_xlabel("cluster rank (largest first)")
    else:  # many clusters: selected drawn inside each cluster's bar (a part of it)
        a1.bar(x, total[order], color=POOL_COLOR, width=1.0, label="documents")
        a1.bar(x, sel[order], color=SEL_COLOR, width=1.0, label="selected (part of the bar)")
        a1.xaxis.set_major_locator(MaxNLocator(integer=True))
        a1.set_xlabel("cluster rank (largest first)")
    if total.size and float(np.median(total)) > 0 and float(total.max()) / float(np.median(total)) > HEAVY_RATIO:
        a1.set_yscale("log")
    a1.yaxis.set_major_locator(MaxNLocator(integer=True))
    a1.set_ylabel("documents")
    a1.set_title(f"{column}: {100 * covered:.1f}% of {total.size} clusters covered", fontsize=9)
    a1.legend(fontsize=7)
    a2.hist(frac, bins=np.linspace(0, 1, 21), color=SEL_COLOR)
    a2.yaxis.set_major_locator(MaxNLocator(integer=True))
    a2.set_xlabel("fraction of the cluster selected")
    a2.set_ylabel("clusters")
    a2.set_title("Per-cluster selection", fontsize=9)
    return to_png(fig)


def reward_curves(curves: Mapping[str, Sequence[float]]) -> bytes:
    """DATAMASK mean objective of the sampled masks per (down-sampled) step, one line per run."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for i, (label, curve) in enumerate(curves.items()):
        ax.plot(np.arange(len(curve)), curve, color=PALETTE[i % len(PALETTE)], label=label)
    ax.set_xlabel("optimisation progress (down-sampled steps)")
    ax.set_ylabel("mean objective of sampled masks")
    ax.set_title("DATAMASK reward curve")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return to_png(fig)


def jaccard_heatmap(names: Sequence[str], matrix: np.ndarray) -> bytes:
    """Pairwise Jaccard overlap of the selected ids of several runs."""
    k = len(names)
    fig, ax = plt.subplots(figsize=(1.1 * k + 2.5, 0.9 * k + 1.6))
    im = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(k), names, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if matrix[i, j] < 0.6 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title("Jaccard overlap of selected ids")
    return to_png(fig)


def score_means(runs: Sequence[str], columns: Sequence[str], pool_mean: np.ndarray, pool_std: np.ndarray,
                selected: np.ndarray) -> bytes:
    """Per score column, the selection mean of each run as a z-score against that run's pool.

    All three arrays are (runs, columns).
    """
    n_runs, n_cols = selected.shape
    z = (selected - pool_mean) / np.where(pool_std > 0, pool_std, 1.0)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * n_cols + 2), 3.4))
    width = 0.8 / max(n_runs, 1)
    x = np.arange(n_cols)
    for i, run in enumerate(runs):
        ax.bar(x + (i - (n_runs - 1) / 2) * width, z[i], width=width, color=PALETTE[i % len(PALETTE)], label=run)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, columns, rotation=25, ha="right", fontsize=7)
    ax.set_ylabel("selected mean − pool mean (pool std)")
    ax.set_title("Score means of each run's selection")
    ax.legend(fontsize=7)
    return to_png(fig)


def sweep(param: str, values: Sequence[float], series: Mapping[str, Sequence[float]], ylabel: str) -> bytes:
    """A selection statistic as a function of one selector parameter (budget, lam, ...)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    order = np.argsort(np.asarray(values, dtype=float))
    xs = np.asarray(values, dtype=float)[order]
    for i, (label, ys) in enumerate(series.items()):
        ax.plot(xs, np.asarray(ys, dtype=float)[order], marker="o", color=PALETTE[i % len(PALETTE)], label=label)
    ax.set_xlabel(param)
    ax.set_ylabel(ylabel)
    ax.set_title(f"Effect of {param}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return to_png(fig)


def heldout_loss(groups: Sequence[str], methods: Sequence[str], means: np.ndarray, stds: np.ndarray,
                 reference: Mapping[str, float] | None = None) -> bytes:
    """Held-out loss per method (bars, error bars = std over seeds), grouped by budget.

    `means` and `stds` are (groups, methods) with NaN where a method did not run;
    `reference` draws horizontal lines (e.g. full data).
    """
    n_g, n_m = means.shape
    fig, ax = plt.subplots(figsize=(max(6.5, 1.6 * n_g * n_m / 2 + 3), 3.6))
    width = 0.8 / max(n_m, 1)
    x = np.arange(n_g)
    lo_hi = np.concatenate([means - np.nan_to_num(stds), means + np.nan_to_num(stds)]).ravel()
    finite = lo_hi[np.isfinite(lo_hi)]
    for j, m in enumerate(methods):
        ax.bar(x + (j - (n_m - 1) / 2) * width, np.nan_to_num(means[:, j], nan=0.0), width=width,
               yerr=np.nan_to_num(stds[:, j]), capsize=3, color=PALETTE[j % len(PALETTE)], label=m)
    for i, (label, v) in enumerate((reference or {}).items()):
        ax.axhline(v, color="black", linestyle="--" if i == 0 else ":", linewidth=1, label=label)
        finite = np.append(finite, v)
    if finite.size:
        lo, hi = float(finite.min()), float(finite.max())
        pad = max(0.05 * (hi - lo), 0.01)
        ax.set_ylim(lo - pad, hi + 4 * pad)
    ax.set_xticks(x, groups)
    ax.set_ylabel("held-out loss (nats/token)")
    ax.set_title("Held-out loss per method (mean ± std over seeds; lower is better)")
    ax.legend(fontsize=7, ncol=2)
    return to_png(fig)


def stacked_fractions(labels: Sequence[str], parts: Mapping[str, Sequence[float]], title: str) -> bytes:
    """Stacked horizontal bars of fractions (e.g. junk / duplicate / clean share of each selection)."""
    fig, ax = plt.subplots(figsize=(7, 0.38 * len(labels) + 1.3))
    left = np.zeros(len(labels))
    y = np.arange(len(labels))
    colors = {"junk": "#c92a2a", "duplicate": "#e67700", "clean": "#2b8a3e"}
    for i, (name, vals) in enumerate(parts.items()):
        v = np.asarray(vals, dtype=float)
        ax.barh(y, v, left=left, color=colors.get(name, PALETTE[i % len(PALETTE)]), label=name)
        left += v
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of the selection")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return to_png(fig)
