"""`thresher bench-selection JOB.yaml`: does a selection method beat random? (SPEC section 6)

1. Build a pool from BBC News with planted junk and near-duplicate clusters, a clean seed set
   and a clean held-out set (`thresher.bench.pool`).
2. Score the pool once: quality = minus the mean token loss of a tiny GPT-2 trained briefly on
   the seed set; embeddings = TF-IDF + truncated SVD (64-d, L2-normalised) or MiniLM
   (`scoring.embedding: minilm`, the `embedding` scorer).
3. For each budget and seed, select with every method. Methods are thresher selector specs
   (random, topk, datamask, ...) run through the selector registry exactly as a job would,
   plus `farthest_first` (top-k diversity: k-center greedy on the embeddings) and `all` (full data).
4. Train the same tiny GPT-2 (same config, same initialisation for a seed) for the same number
   of tokens on each selection and measure the loss on the held-out clean set.
5. Report mean ± std over seeds, paired per-seed differences against random at the same budget,
   and the planted junk / near-duplicate share of every selection.

Outputs in the output folder: `selection_quality.json`, `selection_quality.md`, and the HTML
report (`_report/report.html`) with the held-out loss plot. ICon is not run here: it selects
instruction (SFT) data and this pool is pre-training text. `mode: instruction` in the job
(jobs/bench_selection_icon.yaml) runs the instruction-data variant with ICon instead
(`thresher.bench.instruction_bench`).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import pyarrow as pa
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from thresher.bench.pool import Pool, build_pool
from thresher.specs import JobError
from thresher.models.train_proxy import EOS, train_bpe_tokenizer

ROOT = Path(__file__).resolve().parents[2]
RESULTS_MD = ROOT / "benchmarks" / "results" / "selection_quality.md"
RESULTS_FILE = "selection_quality.json"
BENCH_ONLY = {"farthest_first", "all"}


# -- configuration --------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PoolSpec(_Strict):
    docs: int = Field(4000, ge=50)
    junk: float = Field(0.25, ge=0, lt=1)
    dup: float = Field(0.25, ge=0, lt=1)
    dup_clusters: int = Field(40, ge=1)
    eval_docs: int = Field(300, ge=10)
    seed_docs: int = Field(300, ge=10)
    min_words: int = Field(60, ge=5)
    max_words: int = Field(160, ge=10)
    seed: int = 0


class ModelSpec(_Strict):
    vocab: int = Field(2048, ge=300)
    n_layer: int = Field(2, ge=1)
    n_embd: int = Field(128, ge=16)
    n_head: int = Field(4, ge=1)
    context: int = Field(128, ge=16)


class TrainSpec(_Strict):
    steps: int = Field(300, ge=1)
    batch: int = Field(16, ge=1)
    lr: float = Field(3e-3, gt=0)
    warmup: int = Field(20, ge=0)
    weight_decay: float = Field(0.01, ge=0)


class ScoringSpec(_Strict):
    proxy_steps: int = Field(200, ge=1, description="steps of the quality proxy on the seed set")
    embedding: str = Field("tfidf", pattern="^(tfidf|minilm)$")
    dim: int = Field(64, ge=2, description="TF-IDF + SVD dimensions")


class BenchSpec(_Strict):
    mode: Literal["pretrain"] = Field("pretrain", description="pretrain (this module) or instruction "
                                                               "(thresher.bench.instruction_bench)")
    name: str = "bench-selection"
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    budgets: list[float] = Field(default_factory=lambda: [0.1, 0.2])
    pool: PoolSpec = Field(default_factory=PoolSpec)
    scoring: ScoringSpec = Field(default_factory=ScoringSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    methods: dict[str, dict[str, Any]] = Field(default_factory=lambda: {
        "random": {"type": "random"}, "topk_quality": {"type": "topk", "column": "quality"},
        "topk_diversity": {"type": "farthest_first"}, "full": {"type": "all"}})
    output: str = "out/bench_selection"
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
            if spec["type"] in BENCH_ONLY:
                if set(spec) - {"type"}:
                    raise ValueError(f"methods.{name}: {spec['type']} takes no parameters")
                out[name] = dict(spec)
                continue
            if "budget" in spec:
                raise ValueError(f"methods.{name}: set budgets in `budgets:`, not per method")
            out[name] = validate_selector_spec({**spec, "budget": 0.5}, f"methods.{name}")
            out[name].pop("budget")
        return out


QUICK = {
    "seeds": [0, 1], "budgets": [0.2],
    "pool": {"docs": 500, "dup_clusters": 10, "eval_docs": 60, "seed_docs": 120},
    "scoring": {"proxy_steps": 200, "dim": 32},
    "model": {"vocab": 512, "n_embd": 64, "context": 64},
    "train": {"steps": 40, "batch": 8, "warmup": 5},
}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out.get(k) or {}, v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_spec(path: str | Path | None, quick: bool = False, overrides: dict[str, Any] | None = None) -> BenchSpec:
    """Read and validate a benchmark spec; `quick` shrinks it for tests.

    `mode: instruction` gives an `InstructionBenchSpec` (thresher.bench.instruction_bench).
    """
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise JobError(f"{path}: {exc}") from None
    if not isinstance(raw, dict):
        raise JobError(f"{path}: a benchmark spec is a mapping")
    spec_cls: type[BenchSpec] = BenchSpec
    if raw.get("mode") == "instruction":
        from thresher.bench.instruction_bench import QUICK_INSTRUCTION, InstructionBenchSpec

        spec_cls, quick_over = InstructionBenchSpec, QUICK_INSTRUCTION
    else:
        quick_over = QUICK
    if quick:
        raw = _merge(raw, quick_over)
        for name, spec in (raw.get("methods") or {}).items():  # DATAMASK: fewer steps in quick mode
            if isinstance(spec, dict) and spec.get("type") == "datamask":
                raw["methods"][name] = {**spec, "steps": min(int(spec.get("steps", 400)), 60)}
    raw = _merge(raw, overrides or {})
    try:
        return spec_cls.model_validate(raw)
    except ValidationError as err:
        lines = [f"{path or 'bench spec'}: " + (".".join(str(x) for x in e["loc"]) + ": " if e["loc"] else "")
                 + e["msg"] for e in err.errors()]
        raise JobError("\n".join(lines)) from None


# -- tokenizer and model ------------------------------------------------------------------


def encode(tok: Any, texts: list[str]) -> list[np.ndarray]:
    return [np.asarray(e.ids, dtype=np.int64) for e in tok.encode_batch(texts)]


def tiny_gpt2(spec: ModelSpec, vocab_size: int, seed: int) -> torch.nn.Module:
    """A GPT-2 from a config, initialised from `seed` (no dropout: runs are comparable)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab_size, n_positions=spec.context, n_embd=spec.n_embd, n_layer=spec.n_layer,
                     n_head=spec.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=0, eos_token_id=0, loss_type="ForCausalLM")
    return GPT2LMHeadModel(cfg)


