"""ICon selection (SPEC 2.4, 2.5): label the ICL-scored sample, learn the labels, pick the top.

Input: the narrow score table with the `icon` scorer's columns (`icon_score`, `icon_phi`,
`icon_sampled`) and, for the default classifier, an embedding column from the score stage.

1. Labels: among sampled rows (non-null `icon_phi`), y = φ(s) >= the (1 - top_k) quantile
   (top_k defaults to the budget, the paper's K = 15%). The first `train_fraction` (90%) of the
   sampled rows in input order (shard, row: the file order the reference code uses) train
   the classifier, the rest evaluate it (held-out AUC in the stats).
2. `classifier: logistic` (default): a standardised logistic-regression probe on the embedding
   column. It scores every row of the pool (`icon_prob` column); the top `budget` by
   probability is selected.
   `classifier: none`: select directly by s among sampled rows (small pools scored in full).

The paper's classifier is a LoRA sequence classifier fine-tuned from the target LLM on the
candidate text. A global step sees no text (only the narrow table), so that variant would be
a per-batch scorer stage after a training step; it is not implemented here, and the linear
probe on the embedding column takes its place.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from thresher.models.icl import top_k_labels
from thresher.selectors.base import BudgetParams, SelectContext, SelectionResult, Selector, take_in_order


class IConSelectorParams(BudgetParams):
    budget: float = Field(0.15, gt=0, le=1, description="fraction of the pool to select (paper: 15%)")
    top_k: float | None = Field(None, gt=0, lt=1, description="label fraction among scored rows (default: budget)")
    prefix: str = Field("icon", description="column prefix of the icon scorer")
    classifier: Literal["logistic", "none"] = "logistic"
    embedding: str = Field("embedding_vector", description="(fixed-size) list<float> column for the probe")
    train_fraction: float = Field(0.9, gt=0, lt=1)
    C: float = Field(1.0, gt=0, description="inverse L2 strength of the logistic regression")
    max_iter: int = Field(1000, gt=0)


def auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC (ties count half); None when one class is absent."""
    labels = np.asarray(labels, bool)
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    s = np.asarray(scores)[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i: j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[labels].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def split_train_eval(n: int, train_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Sequential split: the first round(train_fraction * n) positions train, the rest evaluate."""
    cut = int(round(train_fraction * n))
    return np.arange(cut), np.arange(cut, n)


class IConSelector(Selector):
    """Top budget by a classifier trained on ICL labels (or by the ICL score itself)."""

    name: ClassVar[str] = "icon"
    Params: ClassVar[type[IConSelectorParams]] = IConSelectorParams

    def col(self, suffix: str) -> str:
        return f"{self.params.prefix}_{suffix}" if self.params.prefix else suffix

    def required_columns(self) -> list[str]:
        cols = super().required_columns() + [self.col("score"), self.col("phi")]
        if self.params.classifier == "logistic":
            cols.append(self.params.embedding)
        return cols

    def select(self, table: pa.Table, ctx: SelectContext) -> SelectionResult:
        p = self.params
        n = table.num_rows
        for c in (self.col("score"), self.col("phi")):
            if c not in table.column_names:
                raise KeyError(f"icon selector needs column {c!r} from the icon scorer; available: {sorted(table.column_names)}")
        s = table.column(self.col("score")).to_numpy(zero_copy_only=False).astype(np.float64)
        ph = table.column(self.col("phi")).to_numpy(zero_copy_only=False).astype(np.float64)
        scored = np.flatnonzero(~np.isnan(ph))
        if scored.size < 2:
            raise ValueError(f"icon selector: only {scored.size} rows have an ICL score; raise sample_fraction")
        k = p.top_k if p.top_k is not None else p.budget
        labels, threshold = top_k_labels(ph[scored], k)
        tokens = None
        if p.budget_unit == "tokens":
            tokens = table.column(p.token_column).to_numpy(zero_copy_only=False).astype(np.float64)
        stats: dict = {"scored": int(scored.size), "positives": int(labels.sum()), "label_fraction": k,
                       "phi_threshold": threshold, "classifier": p.classifier}
        columns: dict[str, pa.Array] = {}
        if p.classifier == "none":
            order = scored[np.lexsort((np.arange(scored.size), -s[scored], -ph[scored]))]
        else:
            from thresher.selectors.datamask import embedding_matrix

            emb = embedding_matrix(table, p.embedding).astype(np.float64)
            train, held = split_train_eval(scored.size, p.train_fraction)
            y_train = labels[train]
            if y_train.all() or not y_train.any():
                raise ValueError(f"icon selector: the {train.size} training rows hold a single class; "
                                 "score more rows (sample_fraction) or change top_k")
            prob = fit_probe(emb[scored[train]], y_train, emb, p.C, p.max_iter)
            stats.update(train=int(train.size), eval=int(held.size),
                         train_auc=auc(y_train, prob[scored[train]]),
                         eval_auc=auc(labels[held], prob[scored[held]]) if held.size else None)
            columns[self.col("prob")] = pa.array(prob, pa.float64())
            order = np.lexsort((np.arange(n), -prob))
        selected = take_in_order(order, n, p, ctx, tokens)
        stats["selected"] = int(selected.sum())
        return SelectionResult(selected=selected, columns=columns, stats=stats)


def fit_probe(x: np.ndarray, y: np.ndarray, pool: np.ndarray, C: float, max_iter: int) -> np.ndarray:
    """P(label = 1) for every pool row from a standardised, class-balanced, L2-regularised
    logistic regression (float64 L-BFGS in torch: deterministic, no extra dependency).

    Objective as scikit-learn's: sum_i w_i * logloss_i + ||w||^2 / (2C), bias unpenalised,
    w_i = n / (2 n_class(i)).
    """
    import torch

    mu = x.mean(axis=0)
    sd = x.std(axis=0)
    sd[sd < 1e-12] = 1.0
    xt = torch.from_numpy((x - mu) / sd)
    yt = torch.from_numpy(y.astype(np.float64))
    n_pos = float(y.sum())
    n_neg = float(len(y) - n_pos)
    weights = torch.where(yt > 0, len(y) / (2 * n_pos), len(y) / (2 * n_neg)).double()
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = xt @ w + b
        loss = (weights * torch.nn.functional.binary_cross_entropy_with_logits(logits, yt, reduction="none")).sum()
        loss = loss + (w * w).sum() / (2 * C)
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        z = torch.from_numpy((pool - mu) / sd) @ w + b
        return torch.sigmoid(z).numpy().astype(np.float64)
