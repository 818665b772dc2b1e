"""What both modes of the selection-quality benchmark share (pre-training text and instruction data).

- the spec parts every mode has (`CommonSpec`: seeds, budgets, methods, model, training);
- the tiny GPT-2 and its training loop (`make_model`, `train_lm`), the TF-IDF + SVD embedding;
- selection: thresher selector specs through the registry, plus the benchmark's own
  `farthest_first` (top-k diversity) and `all` (full data), for every (seed, method, budget);
- the summary (mean ± std over seeds, paired differences against random), its Markdown table,
  and writing a results folder.

Imports neither mode (`text_bench`, `instruction_bench`): both import this module.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import torch
from pydantic import Field, field_validator

from thresher.common.atomic import write_text_atomic
from thresher.common.progress import Progress
from thresher.common.schedule import cosine_factor, warmup_factor
from thresher.models.tiny import tiny_gpt2
from thresher.specs import JobError, Strict

RESULTS_FILE = "selection_quality.json"
RESULTS_MD = "selection_quality.md"
# where the Markdown tables of full runs go by default: benchmarks/results, beside this package
DEFAULT_RESULTS = Path(__file__).resolve().parents[1] / "results"
BENCH_ONLY = {"farthest_first", "all"}
# keys of a method spec that the benchmark reads itself (never passed to the selector):
# `raw: true` selects from the pool as built when the mode deduplicates it first
BENCH_KEYS = {"raw"}


# -- configuration --------------------------------------------------------------------------


class ModelSpec(Strict):
    vocab: int = Field(2048, ge=300)
    n_layer: int = Field(2, ge=1)
    n_embd: int = Field(128, ge=16)
    n_head: int = Field(4, ge=1)
    context: int = Field(128, ge=16)


class TrainSpec(Strict):
    steps: int = Field(300, ge=1)
    batch: int = Field(16, ge=1)
    lr: float = Field(3e-3, gt=0)
    warmup: int = Field(20, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    final_lr: float = Field(0.1, ge=0, le=1, description="learning rate at the end of the cosine decay, as a "
                                                           "share of the peak")
    average: float = Field(0.0, ge=0, lt=1, description="evaluate the uniform average of the weights over this "
                                                          "final share of the steps (0: the last weights)")
    epochs: float | None = Field(None, gt=0, description="data-constrained: train for this many passes over the "
                                                           "selection's blocks (steps = ceil(epochs x blocks / "
                                                           "batch)) instead of `steps`")

    def steps_for(self, n_blocks: int) -> int:
        """Optimiser steps for a selection of `n_blocks` blocks: `steps`, or `epochs` passes."""
        return self.steps if self.epochs is None else max(1, math.ceil(self.epochs * n_blocks / self.batch))


class CommonSpec(Strict):
    """The keys of a benchmark spec that every mode has; a mode sets `mode`, `pool`, `scoring`
    and the defaults (`text_bench.BenchSpec`, `instruction_bench.InstructionBenchSpec`)."""

    mode: str
    name: str
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    budgets: list[float] = Field(default_factory=lambda: [0.1, 0.2])
    pool: Strict
    scoring: Strict
    model: ModelSpec = Field(default_factory=ModelSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    methods: dict[str, dict[str, Any]]
    output: str
    threads: int | None = Field(None, ge=1, description="torch threads (default: torch's; 1 on a busy machine)")

    @field_validator("budgets")
    @classmethod
    def _budgets(cls, v: list[float]) -> list[float]:
        if not v or any(not 0 < b < 1 for b in v):
            raise ValueError("budgets must be fractions in (0, 1)")
        return v

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from thresher.selectors.registry import validate_selector_spec

        if "random" not in v:
            raise ValueError("methods: `random` is required (every method is compared with it)")
        out = {}
        for name, spec in v.items():
            if not isinstance(spec, dict) or "type" not in spec:
                raise ValueError(f"methods.{name}: needs a `type`")
            extra = {k: spec[k] for k in BENCH_KEYS if k in spec}
            spec = {k: x for k, x in spec.items() if k not in BENCH_KEYS}
            if spec["type"] in BENCH_ONLY:
                if set(spec) - {"type"}:
                    raise ValueError(f"methods.{name}: {spec['type']} takes no parameters")
                out[name] = {**spec, **extra}
                continue
            if "budget" in spec:
                raise ValueError(f"methods.{name}: set budgets in `budgets:`, not per method")
            out[name] = validate_selector_spec({**spec, "budget": 0.5}, f"methods.{name}")
            out[name].pop("budget")
            out[name].update(extra)
        return out


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` laid over `base`, mappings merged key by key."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out.get(k) or {}, v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# -- model and training -----------------------------------------------------------------------


def make_model(spec: ModelSpec, vocab_size: int, seed: int) -> torch.nn.Module:
    """The benchmark's GPT-2, initialised from `seed` (no dropout: runs are comparable)."""
    return tiny_gpt2(vocab_size, n_layer=spec.n_layer, n_embd=spec.n_embd, n_head=spec.n_head,
                     n_positions=spec.context, eos_token_id=0, dropout=0.0, seed=seed, loss_type="ForCausalLM")