def blocks(docs: list[np.ndarray], context: int, eos: int) -> torch.Tensor:
    """Concatenate documents (EOS between them) and cut into full blocks of `context` tokens."""
    if not docs:
        return torch.zeros((0, context), dtype=torch.long)
    stream = np.concatenate([np.append(d, eos) for d in docs])
    n = len(stream) // context
    if n == 0:  # shorter than one block: pad by repeating
        stream = np.resize(stream, context)
        n = 1
    return torch.from_numpy(stream[: n * context].reshape(n, context).copy())


def train_lm(model: torch.nn.Module, data: torch.Tensor, spec: TrainSpec, seed: int,
             labels: torch.Tensor | None = None) -> list[float]:
    """Train for exactly `spec.steps` batches of `spec.batch` blocks (epochs over `data`, reshuffled).

    `labels` (same shape as `data`, -100 = not scored) restricts the loss, e.g. to SFT responses;
    by default every token is a target.
    """
    if len(data) == 0:
        raise JobError("bench: a selection produced no training tokens")
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay, betas=(0.9, 0.95))
    gen = np.random.default_rng(seed)
    order: list[int] = []
    losses = []
    model.train()
    for step in range(spec.steps):
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
        warm = (step + 1) / spec.warmup if step < spec.warmup else 1.0
        prog = step / max(spec.steps - 1, 1)
        for g in opt.param_groups:
            g["lr"] = spec.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog)))
        loss = model(input_ids=batch, labels=target).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def eval_loss(model: torch.nn.Module, data: torch.Tensor, batch: int = 64) -> float:
    """Mean next-token loss over all predicted tokens of `data`."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(data), batch):
        x = data[i:i + batch]
        logits = model(input_ids=x).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                                reduction="sum")
        total += float(nll)
        count += x[:, 1:].numel()
    return total / max(count, 1)


@torch.no_grad()
def doc_losses(model: torch.nn.Module, docs: list[np.ndarray], context: int, batch: int = 64) -> np.ndarray:
    """Mean token loss of each document's first `context` tokens (the quality proxy)."""
    model.eval()
    out = np.full(len(docs), np.nan)
    order = np.argsort([len(d) for d in docs], kind="stable")
    for s in range(0, len(order), batch):
        idx = order[s:s + batch]
        seqs = [docs[i][:context] for i in idx]
        width = max(max(len(q) for q in seqs), 2)
        x = torch.zeros((len(seqs), width), dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, q in enumerate(seqs):
            x[r, :len(q)] = torch.from_numpy(q)
            mask[r, :len(q)] = 1
        logits = model(input_ids=x, attention_mask=mask).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")
        m = mask[:, 1:].float()
        per = (nll * m).sum(1) / m.sum(1).clamp(min=1)
        out[idx] = per.numpy()
    return out


# -- scoring ----------------------------------------------------------------------------


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


def minilm_embeddings(texts: list[str]) -> np.ndarray:
    """MiniLM sentence embeddings via thresher's `embedding` scorer (slow on CPU: ~20-40 docs/s)."""
    from thresher.scorers.embedding import EmbeddingParams, EmbeddingScorer, vectors_to_numpy

    scorer = EmbeddingScorer(EmbeddingParams(cpu_bf16_autocast=True))  # type: ignore[call-arg]
    out = []
    for s in range(0, len(texts), 256):
        batch = pa.RecordBatch.from_pydict({"text": texts[s:s + 256]})
        cols = scorer(batch)
        out.append(vectors_to_numpy(cols["embedding_vector"])[0])
    return np.concatenate(out).astype(np.float32)


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


def score_table(pool: Pool, quality: np.ndarray, emb: np.ndarray, n_tokens: np.ndarray) -> pa.Table:
    """The narrow score table a selector sees (no labels)."""
    flat = pa.array(emb.reshape(-1), type=pa.float32())
    return pa.table({"id": pool.ids, "n_words": pa.array([len(t.split()) for t in pool.texts], pa.int64()),
                     "n_tokens": pa.array(n_tokens, pa.int64()), "quality": pa.array(quality, pa.float64()),
                     "embedding_vector": pa.FixedSizeListArray.from_arrays(flat, emb.shape[1])})


def select(method: dict[str, Any], table: pa.Table, emb: np.ndarray, budget: float, seed: int
           ) -> tuple[np.ndarray, dict[str, Any]]:
    """Boolean selection of one method at one budget (fraction of pool documents)."""
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


# -- the benchmark ----------------------------------------------------------------------------


def method_plan(methods: dict[str, dict[str, Any]], budgets: list[float]) -> list[tuple[str, float]]:
    """(method, budget) runs per seed: full data once, every other method at every budget."""
    plan = [(m, 1.0) for m, s in methods.items() if s["type"] == "all"]
    return plan + [(m, b) for b in budgets for m, s in methods.items() if s["type"] != "all"]


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def run_methods(spec: BenchSpec, table: pa.Table, emb: np.ndarray,
                train_eval: Callable[[np.ndarray, int], dict[str, Any]], quiet: bool
                ) -> tuple[list[dict[str, Any]], float, float]:
    """Select with every (method, budget) for every seed, then train and evaluate on the selection.

    ``train_eval(selected, seed)`` trains the proxy model on the selection and returns the run's
    record (heldout_loss, junk_frac, dup_frac, ...). Returns the runs and the seconds spent
    selecting and training.
    """
    runs: list[dict[str, Any]] = []
    t_sel, t_train = 0.0, 0.0
    for seed in spec.seeds:
        for name, budget in method_plan(spec.methods, spec.budgets):
            t = time.perf_counter()
            sel, stats = select(spec.methods[name], table, emb, budget, seed)
            t_sel += time.perf_counter() - t
            if not sel.any():
                raise JobError(f"bench: {name} at budget {budget} selected nothing (pool too small?)")
            t = time.perf_counter()
            record = train_eval(sel, seed)
            t_train += time.perf_counter() - t
            runs.append({"method": name, "budget": budget, "seed": seed, **record, "stats": stats})
            _log(f"seed {seed} {name:>16} @ {budget:<4g} loss {record['heldout_loss']:.4f}  "
                 f"junk {record['junk_frac']:.3f}  dup {record['dup_frac']:.3f}  ({time.perf_counter() - t:.1f}s)",
                 quiet)
    return runs, t_sel, t_train


def run_bench(spec: BenchSpec, quiet: bool = False) -> dict[str, Any]:
    """Run every (budget, method, seed); return the results dictionary (also the JSON file)."""
    t0 = time.perf_counter()
    if spec.threads:
        torch.set_num_threads(spec.threads)
    p = spec.pool
    pool = build_pool(p.docs, p.junk, p.dup, p.dup_clusters, p.eval_docs, p.seed_docs, p.min_words, p.max_words,
                      p.seed)
    _log(f"pool: {pool.info}", quiet)
    # the raw `tokenizers` object of the proxy trainer's BPE (same trainer, same EOS token)
    tok = train_bpe_tokenizer(pool.seed_texts, spec.model.vocab).backend_tokenizer
    eos = tok.token_to_id(EOS)
    vocab_size = tok.get_vocab_size()
    pool_docs, seed_docs, eval_docs = encode(tok, pool.texts), encode(tok, pool.seed_texts), encode(tok, pool.eval_texts)
    ctx = spec.model.context
    eval_data = blocks(eval_docs, ctx, eos)

    t = time.perf_counter()
    proxy = tiny_gpt2(spec.model, vocab_size, seed=10_000 + p.seed)
    train_lm(proxy, blocks(seed_docs, ctx, eos), spec.train.model_copy(update={"steps": spec.scoring.proxy_steps}),
             seed=10_000 + p.seed)
    quality = -doc_losses(proxy, pool_docs, ctx)
    timings = {"proxy_quality": time.perf_counter() - t}
    t = time.perf_counter()
    emb = tfidf_svd(pool.texts, spec.scoring.dim, p.seed) if spec.scoring.embedding == "tfidf" \
        else minilm_embeddings(pool.texts)
    timings["embeddings"] = time.perf_counter() - t
    table = score_table(pool, quality, emb, np.array([len(d) for d in pool_docs]))
    junk, dup, clusters = pool.junk, pool.dup, np.asarray(pool.clusters)
    kinds = np.asarray(pool.kinds)
    quality_by_kind = {k: float(quality[kinds == k].mean()) for k in sorted(set(pool.kinds))}
    _log(f"quality proxy (mean by kind): {quality_by_kind}", quiet)

    def train_eval(sel: np.ndarray, seed: int) -> dict[str, Any]:
        model = tiny_gpt2(spec.model, vocab_size, seed=seed)
        curve = train_lm(model, blocks([pool_docs[i] for i in np.flatnonzero(sel)], ctx, eos), spec.train, seed=seed)
        n_dup = int(dup[sel].sum())
        covered = len(set(clusters[sel & dup].tolist()))
        return {"heldout_loss": eval_loss(model, eval_data), "train_loss_end": float(np.mean(curve[-10:])),
                "docs": int(sel.sum()), "tokens": int(sum(len(pool_docs[i]) for i in np.flatnonzero(sel))),
                "junk_frac": float(junk[sel].mean()), "dup_frac": float(dup[sel].mean()),
                "redundant_frac": float((n_dup - covered) / sel.sum()),
                "junk_by_kind": {k: int((kinds[sel] == k).sum()) for k in ("shuffled", "boilerplate",
                                                                             "random_chars", "repeated")},
                "mean_quality": float(quality[sel].mean())}

    runs, t_sel, t_train = run_methods(spec, table, emb, train_eval, quiet)
    timings.update(selection=t_sel, training=t_train, total=time.perf_counter() - t0)
    return {"name": spec.name, "spec": spec.model_dump(mode="json"), "methods": list(spec.methods),
            "budgets": spec.budgets, "seeds": spec.seeds, "runs": runs, "summary": summarize(runs, spec),
            "config": {"pool_docs": len(pool.texts), "pool": pool.info, "vocab": vocab_size,
                       "train_tokens": spec.train.steps * spec.train.batch * ctx, "eval_tokens": int(eval_data.numel()),
                       "quality_by_kind": quality_by_kind, "embedding": spec.scoring.embedding,
                       "threads": torch.get_num_threads()},
            "timings": {k: round(v, 2) for k, v in timings.items()},
            "notes": ["ICon is not run: it selects instruction (SFT) data, and this pool is pre-training text "
                      "(`thresher bench-selection jobs/bench_selection_icon.yaml` runs it on instruction data).",
                      "Quality = minus the mean token loss of a tiny GPT-2 trained on the clean seed set."]}


def summarize(runs: list[dict[str, Any]], spec: BenchSpec) -> list[dict[str, Any]]:
    """Per (method, budget): mean ± std over seeds and paired differences against random."""
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
                               "diff_mean": None, "diff_std": None, "wins": None, "diffs": None}
        if m != "random" and all((("random", b, r["seed"]) in by) for r in rs):
            d = np.array([r["heldout_loss"] - by[("random", b, r["seed"])]["heldout_loss"] for r in rs])
            row.update(diff_mean=float(d.mean()), diff_std=float(d.std(ddof=1)) if len(d) > 1 else 0.0,
                       wins=f"{int((d < 0).sum())}/{len(d)}", diffs=[float(x) for x in d])
        out.append(row)
    return out


