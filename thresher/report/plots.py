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
    """Render a figure to PNG bytes and close it."""
    buf = io.BytesIO()
    if tight:
        fig.tight_layout()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return buf.getvalue()


def counts_bar(counts: Mapping[str, int]) -> bytes:
    """Horizontal bars: selected, not selected / rejected by reason."""
    labels = list(counts)
    values = [counts[k] for k in labels]
    colors = [SEL_COLOR if k == "selected" else ("#c92a2a" if k.startswith("rejected") else POOL_COLOR)
              for k in labels]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(labels) + 1.0))
    y = np.arange(len(labels))
    ax.barh(y, values, color=colors)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    for yi, v in zip(y, values):
        ax.text(v, yi, f" {v:,}", va="center", fontsize=8)
    ax.set_xlabel("documents")
    ax.set_xlim(0, max(values + [1]) * 1.18)
    ax.set_title("Where every input row went")
    return to_png(fig)


def score_histograms(columns: Sequence[tuple[str, np.ndarray, np.ndarray]], ncols: int = 3) -> bytes:
    """One panel per score column: density of the pool against the selection.

    `columns` holds (name, pool values, selected values); non-finite values are dropped.
    """
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
        # bins over the central 99% so one outlier does not squash the rest into one bar
        lo, hi = (float(np.quantile(both, 0.005)), float(np.quantile(both, 0.995))) if both.size else (0.0, 1.0)
        if hi <= lo:
            hi = lo + 1.0
        bins = np.linspace(lo, hi, 31)
        pool, sel = np.clip(pool, lo, hi), np.clip(sel, lo, hi)
        ax.hist(pool, bins=bins, density=True, histtype="stepfilled", color=POOL_COLOR, alpha=0.8, label=f"pool (n={pool.size:,})")
        if sel.size:
            ax.hist(sel, bins=bins, density=True, histtype="step", linewidth=1.8, color=SEL_COLOR,
                    label=f"selected (n={sel.size:,})")
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    # fixed margins: tight_layout would draw the 9-panel figure twice
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.08 / nrows, top=1 - 0.1 / nrows, wspace=0.25,
                        hspace=0.45)
    return to_png(fig, tight=False)


def cluster_coverage(per_cluster_total: np.ndarray, per_cluster_selected: np.ndarray, column: str) -> bytes:
    """Left: clusters by size, selected share; right: histogram of the per-cluster selected fraction."""
    total = np.asarray(per_cluster_total, dtype=float)
    sel = np.asarray(per_cluster_selected, dtype=float)
    keep = total > 0
    total, sel = total[keep], sel[keep]
    frac = sel / total
    covered = float((sel > 0).mean()) if total.size else 0.0
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.2))
    order = np.argsort(-total, kind="stable")
    x = np.arange(total.size)
    a1.bar(x, total[order], color=POOL_COLOR, width=1.0, label="documents")
    a1.bar(x, sel[order], color=SEL_COLOR, width=1.0, label="selected")
    a1.set_xlabel("cluster (largest first)")
    a1.set_ylabel("documents")
    a1.set_title(f"{column}: {100 * covered:.1f}% of {total.size} clusters covered", fontsize=9)
    a1.legend(fontsize=7)
    a2.hist(frac, bins=np.linspace(0, 1, 21), color=SEL_COLOR)
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