def train_lm(model: torch.nn.Module, data: torch.Tensor, spec: TrainSpec, seed: int,
             labels: torch.Tensor | None = None, progress: bool | None = None, label: str = "train") -> list[float]:
    """Train for `spec.steps_for(len(data))` batches of `spec.batch` blocks (epochs over `data`, reshuffled).

    `labels` (same shape as `data`, -100 = not scored) restricts the loss, e.g. to SFT responses;
    by default every token is a target. Learning rate: linear warm-up, cosine decay to `spec.final_lr`
    of the peak. With `spec.average` > 0 the model ends holding the uniform average of its weights
    over that final share of the steps (a lower-noise estimate of where training ended).
    `progress`: a bar over the steps (rate, ETA, loss) on stderr, removed when done; None: only on a
    terminal and when the benchmark is not quiet (the last `log` call's `quiet`; the benchmark logs
    one line per run itself).
    """
    if len(data) == 0:
        raise JobError("bench: a selection produced no training tokens")
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay, betas=(0.9, 0.95))
    gen = np.random.default_rng(seed)
    order: list[int] = []
    losses = []
    model.train()
    show = (not _LOG["quiet"] and Progress.draws_live()) if progress is None else progress
    steps = spec.steps_for(len(data))
    avg_from = steps - max(1, int(round(spec.average * steps))) if spec.average > 0 else steps
    avg: list[torch.Tensor] | None = None
    n_avg = 0
    bar = Progress(label, steps, unit="step", enabled=show, leave=False)
    for step in range(steps):
        need = spec.batch
        idx = []
        while need:
            if not order:
                order = list(gen.permutation(len(data)))
            take = order[:need]
            order = order[need:]
            idx += take
            need -= len(take)
        batch = data[idx]
        target = batch if labels is None else labels[idx]
        prog = step / max(steps - 1, 1)
        for g in opt.param_groups:
            g["lr"] = spec.lr * warmup_factor(step, spec.warmup) * cosine_factor(prog, spec.final_lr)
        loss = model(input_ids=batch, labels=target).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step >= avg_from:
            with torch.no_grad():
                n_avg += 1
                if avg is None:
                    avg = [p.detach().clone() for p in model.parameters()]
                else:
                    for a, p in zip(avg, model.parameters()):
                        a.add_(p.detach() - a, alpha=1.0 / n_avg)
        bar.update(1)
        if step % 20 == 0 or step == steps - 1:
            bar.set_note(f"loss {losses[-1]:.4f}")
    bar.close()
    if avg is not None:
        with torch.no_grad():
            for a, p in zip(avg, model.parameters()):
                p.copy_(a)
    return losses


# -- embeddings -------------------------------------------------------------------------------