def markdown(res: dict[str, Any]) -> str:
    """The results table (and the set-up) as Markdown."""
    c, sp = res["config"], res["spec"]
    lines = [f"# Selection quality: {res['name']}", "",
             f"Pool: {c['pool_docs']:,} BBC News documents ({c['pool']['clean']} clean, {c['pool']['junk']} planted "
             f"junk, {c['pool']['dup']} planted near-duplicates in {c['pool']['dup_clusters']} clusters); held-out: "
             f"{c['pool']['eval_docs']} clean documents from other articles ({c['eval_tokens']:,} tokens). "
             f"Each selection trains the same GPT-2 ({sp['model']['n_layer']} layers, d={sp['model']['n_embd']}, "
             f"context {sp['model']['context']}, BPE vocab {c['vocab']}) from the same initialisation per seed for "
             f"{c['train_tokens']:,} tokens ({sp['train']['steps']} steps x {sp['train']['batch']} blocks). "
             f"Seeds: {res['seeds']}. Quality: minus the loss of a tiny GPT-2 trained on {c['pool']['seed_docs']} "
             f"clean seed documents; embeddings: {c['embedding']}.", "",
             *summary_table(res["summary"])]
    worse = not_beating_random(res["summary"])
    lines += ["", "junk / near-dup: share of the selection that is planted junk / planted near-duplicates; redundant: "
              "near-duplicates beyond the first of each cluster selected.", ""]
    lines.append("Does not beat random (mean Δ ≥ 0): " + (", ".join(worse) if worse else "none") + ".")
    lines += ["", "Quality proxy, mean by planted kind: " + ", ".join(f"{k} {v:.2f}"
                                                                   for k, v in c["quality_by_kind"].items()) + ".", ""]
    lines += [f"- {n}" for n in res["notes"]]
    t = res["timings"]
    lines += ["", f"Run time: {t['total']:.0f} s on {c.get('threads', '?')} torch thread(s) (proxy {t['proxy_quality']:.0f} s, "
              f"embeddings {t['embeddings']:.0f} s, selection {t['selection']:.0f} s, training {t['training']:.0f} s). "
              f"Reproduce: `thresher bench-selection jobs/bench_selection.yaml`.", ""]
    return "\n".join(lines)


