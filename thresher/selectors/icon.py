"""ICon selection (SPEC 2.4, 2.5): label the ICL-scored sample, learn the labels, pick the top.

Input: the narrow score table with the `icon` scorer's columns (`icon_score`, `icon_phi`,
`icon_sampled`) and, per classifier, an embedding column or the candidates' text.

1. Labels: among sampled rows (non-null `icon_phi`), y = φ(s) >= the (1 - top_k) quantile
   (top_k defaults to the budget, the paper's K = 15%). The first `train_fraction` (90%) of the
   sampled rows in input order (shard, row: the file order the reference code uses) train
   the classifier, the rest evaluate it (held-out AUC in the stats).
2. A classifier scores every row of the pool (`icon_prob` column); the top `budget` by
   probability is selected.
   `classifier: lora` — the paper's classifier (SPEC 2.5): a 2-label sequence classifier
   fine-tuned with LoRA from the target LLM (the icon scorer's `model`, or `classifier_model`)
   on the templated candidate text (prompt [+ input] + response; the icon scorer's template),
   score = softmax probability of class 1 (see `thresher.selectors.icon_lora`). Training runs
   once, in the select stage; scoring the pool is a map over chunks of rows through the
   engine (`SelectContext.parallel_map`), each carrying the adapter weights as safetensors
   bytes. The adapter is saved as `_selection/icon_lora_adapter.safetensors`. This classifier
   reads the `prompt` and `response` input columns: the select stage reads them again from
   the input, and holds the whole pool's text in the driver's memory.
   `classifier: logistic` (default): a standardised logistic-regression probe on an embedding
   column (cheap, no text, no LLM fine-tuning).
   `classifier: none`: select directly by s among sampled rows (small pools scored in full).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from thresher.common.arrays import embedding_matrix
from thresher.common.atomic import write_bytes_atomic
from thresher.common.templates import ALPACA_TEMPLATE
from thresher.models.icl import top_k_labels
from thresher.selectors.base import BudgetParams, Ranking, SelectContext, SelectionResult, Selector, serial_map


class IConSelectorParams(BudgetParams):
    budget: float = Field(0.15, gt=0, le=1, description="fraction of the pool to select (paper: 15%)")
    top_k: float | None = Field(None, gt=0, lt=1, description="label fraction among scored rows (default: budget)")
    label_by: Literal["score", "phi"] = Field(
        "score", description="rank for the labels: score = s itself (phi is monotone, so this equals phi's "
                             "ranking with its saturated ties broken by s); phi = the reference code's phi quantile, "
                             "where every s beyond +-0.5 ties and can make far more than top_k positive")
    prefix: str = Field("icon", description="column prefix of the icon scorer")
    classifier: Literal["logistic", "lora", "none"] = Field(
        "logistic", description="logistic: probe on an embedding column; lora: LoRA fine-tune of the LLM; none: rank "
                                "by s")
    embedding: str = Field("embedding_vector", description="(fixed-size) list<float> column for the probe")
    train_fraction: float = Field(
        0.9, gt=0, lt=1, description="share of the sampled rows (in input order) the classifier trains on; the rest "
                                     "evaluate it")
    C: float = Field(1.0, gt=0, description="inverse L2 strength of the logistic regression")
    max_iter: int = Field(1000, gt=0, description="logistic regression iterations")
    # classifier: lora (SPEC 2.5 defaults)
    classifier_model: str | None = Field(None, description="lora backbone (default: the icon scorer's model)")
    template: str | None = Field(None, description="lora input template with {prompt} (default: the icon scorer's)")
    lora_r: int = Field(8, gt=0, description="LoRA rank")
    lora_alpha: float = Field(8.0, gt=0, description="LoRA scaling alpha")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout")
    target_modules: list[str] = Field(["q_proj", "v_proj"], min_length=1,
                                      description="LoRA layers (Llama/Qwen: q_proj, v_proj; GPT-2: c_attn)")
    epochs: int = Field(5, gt=0, description="LoRA training epochs")
    lr: float = Field(5e-5, gt=0, description="LoRA learning rate")
    batch_size: int = Field(8, gt=0, description="LoRA training batch size")
    grad_accum: int = Field(16, gt=0, description="gradient accumulation steps")
    warmup_ratio: float = Field(0.03, ge=0, lt=1,
                                description="share of the LoRA steps spent warming up the learning rate")
    weight_decay: float = Field(0.0, ge=0, description="LoRA weight decay")
    max_grad_norm: float | None = Field(1.0, gt=0, description="clip the gradient norm to this; null: no clipping")
    max_length: int = Field(512, gt=1, description="tokens per classifier input (longer texts are truncated)")
    gradient_checkpointing: bool = Field(False, description="trade compute for memory (the paper trains with it)")
    score_chunk_rows: int = Field(2048, gt=0, description="rows per pool-scoring work item")
    max_tokens_per_batch: int | None = Field(None, gt=0, description="padded tokens per scoring batch "
                                                                      "(default 2048 CPU, 32768 GPU)")
    device: str | None = Field(None, description="default: the icon scorer's device, else auto")
    dtype: str | None = Field(None, description="default: the icon scorer's dtype, else auto")
    trust_remote_code: bool | None = Field(None, description="default: the icon scorer's setting, else off")
    pad_token: str | None = Field(None, description="pad token when the tokenizer has none (default: eos)")
    torch_threads: int | None = Field(None, gt=0, description="default: the icon scorer's setting")


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
    """Top budget by a classifier trained on ICL labels (or by the ICL score itself).

    A rank selector: `fit` learns from the ICL-scored rows (a small sample, in shard and row
    order), `rank` scores any rows with what it learned, so the pool is scored shard by shard."""

    name: ClassVar[str] = "icon"
    Params: ClassVar[type[IConSelectorParams]] = IConSelectorParams
    kind = "rank"

    def col(self, suffix: str) -> str:
        return f"{self.params.prefix}_{suffix}" if self.params.prefix else suffix

    def required_columns(self) -> list[str]:
        cols = super().required_columns() + [self.col("score"), self.col("phi")]
        if self.params.classifier == "logistic":
            cols.append(self.params.embedding)
        return cols

    def text_columns(self) -> list[str]:
        return ["prompt", "response"] if self.params.classifier == "lora" else []

    def icon_scorer_spec(self, ctx: SelectContext) -> dict | None:
        """The job's icon scorer whose columns this selector reads (None when not in the context)."""
        for spec in ctx.scorers:
            if spec.get("type") == "icon" and (spec.get("name") or "icon") == self.params.prefix:
                return spec
        return None

    def _scores(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        for c in (self.col("score"), self.col("phi")):
            if c not in table.column_names:
                raise KeyError(f"icon selector needs column {c!r} from the icon scorer; available: {sorted(table.column_names)}")
        s = table.column(self.col("score")).to_numpy(zero_copy_only=False).astype(np.float64)
        ph = table.column(self.col("phi")).to_numpy(zero_copy_only=False).astype(np.float64)
        return s, ph

    def fit_rows(self, table: pa.Table) -> np.ndarray:
        return ~np.isnan(self._scores(table)[1])  # the ICL-scored sample

    def fit(self, rows: pa.Table, ctx: SelectContext) -> tuple[dict, dict]:
        p = self.params
        s, ph = self._scores(rows)
        if rows.num_rows < 2:
            raise ValueError(f"icon selector: only {rows.num_rows} rows have an ICL score; raise sample_fraction")
        k = p.top_k if p.top_k is not None else p.budget
        labels, threshold = top_k_labels(s if p.label_by == "score" else ph, k)
        stats: dict = {"scored": int(rows.num_rows), "positives": int(labels.sum()), "label_fraction": k,
                       "label_by": p.label_by, "label_threshold": threshold, "classifier": p.classifier}
        if p.classifier == "none":
            return {}, stats
        train, held = split_train_eval(rows.num_rows, p.train_fraction)
        y_train = labels[train]
        if y_train.all() or not y_train.any():
            raise ValueError(f"icon selector: the {train.size} training rows hold a single class; "
                             "score more rows (sample_fraction) or change top_k")
        if p.classifier == "lora":
            state = self.train_lora(rows.take(pa.array(train)), y_train, ctx)
            stats["lora"] = state.pop("stats")
        else:
            emb = embedding_matrix(rows, p.embedding).astype(np.float64)
            state = fit_probe_params(emb[train], y_train, p.C, p.max_iter)
        prob = self.probabilities(rows, state)
        stats.update(train=int(train.size), eval=int(held.size), train_auc=auc(y_train, prob[train]),
                     eval_auc=auc(labels[held], prob[held]) if held.size else None)
        return state, stats

    def probabilities(self, table: pa.Table, state: dict) -> np.ndarray:
        """P(label 1) of every row from the fitted classifier."""
        if self.params.classifier == "lora":
            return self.lora_probabilities(table, state)
        return apply_probe(state, embedding_matrix(table, self.params.embedding).astype(np.float64))

    def rank(self, table: pa.Table, ctx: SelectContext, state: dict) -> Ranking:
        if self.params.classifier == "none":
            s, ph = self._scores(table)
            return Ranking([(ph, True), (s, True)], candidates=~np.isnan(ph))
        prob = self.probabilities(table, state)
        return Ranking([(prob, True)], columns={self.col("prob"): pa.array(prob, pa.float64())})

    def select(self, table: pa.Table, ctx: SelectContext) -> SelectionResult:
        return self.rank_select(table, ctx)

    def _lora_parts(self, state_or_ctx: dict) -> tuple[Any, Any, str]:
        from thresher.models.loading import ModelConfig
        from thresher.selectors import icon_lora as il

        p = self.params
        scorer = state_or_ctx.get("scorer") or {}
        ref = p.classifier_model or scorer.get("model")
        if not ref:
            raise ValueError("icon selector (classifier: lora): set classifier_model, or run it in a job with the "
                             f"icon scorer (prefix {p.prefix!r}) whose model it fine-tunes")
        template = p.template or scorer.get("template") or ALPACA_TEMPLATE
        if "{prompt}" not in template:
            raise ValueError("icon selector: template must contain '{prompt}'")
        spec = ModelConfig(
            ref=ref, kind="sequence_classification", device=p.device or scorer.get("device") or "auto",
            dtype=p.dtype or scorer.get("dtype") or "auto",
            trust_remote_code=bool(p.trust_remote_code if p.trust_remote_code is not None
                                   else scorer.get("trust_remote_code", False)),
            torch_threads=p.torch_threads or scorer.get("torch_threads"),
            pad_token=p.pad_token or scorer.get("pad_token"))
        lora = il.LoraSpec(r=p.lora_r, alpha=p.lora_alpha, dropout=p.lora_dropout,
                           target_modules=tuple(p.target_modules))
        return spec, lora, template

    def _texts(self, table: pa.Table, template: str) -> list[str]:
        missing = [c for c in ("prompt", "response") if c not in table.column_names]
        if missing:
            raise KeyError(f"icon selector (classifier: lora) needs the text columns {missing}; the select stage "
                           "adds them for instruction data (input.prompt_column / input.response_column)")
        return [template.format(prompt=q or "") + (a or "")
                for q, a in zip(table.column("prompt").to_pylist(), table.column("response").to_pylist())]

    def train_lora(self, train: pa.Table, y_train: np.ndarray, ctx: SelectContext) -> dict:
        """Train the LoRA classifier on the training rows; the state carries the adapter bytes."""
        from thresher.selectors import icon_lora as il

        p = self.params
        scorer = self.icon_scorer_spec(ctx) or {}
        spec, lora, template = self._lora_parts({"scorer": scorer})
        settings = il.TrainSettings(epochs=p.epochs, lr=p.lr, batch_size=p.batch_size, grad_accum=p.grad_accum,
                                    warmup_ratio=p.warmup_ratio, weight_decay=p.weight_decay,
                                    max_grad_norm=p.max_grad_norm, max_length=p.max_length,
                                    gradient_checkpointing=p.gradient_checkpointing, seed=ctx.seed)
        trained = il.train_lora_classifier(spec, lora, settings, self._texts(train, template), y_train)
        stats = dict(trained.stats, model=spec.ref)
        if ctx.artifacts_dir:
            stats["adapter_file"] = save_adapter(trained.adapter, ctx.artifacts_dir)
        return {"scorer": scorer, "trained": trained, "stats": stats}

    def lora_probabilities(self, table: pa.Table, state: dict) -> np.ndarray:
        """Score rows with the trained LoRA classifier (in this process: one shard at a time)."""
        from thresher.selectors import icon_lora as il

        p = self.params
        spec, lora, template = self._lora_parts(state)
        t = time.perf_counter()
        prob = il.score_pool(spec, lora, state["trained"], self._texts(table, template), p.max_length, serial_map,
                             p.score_chunk_rows, p.max_tokens_per_batch)
        state.setdefault("score_seconds", 0.0)
        state["score_seconds"] += time.perf_counter() - t
        return prob


ADAPTER_FILE = "icon_lora_adapter.safetensors"


def save_adapter(adapter: bytes, folder: str) -> str:
    """Write the adapter's safetensors bytes to `folder` atomically; returns the path."""
    out = Path(folder) / ADAPTER_FILE
    write_bytes_atomic(adapter, out)
    return str(out)


def fit_probe(x: np.ndarray, y: np.ndarray, pool: np.ndarray, C: float, max_iter: int) -> np.ndarray:
    """P(label = 1) for every pool row from a probe fitted on (x, y) (`fit_probe_params`)."""
    return apply_probe(fit_probe_params(x, y, C, max_iter), pool)


def apply_probe(state: dict, x: np.ndarray) -> np.ndarray:
    """P(label = 1) of each row of `x` under a fitted probe."""
    z = ((x - state["mu"]) / state["sd"]) @ state["w"] + state["b"]
    return 1.0 / (1.0 + np.exp(-z))


def fit_probe_params(x: np.ndarray, y: np.ndarray, C: float, max_iter: int) -> dict:
    """A standardised, class-balanced, L2-regularised logistic regression (float64 L-BFGS in torch: deterministic, no extra dependency).

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
    return {"mu": mu, "sd": sd, "w": w.detach().numpy().copy(), "b": float(b.detach().numpy()[0])}