def tfidf_svd(texts: list[str], dim: int, seed: int) -> np.ndarray:
    """TF-IDF (log tf, smooth idf, words seen in >= 2 documents) + truncated SVD, rows L2-normalised."""
    tokens = [re.findall(r"[a-z0-9]+", t.lower()) for t in texts]
    df: Counter[str] = Counter()
    for ts in tokens:
        df.update(set(ts))
    vocab = {w: i for i, w in enumerate(sorted(w for w, c in df.items() if c >= 2))}
    if not vocab:
        vocab = {w: i for i, w in enumerate(sorted(df))}
    n = len(texts)
    idf = np.array([math.log((1 + n) / (1 + df[w])) + 1 for w in sorted(vocab, key=vocab.get)])
    rows, cols, vals = [], [], []
    for r, ts in enumerate(tokens):
        c = Counter(w for w in ts if w in vocab)
        if not c:
            continue
        v = np.array([(1 + math.log(k)) * idf[vocab[w]] for w, k in c.items()])
        v /= np.linalg.norm(v)
        rows += [r] * len(c)
        cols += [vocab[w] for w in c]
        vals += list(v)
    a = torch.sparse_coo_tensor(torch.tensor([rows, cols]), torch.tensor(vals, dtype=torch.float64),
                                (n, len(vocab)), check_invariants=True).coalesce()
    torch.manual_seed(seed)
    k = min(dim, min(a.shape) - 1)
    u, s, _ = torch.svd_lowrank(a, q=min(k + 10, min(a.shape)), niter=6)
    emb = (u[:, :k] * s[:k]).numpy()
    if k < dim:
        emb = np.pad(emb, ((0, 0), (0, dim - k)))
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    emb = np.where(norms > 0, emb / np.where(norms > 0, norms, 1), 0)
    emb[norms[:, 0] == 0, 0] = 1.0  # an empty document still gets a unit vector
    return emb.astype(np.float32)


# -- selection ----------------------------------------------------------------------------