def summary_table(summary: list[dict[str, Any]]) -> list[str]:
    """The Markdown results table (with its legend line) of `summarize`'s rows."""
    lines = ["Δ vs random: held-out loss minus random's at the same budget and seed (negative = better), mean ± std "
             "over seeds; wins = seeds where the method beat random.", "",
             "| method | budget | docs | held-out loss | Δ vs random | per-seed Δ | wins | junk | near-dup | redundant |",
             "| --- | --- | ---: | --- | --- | --- | :---: | ---: | ---: | ---: |"]
    for s in summary:
        d = "–" if s["diff_mean"] is None else f"{s['diff_mean']:+.4f} ± {s['diff_std']:.4f}"
        per = "–" if not s.get("diffs") else ", ".join(f"{x:+.3f}" for x in s["diffs"])
        lines.append(f"| {s['method']} | {s['budget']:g} | {s['docs']:,} | {s['loss_mean']:.4f} ± {s['loss_std']:.4f} "
                     f"| {d} | {per} | {s['wins'] or '–'} | {s['junk_frac']:.3f} | {s['dup_frac']:.3f} "
                     f"| {s['redundant_frac']:.3f} |")
    return lines


def not_beating_random(summary: list[dict[str, Any]]) -> list[str]:
    """`method @ budget` for every row whose mean difference to random is not negative."""
    return [f"{s['method']} @ {s['budget']:g}" for s in summary if s["diff_mean"] is not None and not s["diff_mean"] < 0]


def write_outputs(res: dict[str, Any], out: Path, results_md: Path | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{RESULTS_FILE}.tmp"
    tmp.write_text(json.dumps(res, indent=2))
    tmp.replace(out / RESULTS_FILE)
    if res.get("mode") == "instruction":
        from thresher.bench.instruction_bench import markdown_instruction

        md = markdown_instruction(res)
    else:
        md = markdown(res)
    (out / "selection_quality.md").write_text(md)
    if results_md is not None:
        results_md.parent.mkdir(parents=True, exist_ok=True)
        results_md.write_text(md)
    from thresher.report.html import write_report

    write_report([out])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="thresher bench-selection",
                                description="Train a small GPT-2 on each method's selection and compare held-out "
                                            "loss against random (SPEC section 6).")
    p.add_argument("job", nargs="?", help="benchmark spec (YAML), e.g. jobs/bench_selection.yaml or "
                                          "jobs/bench_selection_icon.yaml (instruction data, ICon)")
    p.add_argument("--quick", action="store_true", help="a tiny run (tests, smoke checks): under a minute")
    p.add_argument("--output", "-o", help="override output folder")
    p.add_argument("--seeds", type=int, help="use seeds 0..N-1")
    p.add_argument("--results-md", help="also write the Markdown table here (default: benchmarks/results/"
                                        "selection_quality.md, or selection_quality_icon.md for instruction "
                                        "mode; none with --quick)")
    p.add_argument("--no-results-md", action="store_true", help="do not write benchmarks/results/")
    p.add_argument("--threads", type=int, help="torch threads")
    p.add_argument("--quiet", "-q", action="store_true")
    return p