def farthest_first(emb: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-center greedy on cosine distance from a seeded random start (top-k diversity)."""
    n = len(emb)
    sel = np.zeros(n, dtype=bool)
    if k <= 0:
        return sel
    first = int(np.random.default_rng(seed).integers(n))
    sel[first] = True
    dist = 1.0 - emb @ emb[first]
    for _ in range(k - 1):
        dist[sel] = -np.inf
        j = int(np.argmax(dist))
        sel[j] = True
        dist = np.minimum(dist, 1.0 - emb @ emb[j])
    return sel


def select(method: dict[str, Any], table: pa.Table, emb: np.ndarray, budget: float, seed: int
           ) -> tuple[np.ndarray, dict[str, Any]]:
    """Boolean selection of one method at one budget (fraction of pool documents)."""
    method = {k: v for k, v in method.items() if k not in BENCH_KEYS}
    from thresher.selectors.base import SelectContext
    from thresher.selectors.registry import build_selector

    n = table.num_rows
    if method["type"] == "all":
        return np.ones(n, dtype=bool), {}
    k = int(math.floor(budget * n + 1e-9))
    if method["type"] == "farthest_first":
        return farthest_first(emb, k, seed), {}
    selector = build_selector({**method, "budget": budget})
    ctx = SelectContext(seed=seed, pool_docs=n, pool_tokens=float(np.sum(table.column("n_words").to_numpy())))
    res = selector.select(table, ctx)
    stats = {k_: v for k_, v in res.stats.items() if k_ in ("objective", "objective_quality_topk", "reward_curve",
                                                             "seconds", "scored", "train_auc", "eval_auc",
                                                             "label_threshold", "selected")}
    return np.asarray(res.selected, dtype=bool), stats


def method_plan(methods: dict[str, dict[str, Any]], budgets: list[float]) -> list[tuple[str, float]]:
    """(method, budget) runs per seed: full data once, every other method at every budget."""
    plan = [(m, 1.0) for m, s in methods.items() if s["type"] == "all"]
    return plan + [(m, b) for b in budgets for m, s in methods.items() if s["type"] != "all"]


_LOG = {"quiet": False}  # the last `log` call's `quiet`: whether `train_lm` draws a bar by default


def log(msg: str, quiet: bool) -> None:
    _LOG["quiet"] = quiet
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def run_methods(spec: CommonSpec, table: pa.Table, emb: np.ndarray,
                train_eval: Callable[[np.ndarray, int], dict[str, Any]], quiet: bool,
                select_fn: Callable[[dict[str, Any], float, int], tuple[np.ndarray, dict[str, Any]]] | None = None,
                tag: str = "") -> tuple[list[dict[str, Any]], float, float]:
    """Select with every (method, budget) for every seed, then train and evaluate on the selection.

    ``train_eval(selected, seed)`` trains the proxy model on the selection and returns the run's
    record (heldout_loss, junk_frac, dup_frac, ...). ``select_fn(method, budget, seed)`` replaces
    `select` on (table, emb) (e.g. to select from a deduplicated pool); `tag` prefixes the log
    lines. Returns the runs and the seconds spent selecting and training.
    """
    runs: list[dict[str, Any]] = []
    t_sel, t_train = 0.0, 0.0
    for seed in spec.seeds:
        for name, budget in method_plan(spec.methods, spec.budgets):
            t = time.perf_counter()
            sel, stats = (select(spec.methods[name], table, emb, budget, seed) if select_fn is None
                          else select_fn(spec.methods[name], budget, seed))
            t_sel += time.perf_counter() - t
            if not sel.any():
                raise JobError(f"bench: {name} at budget {budget} selected nothing (pool too small?)")
            t = time.perf_counter()
            record = train_eval(sel, seed)
            t_train += time.perf_counter() - t
            runs.append({"method": name, "budget": budget, "seed": seed, **record, "stats": stats})
            log(f"{tag}seed {seed} {name:>16} @ {budget:<4g} loss {record['heldout_loss']:.4f}  "
                f"junk {record['junk_frac']:.3f}  dup {record['dup_frac']:.3f}  ({time.perf_counter() - t:.1f}s)",
                quiet)
    return runs, t_sel, t_train


# -- results ----------------------------------------------------------------------------------


# metrics every run record has, and whether lower is better; a mode may pass more (task accuracy)
METRICS: dict[str, bool] = {"heldout_loss": True}


def summarize(runs: list[dict[str, Any]], spec: CommonSpec, metrics: dict[str, bool] | None = None
              ) -> list[dict[str, Any]]:
    """Per (method, budget): mean ± std over seeds and paired differences against random at the
    same budget and seed (`benchmarks.stats.paired`: mean, 95% interval, verdict) for every metric
    in `metrics` (name -> lower is better; default: held-out loss) under `vs_random`."""
    from benchmarks.stats import paired

    metrics = METRICS if metrics is None else metrics
    by = {(r["method"], r["budget"], r["seed"]): r for r in runs}
    keys: list[tuple[str, float]] = []
    for r in runs:
        if (r["method"], r["budget"]) not in keys:
            keys.append((r["method"], r["budget"]))
    out = []
    for m, b in keys:
        rs = [by[(m, b, s)] for s in spec.seeds if (m, b, s) in by]
        losses = np.array([r["heldout_loss"] for r in rs])
        row: dict[str, Any] = {"method": m, "budget": b, "n_seeds": len(rs), "loss_mean": float(losses.mean()),
                               "loss_std": float(losses.std(ddof=1)) if len(rs) > 1 else 0.0,
                               "junk_frac": float(np.mean([r["junk_frac"] for r in rs])),
                               "dup_frac": float(np.mean([r["dup_frac"] for r in rs])),
                               "redundant_frac": float(np.mean([r["redundant_frac"] for r in rs])),
                               "docs": int(round(np.mean([r["docs"] for r in rs]))),
                               "means": {k: float(np.mean([r[k] for r in rs])) for k in metrics},
                               "diff_mean": None, "diff_std": None, "wins": None, "diffs": None, "vs_random": None}
        if m != "random" and all((("random", b, r["seed"]) in by) for r in rs):
            base = [by[("random", b, r["seed"])] for r in rs]
            row["vs_random"] = {k: paired([r[k] for r in rs], [x[k] for x in base], lower).as_dict()
                                for k, lower in metrics.items()}
            d = np.array(row["vs_random"]["heldout_loss"]["diffs"])
            row.update(diff_mean=float(d.mean()), diff_std=float(d.std(ddof=1)) if len(d) > 1 else 0.0,
                       wins=f"{int((d < 0).sum())}/{len(d)}", diffs=[float(x) for x in d])
        out.append(row)
    return out


def _ci(p: dict[str, Any] | None, digits: int = 4) -> str:
    if p is None:
        return "–"
    f = f"{{:+.{digits}f}}"
    return f"{f.format(p['mean'])} [{f.format(p['lo'])}, {f.format(p['hi'])}]"


def summary_table(summary: list[dict[str, Any]]) -> list[str]:
    """The Markdown results table (with its legend line) of `summarize`'s rows."""
    lines = ["Δ vs random: held-out loss minus random's at the same budget and seed (negative = better), mean "
             "and 95% interval of the paired differences over seeds; verdict: helps / hurts when the interval "
             "excludes 0, else not resolved; wins = seeds where the method beat random.", "",
             "| method | budget | docs | held-out loss | Δ vs random [95% CI] | verdict | wins | junk | near-dup "
             "| redundant |",
             "| --- | --- | ---: | --- | --- | --- | :---: | ---: | ---: | ---: |"]
    for s in summary:
        p = (s.get("vs_random") or {}).get("heldout_loss")
        lines.append(f"| {s['method']} | {s['budget']:g} | {s['docs']:,} | {s['loss_mean']:.4f} ± {s['loss_std']:.4f} "
                     f"| {_ci(p)} | {p['verdict'] if p else '–'} | {s['wins'] or '–'} | {s['junk_frac']:.3f} "
                     f"| {s['dup_frac']:.3f} | {s['redundant_frac']:.3f} |")
    return lines


def compare_pairs(runs: list[dict[str, Any]], pairs: list[tuple[str, str]], seeds: list[int],
                  metrics: dict[str, bool] | None = None) -> list[dict[str, Any]]:
    """Paired comparisons of named method pairs (a - b, same budget and seed) at every budget both
    ran, e.g. ("datamask", "topk_quality"): per metric `benchmarks.stats.paired` (mean, 95%
    interval, verdict: `helps` = a better than b). Pairs with a method that did not run are left out."""
    from benchmarks.stats import paired

    metrics = METRICS if metrics is None else metrics
    by = {(r["method"], r["budget"], r["seed"]): r for r in runs}
    budgets = list(dict.fromkeys(r["budget"] for r in runs))
    out = []
    for a, b in pairs:
        for bud in budgets:
            both = [s for s in seeds if (a, bud, s) in by and (b, bud, s) in by]
            if not both:
                continue
            out.append({"a": a, "b": b, "budget": bud, "n_seeds": len(both),
                        **{k: paired([by[(a, bud, s)][k] for s in both], [by[(b, bud, s)][k] for s in both],
                                     lower).as_dict() for k, lower in metrics.items()}})
    return out


def pairs_table(rows: list[dict[str, Any]], metric: str = "heldout_loss") -> list[str]:
    """Markdown table of `compare_pairs` rows for one metric (with its legend line)."""
    lines = [f"Δ = {metric} of A minus B at the same budget and seed (negative = A better), mean and 95% "
             "interval of the paired differences; verdict `helps` = A better than B.", "",
             "| A | B | budget | Δ (A − B) [95% CI] | verdict | A wins |", "| --- | --- | --- | --- | --- | :---: |"]
    for r in rows:
        p = r[metric]
        wins = sum(d < 0 for d in p["diffs"])
        lines.append(f"| {r['a']} | {r['b']} | {r['budget']:g} | {_ci(p)} | {p['verdict']} | {wins}/{p['n']} |")
    return lines


def not_beating_random(summary: list[dict[str, Any]]) -> list[str]:
    """`method @ budget` for every row whose mean difference to random is not negative."""
    return [f"{s['method']} @ {s['budget']:g}" for s in summary if s["diff_mean"] is not None and not s["diff_mean"] < 0]


def write_outputs(res: dict[str, Any], md: str, out: Path, results_md: Path | None) -> Path:
    """`selection_quality.json` and `.md` in `out` (and the Markdown at `results_md`), then the HTML
    report; returns the report's path."""
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json.dumps(res, indent=2), out / RESULTS_FILE)
    write_text_atomic(md, out / RESULTS_MD)
    if results_md is not None:
        write_text_atomic(md, results_md)
    from thresher.report.html import write_report

    return write_report([out])