def main(argv: list[str]) -> int:
    """Entry point of `thresher bench-selection`."""
    args = build_parser().parse_args(argv)
    over: dict[str, Any] = {}
    if args.output:
        over["output"] = args.output
    if args.seeds:
        over["seeds"] = list(range(args.seeds))
    if args.threads:
        over["threads"] = args.threads
    spec = load_spec(args.job, quick=args.quick, overrides=over)
    default_md = RESULTS_MD
    if spec.mode == "instruction":
        from thresher.bench.instruction_bench import RESULTS_MD_ICON, run_instruction_bench

        res = run_instruction_bench(spec, quiet=args.quiet)  # type: ignore[arg-type]
        default_md = RESULTS_MD_ICON
    else:
        res = run_bench(spec, quiet=args.quiet)
    res["command"] = " ".join(["thresher bench-selection", *argv])
    md_path = Path(args.results_md) if args.results_md else (None if args.quick or args.no_results_md else default_md)
    if args.no_results_md:
        md_path = None
    out = Path(spec.output)
    write_outputs(res, out, md_path)
    print((out / "selection_quality.md").read_text())
    print(f"results: {out / RESULTS_FILE}; report: {out / 'report' / 'report.html'}"
          + (f"; table: {md_path}" if md_path else ""))
    return 0
