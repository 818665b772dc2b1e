"""The selection-quality benchmark on pre-training text (`mode: pretrain`, the default): does a
selection method beat random? (SPEC section 6)

1. Build a pool from BBC News with planted junk and near-duplicate clusters, a clean seed set
   and a clean held-out set (`benchmarks.selection.pool`).
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
(`benchmarks.selection.instruction_bench`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import torch
from pydantic import Field, model_validator

from benchmarks.selection.harness import (CommonSpec, TrainSpec, compare_pairs, log, make_model, merge,
                                          not_beating_random, pairs_table, run_methods, select, summarize,
                                          summary_table, tfidf_svd, train_lm)
from benchmarks.selection.pool import Pool, build_pool
from benchmarks.stats import paired
from thresher.common.atomic import write_text_atomic
from thresher.common.threads import torch_threads
from thresher.models.tiny import EOS, train_bpe_tokenizer
from thresher.specs import Strict

COMMAND = "python -m benchmarks.selection"


# -- configuration --------------------------------------------------------------------------


class PoolSpec(Strict):
    docs: int = Field(4000, ge=50)
    junk: float = Field(0.25, ge=0, lt=1)
    dup: float = Field(0.25, ge=0, lt=1)
    dup_clusters: int = Field(40, ge=1)
    eval_docs: int = Field(300, ge=10)
    seed_docs: int = Field(300, ge=10)
    min_words: int = Field(60, ge=5)
    max_words: int = Field(160, ge=10)
    seed: int = 0


QUALITY_SCORES = ("lm", "gopher", "fineweb")


class ScoringSpec(Strict):
    proxy_steps: int = Field(200, ge=1, description="steps of the quality proxy on the seed set")
    embedding: str = Field("tfidf", pattern="^(tfidf|minilm)$")
    dim: int = Field(64, ge=2, description="TF-IDF + SVD dimensions")
    quality: list[Literal["lm", "gopher", "fineweb"]] = Field(
        default_factory=lambda: ["lm"], min_length=1,
        description="the `quality` column = sum of these scores, each standardised over the pool (as DATAMASK sums "
                    "three classifiers): lm = minus the proxy GPT-2's loss; gopher = minus the number of failed "
                    "Gopher quality and repetition rules (thresher's heuristics scorer); fineweb = the share of "
                    "lines ending in punctuation (the FineWeb line-punctuation statistic). One score: used as is.")


class DedupSpec(Strict):
    """MinHash near-duplicate removal on the pool before any selection (thresher.dedup.minhash:
    the same signatures, LSH bands and exact-Jaccard verification as the dedup stage; one kept
    per cluster, the lowest id, thresher's default keep rule)."""

    threshold: float = Field(0.7, gt=0, lt=1, description="Jaccard similarity of word shingles")
    n: int = Field(5, ge=1, description="words per shingle")
    num_perm: int = Field(128, ge=2)


class RegimeSpec(Strict):
    """One training regime: budgets, training overrides and the methods it runs."""

    about: str = ""
    budgets: list[float] | None = Field(None, description="default: the spec's `budgets`")
    train: dict[str, Any] = Field(default_factory=dict, description="overrides of `train` (e.g. epochs: 4)")
    methods: list[str] | None = Field(None, description="default: every method")


class BenchSpec(CommonSpec):
    mode: Literal["pretrain"] = Field("pretrain", description="pretrain (this module) or instruction "
                                                               "(benchmarks.selection.instruction_bench)")
    name: str = "bench-selection"
    pool: PoolSpec = Field(default_factory=PoolSpec)
    scoring: ScoringSpec = Field(default_factory=ScoringSpec)
    methods: dict[str, dict[str, Any]] = Field(default_factory=lambda: {
        "random": {"type": "random"}, "topk_quality": {"type": "topk", "column": "quality"},
        "topk_diversity": {"type": "farthest_first"}, "full": {"type": "all"}})
    dedup: DedupSpec | None = Field(None, description="MinHash dedup of the pool before selection (methods with "
                                                        "`raw: true` select from the pool as built)")
    regimes: dict[str, RegimeSpec] = Field(default_factory=dict, description="training regimes, each summarised on "
                                                                            "its own; none: one regime, `tokens`")
    pairs: list[tuple[str, str]] = Field(default_factory=lambda: [
        ("datamask", "topk_quality"), ("datamask_fl", "topk_quality"), ("datamask", "datamask_fl"),
        ("random", "random_raw")], description="method pairs compared directly (A - B), where both ran")
    noise_check: tuple[str, str] | None = Field(None, description="(regime, baseline regime): the std of the paired "
                                                                  "differences of the same picks under two recipes")
    output: str = "out/bench_selection"

    @model_validator(mode="after")
    def _regimes(self) -> BenchSpec:
        for name, r in self.regimes.items():
            unknown = set(r.methods or []) - set(self.methods)
            if unknown:
                raise ValueError(f"regimes.{name}.methods: unknown {sorted(unknown)}")
            if r.methods is not None and "random" not in r.methods:
                raise ValueError(f"regimes.{name}.methods: needs `random`")
            TrainSpec.model_validate(merge(self.train.model_dump(), r.train))
        if self.noise_check and not set(self.noise_check) <= set(self.regimes):
            raise ValueError(f"noise_check: {list(self.noise_check)} are not both regimes")
        return self

    def regime_specs(self) -> dict[str, tuple[BenchSpec, str]]:
        """Each regime as a spec of its own (budgets, train, methods) and its description."""
        if not self.regimes:
            return {"tokens": (self, "")}
        out = {}
        for name, r in self.regimes.items():
            upd: dict[str, Any] = {"train": TrainSpec.model_validate(merge(self.train.model_dump(), r.train)),
                                   "budgets": r.budgets or self.budgets}
            if r.methods is not None:
                upd["methods"] = {m: self.methods[m] for m in self.methods if m in r.methods}
            out[name] = (self.model_copy(update=upd), r.about)
        return out


QUICK = {
    "seeds": [0, 1], "budgets": [0.2],
    "pool": {"docs": 500, "dup_clusters": 10, "eval_docs": 60, "seed_docs": 120},
    "scoring": {"proxy_steps": 60, "dim": 32},
    "model": {"vocab": 512, "n_embd": 64, "context": 64},
    "train": {"steps": 40, "batch": 8, "warmup": 5},
}


QUICK_STEPS = 20  # per run of a regime in --quick


def quick_regimes(raw: dict[str, Any]) -> dict[str, Any]:
    """`--quick`: every regime trains for `QUICK_STEPS` steps (or one epoch where it counts epochs)."""
    out = dict(raw)
    regimes = {}
    for name, r in (raw.get("regimes") or {}).items():
        tr = dict((r or {}).get("train") or {})
        tr["steps"] = QUICK_STEPS
        if tr.get("epochs") is not None:
            tr["epochs"] = 1.0
        regimes[name] = {**(r or {}), "train": tr}
    if regimes:
        out["regimes"] = regimes
    return out


# -- tokens, blocks, losses -------------------------------------------------------------------


def encode(tok: Any, texts: list[str]) -> list[np.ndarray]:
    return [np.asarray(e.ids, dtype=np.int64) for e in tok.encode_batch(texts)]


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


def minilm_embeddings(texts: list[str]) -> np.ndarray:
    """MiniLM sentence embeddings via thresher's `embedding` scorer (slow on CPU: ~20-40 docs/s)."""
    from thresher.common.arrays import vectors_to_numpy
    from thresher.scorers.registry import build_scorer

    scorer = build_scorer({"type": "embedding", "cpu_bf16_autocast": True})
    out = []
    for s in range(0, len(texts), 256):
        batch = pa.RecordBatch.from_pydict({"text": texts[s:s + 256]})
        cols = scorer(batch)
        out.append(vectors_to_numpy(cols["embedding_vector"])[0])
    return np.concatenate(out).astype(np.float32)


def heuristic_scores(texts: list[str]) -> dict[str, np.ndarray]:
    """Two label-free quality scores from thresher's heuristics scorer: `gopher` = minus the number
    of Gopher quality and repetition rules a document fails; `fineweb` = its share of lines that
    end in punctuation (the statistic of FineWeb's line-punctuation rule)."""
    from thresher.scorers.heuristics import (GOPHER_QUALITY_RULES, GOPHER_REPETITION_RULES, HeuristicParams,
                                             apply_rules, compute_stats)

    params = HeuristicParams()
    stats = compute_stats(pa.array(texts, pa.string()), params)
    fails = np.zeros(len(texts))
    for rule in GOPHER_QUALITY_RULES + GOPHER_REPETITION_RULES:
        passed, _ = apply_rules(stats, params.model_copy(update={"rules": [rule]}))
        fails += ~np.asarray(passed, dtype=bool)
    return {"gopher": -fails, "fineweb": np.asarray(stats["frac_lines_end_punct"], dtype=np.float64)}


def standardise(x: np.ndarray) -> np.ndarray:
    sd = float(np.std(x))
    return (x - float(np.mean(x))) / (sd if sd > 0 else 1.0)


def minhash_keep(texts: list[str], spec: DedupSpec) -> tuple[np.ndarray, dict[str, Any]]:
    """Which documents survive MinHash near-duplicate removal: signatures and LSH bands from
    `thresher.dedup.minhash` ((b, r) for the threshold, false negatives weighted 9x as the dedup
    stage does with verification); in each band bucket a document is linked to the first earlier
    member (of at most 32) whose exact shingle Jaccard reaches the threshold; connected
    components are clusters; the lowest index of each is kept. Returns (keep mask, info)."""
    from thresher.dedup import exact, minhash

    norm = exact.normalize(pa.array(texts, pa.string()))
    sig, sh, off = minhash.batch_signatures(norm, "word", spec.n, spec.num_perm)
    bands, rows = minhash.optimal_param(spec.threshold, spec.num_perm, 0.1, 0.9)
    keys = minhash.band_keys(sig, bands, rows)
    n = len(texts)
    parent = np.arange(n)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = int(parent[x])
        return x

    sets = [sh[off[i]:off[i + 1]] for i in range(n)]
    for b in range(bands):
        order = np.lexsort((np.arange(n), keys[:, b]))
        k = keys[order, b]
        starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
        for lo, hi in zip(starts, np.r_[starts[1:], n]):
            group = order[lo:hi]
            for q in range(1, len(group)):
                for r in range(max(0, q - 32), q):
                    if minhash.jaccard(sets[group[q]], sets[group[r]]) >= spec.threshold:
                        a, c = find(int(group[q])), find(int(group[r]))
                        parent[max(a, c)] = min(a, c)
                        break
    roots = np.array([find(i) for i in range(n)])
    keep = np.zeros(n, dtype=bool)
    keep[np.unique(roots, return_index=True)[1]] = True
    return keep, {"bands": bands, "rows": rows, "removed": int((~keep).sum()),
                  "clusters": int(len(np.unique(roots[~keep])))}


def score_table(pool: Pool, quality: np.ndarray, emb: np.ndarray, n_tokens: np.ndarray,
                parts: dict[str, np.ndarray] | None = None) -> pa.Table:
    """The narrow score table a selector sees (no labels); `parts`: the quality's summands
    (columns `q_<name>`)."""
    flat = pa.array(emb.reshape(-1), type=pa.float32())
    cols: dict[str, Any] = {"id": pool.ids, "n_words": pa.array([len(t.split()) for t in pool.texts], pa.int64()),
                            "n_tokens": pa.array(n_tokens, pa.int64()), "quality": pa.array(quality, pa.float64())}
    cols.update({f"q_{k}": pa.array(v, pa.float64()) for k, v in (parts or {}).items()})
    cols["embedding_vector"] = pa.FixedSizeListArray.from_arrays(flat, emb.shape[1])
    return pa.table(cols)


# -- the benchmark ----------------------------------------------------------------------------


def run_bench(spec: BenchSpec, quiet: bool = False, partial: Path | None = None) -> dict[str, Any]:
    """Run every (regime, budget, method, seed); return the results dictionary (also the JSON file).
    `spec.threads` sets torch's threads for the run (restored afterwards); `partial`: after each
    regime, write the results so far there (`python -m benchmarks.selection --render` tables them)."""
    with torch_threads(spec.threads):
        return _run_bench(spec, quiet, partial)


def regime_summaries(runs: list[dict[str, Any]], spec: BenchSpec) -> dict[str, Any]:
    """Per regime that has runs: its set-up, `summarize` rows and the key pairs."""
    out = {}
    for rname, (rspec, about) in spec.regime_specs().items():
        done = [r for r in runs if r["regime"] == rname]
        if not done:
            continue
        pairs = [pr for pr in spec.pairs if set(pr) <= set(rspec.methods)]
        out[rname] = {"about": about, "budgets": rspec.budgets, "methods": list(rspec.methods),
                      "train": rspec.train.model_dump(mode="json"), "summary": summarize(done, rspec),
                      "pairs": compare_pairs(done, pairs, spec.seeds),
                      "epochs_mean": float(np.mean([r["epochs"] for r in done if r["method"] != "full"])),
                      "train_tokens_mean": float(np.mean([r["train_tokens"] for r in done]))}
    return out


def merge_results(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One results dictionary from runs of the same spec on different seeds (e.g. two processes,
    or a partial file and the rest): runs pooled (a (regime, method, budget, seed) once, first
    wins), summaries recomputed; the pool and scores must be the same (checked on the quality
    means by planted kind)."""
    base = parts[0]
    for other in parts[1:]:
        if other["config"]["quality_by_kind"] != base["config"]["quality_by_kind"] or \
                other["config"]["dedup"] != {**base["config"]["dedup"], "seconds": other["config"]["dedup"]["seconds"]}:
            raise ValueError("merge: the parts were scored differently (different pool, scores or dedup)")
    seen: set[tuple[Any, ...]] = set()
    runs = []
    for part in parts:
        for r in part["runs"]:
            key = (r["regime"], r["method"], r["budget"], r["seed"])
            if key not in seen:
                seen.add(key)
                runs.append(r)
    seeds = sorted({r["seed"] for r in runs})
    spec = BenchSpec.model_validate({**base["spec"], "seeds": seeds})
    regimes = regime_summaries(runs, spec)
    first = next(iter(regimes))
    timings = dict(base["timings"])
    timings["total"] = round(sum(p["timings"]["total"] for p in parts), 2)
    timings["training"] = round(sum(p["timings"]["training"] for p in parts), 2)
    timings["selection"] = round(sum(p["timings"]["selection"] for p in parts), 2)
    return {**base, "spec": spec.model_dump(mode="json"), "seeds": seeds, "runs": runs,
            "summary": regimes[first]["summary"], "regimes": regimes, "noise": noise_rows(runs, spec),
            "timings": timings, "parts": [{"seeds": sorted({r["seed"] for r in p["runs"]}), "timings": p["timings"],
                                           "command": p.get("command")} for p in parts]}


def noise_rows(runs: list[dict[str, Any]], spec: BenchSpec) -> list[dict[str, Any]]:
    """The seed-to-seed std of the paired differences (the same picks, vs random and the pairs)
    under the regime `noise_check[0]` and its baseline recipe `noise_check[1]`."""
    if spec.noise_check is None:
        return []
    new, old = spec.noise_check
    regs = spec.regime_specs()
    out = []
    for name in (new, old):
        sub = [r for r in runs if r["regime"] == name]
        methods = list(regs[name][0].methods)
        pairs = [(m, "random") for m in methods if m not in ("random", "full")]
        pairs += [pr for pr in spec.pairs if set(pr) <= set(methods)]
        for row in compare_pairs(sub, pairs, spec.seeds):
            p = row["heldout_loss"]
            d = np.asarray(p["diffs"])
            out.append({"regime": name, "a": row["a"], "b": row["b"], "budget": row["budget"],
                        "std": float(d.std(ddof=1)) if len(d) > 1 else 0.0, "half_width": (p["hi"] - p["lo"]) / 2,
                        "mean": p["mean"], "n": p["n"]})
    return out


def _run_bench(spec: BenchSpec, quiet: bool, partial: Path | None) -> dict[str, Any]:
    t0 = time.perf_counter()
    p = spec.pool
    pool = build_pool(p.docs, p.junk, p.dup, p.dup_clusters, p.eval_docs, p.seed_docs, p.min_words, p.max_words,
                      p.seed)
    log(f"pool: {pool.info}", quiet)
    # the raw `tokenizers` object of thresher's byte-level BPE (same trainer, same EOS token)
    tok = train_bpe_tokenizer(pool.seed_texts, spec.model.vocab).backend_tokenizer
    eos = tok.token_to_id(EOS)
    vocab_size = tok.get_vocab_size()
    pool_docs, seed_docs, eval_docs = encode(tok, pool.texts), encode(tok, pool.seed_texts), encode(tok, pool.eval_texts)
    ctx = spec.model.context
    eval_data = blocks(eval_docs, ctx, eos)

    t = time.perf_counter()
    proxy = make_model(spec.model, vocab_size, seed=10_000 + p.seed)
    train_lm(proxy, blocks(seed_docs, ctx, eos), spec.train.model_copy(update={"steps": spec.scoring.proxy_steps,
                                                                              "epochs": None}),
             seed=10_000 + p.seed)
    scores = {"lm": -doc_losses(proxy, pool_docs, ctx)}
    if set(spec.scoring.quality) - {"lm"}:
        scores.update(heuristic_scores(pool.texts))
    parts = {k: scores[k] for k in spec.scoring.quality}
    quality = parts["lm"] if list(parts) == ["lm"] else np.sum([standardise(v) for v in parts.values()], axis=0)
    timings = {"proxy_quality": time.perf_counter() - t}
    t = time.perf_counter()
    emb = tfidf_svd(pool.texts, spec.scoring.dim, p.seed) if spec.scoring.embedding == "tfidf" \
        else minilm_embeddings(pool.texts)
    timings["embeddings"] = time.perf_counter() - t
    table = score_table(pool, quality, emb, np.array([len(d) for d in pool_docs]),
                        {k: standardise(v) for k, v in parts.items()} if len(parts) > 1 else None)
    junk, dup, clusters = pool.junk, pool.dup, np.asarray(pool.clusters)
    kinds = np.asarray(pool.kinds)
    quality_by_kind = {k: float(quality[kinds == k].mean()) for k in sorted(set(pool.kinds))}
    log(f"quality (mean by kind): {quality_by_kind}", quiet)

    n = table.num_rows
    dedup_info: dict[str, Any] | None = None
    keep_idx = np.arange(n)
    if spec.dedup is not None:
        t = time.perf_counter()
        keep, dedup_info = minhash_keep(pool.texts, spec.dedup)
        keep_idx = np.flatnonzero(keep)
        dedup_info.update(spec.dedup.model_dump(), kept=int(keep.sum()),
                          planted_dups_removed=int((~keep & dup).sum()),
                          planted_dups_kept=int((keep & dup).sum()),
                          removed_by_kind={k: int((~keep & (kinds == k)).sum()) for k in sorted(set(pool.kinds))},
                          seconds=round(time.perf_counter() - t, 2))
        log(f"dedup: {dedup_info}", quiet)
    table_kept, emb_kept = table.take(pa.array(keep_idx)), emb[keep_idx]
    cache: dict[tuple[str, float, int], tuple[np.ndarray, dict[str, Any]]] = {}

    def select_fn(method: dict[str, Any], budget: float, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
        """Select from the deduplicated pool (budget: a share of the whole pool), or from the pool
        as built with `raw: true`; the same (method, budget, seed) is selected once."""
        key = (repr(sorted(method.items())), budget, seed)
        if key not in cache:
            if method.get("raw") or len(keep_idx) == n:
                cache[key] = select(method, table, emb, budget, seed)
            else:
                sub = min(budget * n / len(keep_idx), 1.0)
                sel_k, stats = select(method, table_kept, emb_kept, sub, seed)
                sel = np.zeros(n, dtype=bool)
                sel[keep_idx[sel_k]] = True
                cache[key] = (sel, stats)
        return cache[key]

    def make_train_eval(tspec: TrainSpec) -> Any:
        def train_eval(sel: np.ndarray, seed: int) -> dict[str, Any]:
            model = make_model(spec.model, vocab_size, seed=seed)
            data = blocks([pool_docs[i] for i in np.flatnonzero(sel)], ctx, eos)
            curve = train_lm(model, data, tspec, seed=seed)
            n_dup = int(dup[sel].sum())
            covered = len(set(clusters[sel & dup].tolist()))
            return {"heldout_loss": eval_loss(model, eval_data), "train_loss_end": float(np.mean(curve[-10:])),
                    "docs": int(sel.sum()), "tokens": int(sum(len(pool_docs[i]) for i in np.flatnonzero(sel))),
                    "train_tokens": len(curve) * tspec.batch * ctx, "epochs": len(curve) * tspec.batch / len(data),
                    "junk_frac": float(junk[sel].mean()), "dup_frac": float(dup[sel].mean()),
                    "redundant_frac": float((n_dup - covered) / sel.sum()),
                    "junk_by_kind": {k: int((kinds[sel] == k).sum()) for k in ("shuffled", "boilerplate",
                                                                                 "random_chars", "repeated")},
                    "mean_quality": float(quality[sel].mean())}
        return train_eval

    runs: list[dict[str, Any]] = []
    regimes: dict[str, Any] = {}
    t_sel = t_train = 0.0

    def result() -> dict[str, Any]:
        tm = {**timings, "selection": t_sel, "training": t_train, "total": time.perf_counter() - t0}
        first = next(iter(regimes))
        return {"name": spec.name, "spec": spec.model_dump(mode="json"), "methods": list(spec.methods),
                "budgets": regimes[first]["budgets"], "seeds": spec.seeds, "runs": runs,
                "summary": regimes[first]["summary"], "regimes": regimes,
                "noise": noise_rows(runs, spec) if spec.noise_check and set(spec.noise_check) <= set(regimes) else [],
                "config": {"pool_docs": len(pool.texts), "pool": pool.info, "vocab": vocab_size,
                           "train_tokens": spec.train.steps * spec.train.batch * ctx,
                           "eval_tokens": int(eval_data.numel()), "quality_by_kind": quality_by_kind,
                           "quality": list(parts), "embedding": spec.scoring.embedding, "dedup": dedup_info,
                           "threads": torch.get_num_threads()},
                "timings": {k: round(v, 2) for k, v in tm.items()},
                "notes": ["ICon is not run: it selects instruction (SFT) data, and this pool is pre-training text "
                          f"(`{COMMAND} jobs/bench_selection_icon.yaml` runs it on instruction data)."]}

    regime_specs = spec.regime_specs()
    for seed in spec.seeds:  # seeds outermost: a run cut short keeps every regime of the seeds done
        for rname, (rspec, about) in regime_specs.items():
            rr, ts, tt = run_methods(rspec.model_copy(update={"seeds": [seed]}), table, emb,
                                     make_train_eval(rspec.train), quiet, select_fn=select_fn, tag=f"[{rname}] ")
            t_sel, t_train = t_sel + ts, t_train + tt
            for r in rr:
                r["regime"] = rname
            runs += rr
            regimes = regime_summaries(runs, spec)
            if partial is not None:  # the runs so far (a long run cut short keeps them)
                partial.parent.mkdir(parents=True, exist_ok=True)
                write_text_atomic(json.dumps(result(), indent=2), partial)
    return result()


def _verdicts(res: dict[str, Any]) -> list[str]:
    """Per method and regime: Δ vs random and vs quality top-k (95% interval, verdict)."""
    lines = ["| method | regime | budget | Δ vs random [95% CI] | verdict | Δ vs topk_quality [95% CI] | verdict |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for rname, reg in res["regimes"].items():
        by = {(s["method"], s["budget"]): s for s in reg["summary"]}
        runs = [r for r in res["runs"] if r["regime"] == rname]
        vs_top = {(row["a"], row["budget"]): row["heldout_loss"]
                  for row in compare_pairs(runs, [(m, "topk_quality") for m in reg["methods"]], res["seeds"])}
        rnd = {(r["budget"], r["seed"]): r["heldout_loss"] for r in runs if r["method"] == "random"}
        for (m, b), srow in by.items():
            if m == "random":
                continue
            pr = (srow.get("vs_random") or {}).get("heldout_loss")
            if m == "full" and len(reg["budgets"]) == 1:  # all data against a random pick of the budget
                fr = {r["seed"]: r["heldout_loss"] for r in runs if r["method"] == "full"}
                sd = [x for x in res["seeds"] if x in fr and (reg["budgets"][0], x) in rnd]
                if sd:
                    pr = paired([fr[x] for x in sd], [rnd[(reg["budgets"][0], x)] for x in sd]).as_dict()
            pt = vs_top.get((m, b)) if m != "topk_quality" else None
            lines.append(f"| {m} | {rname} | {b:g} | {_fmt(pr)} | {pr['verdict'] if pr else '–'} | {_fmt(pt)} "
                         f"| {pt['verdict'] if pt else '–'} |")
    return lines


def _fmt(p: dict[str, Any] | None) -> str:
    return "–" if p is None else f"{p['mean']:+.3f} [{p['lo']:+.3f}, {p['hi']:+.3f}]"


def markdown(res: dict[str, Any]) -> str:
    """The results tables (and the set-up) as Markdown."""
    c, sp = res["config"], res["spec"]
    dd = c.get("dedup")
    qual = c.get("quality", ["lm"])
    lines = [f"# Selection quality: {res['name']}", "",
             f"Pool: {c['pool_docs']:,} BBC News documents ({c['pool']['clean']} clean, {c['pool']['junk']} planted "
             f"junk, {c['pool']['dup']} planted near-duplicates in {c['pool']['dup_clusters']} clusters); held-out: "
             f"{c['pool']['eval_docs']} clean documents from other articles ({c['eval_tokens']:,} tokens). "
             f"Each selection trains the same GPT-2 ({sp['model']['n_layer']} layers, d={sp['model']['n_embd']}, "
             f"context {sp['model']['context']}, BPE vocab {c['vocab']}) from the same initialisation per seed. "
             f"Seeds: {res['seeds']}. Embeddings: {c['embedding']}.", "",
             "Quality: " + (" + ".join(qual) + " (each standardised over the pool, then summed, as DATAMASK sums "
                            "three classifiers; lm = minus the loss of a tiny GPT-2 trained on "
                            f"{c['pool']['seed_docs']} clean seed documents, gopher = minus the Gopher rules failed, "
                            "fineweb = share of lines ending in punctuation)" if len(qual) > 1 else
                            f"minus the loss of a tiny GPT-2 trained on {c['pool']['seed_docs']} clean seed documents")
             + ". Mean by planted kind: " + ", ".join(f"{k} {v:.2f}" for k, v in c["quality_by_kind"].items()) + ".",
             ""]
    if dd:
        lines += [f"Deduplicated first (MinHash, {dd['n']}-word shingles, Jaccard ≥ {dd['threshold']}, "
                  f"{dd['num_perm']} permutations = {dd['bands']} bands x {dd['rows']} rows, verified; lowest id "
                  f"kept): {dd['removed']} documents removed in {dd['clusters']} clusters, {dd['kept']:,} kept; "
                  f"planted near-duplicates removed {dd['planted_dups_removed']}, left "
                  f"{dd['planted_dups_kept']}; removed by kind {dd['removed_by_kind']}. Every method selects from "
                  "the deduplicated pool (budget = share of the whole pool) except those marked `raw: true` "
                  "(`random_raw`: random from the pool as built).", ""]
    for rname, reg in res["regimes"].items():
        tr = reg["train"]
        how = (f"{tr['epochs']:g} epochs over each pick (training tokens = {tr['epochs']:g} x the pick's tokens)"
               if tr.get("epochs") else f"a fixed {tr['steps']} steps x {tr['batch']} blocks for every pick")
        lines += [f"## Regime `{rname}`", "", (reg["about"] + " " if reg["about"] else "") +
                  f"Training: {how}; mean {reg['train_tokens_mean']:,.0f} tokens, {reg['epochs_mean']:.1f} passes "
                  f"over the pick; peak LR {tr['lr']:g}, cosine to {tr['final_lr']:g} of it"
                  + (f", weights averaged over the last {tr['average']:.0%} of steps" if tr["average"] else "")
                  + ".", "", *summary_table(reg["summary"]), ""]
        if tr.get("epochs"):  # passes are fixed, so a pick of shorter documents trains on fewer tokens
            rr = [r for r in res["runs"] if r["regime"] == rname]
            toks = {m: np.mean([r["train_tokens"] for r in rr if r["method"] == m]) for m in reg["methods"]}
            lines += ["Training tokens (mean over seeds; a pick of shorter documents trains on fewer, which is part "
                      "of the difference measured here): " + ", ".join(f"{m} {v:,.0f}" for m, v in toks.items()
                                                                       if np.isfinite(v)) + ".", ""]
        if reg["pairs"]:
            lines += ["Key pairs:", "", *pairs_table(reg["pairs"]), ""]
    lines += ["## Verdicts", "", "Paired 95% intervals of the held-out loss difference (negative = the method is "
              "better); helps / hurts when the interval excludes 0, else not resolved. `full` (all of the deduplicated "
              "pool) is compared with random at the regime's budget.", "", *_verdicts(res), ""]
    if res.get("noise"):
        new, old = sp["noise_check"]
        by = {(r["regime"], r["a"], r["b"], r["budget"]): r for r in res["noise"]}
        lines += ["## Noise of the training recipe", "",
                  f"The same picks and seeds trained with regime `{new}`'s recipe and with `{old}`'s: the "
                  "seed-to-seed std of the paired differences and the half-width of their 95% interval.", "",
                  f"| A − B | budget | std `{old}` | std `{new}` | ±95% `{old}` | ±95% `{new}` |",
                  "| --- | --- | ---: | ---: | ---: | ---: |"]
        for (rg, a, b, bud), r in by.items():
            if rg != new or (old, a, b, bud) not in by:
                continue
            o = by[(old, a, b, bud)]
            lines.append(f"| {a} − {b} | {bud:g} | {o['std']:.4f} | {r['std']:.4f} | {o['half_width']:.4f} "
                         f"| {r['half_width']:.4f} |")
        lines.append("")
    worse = not_beating_random(res["summary"])
    lines += ["junk / near-dup: share of the selection that is planted junk / planted near-duplicates; redundant: "
              "near-duplicates beyond the first of each cluster selected.", ""]
    lines.append(f"Does not beat random (mean Δ ≥ 0, regime `{next(iter(res['regimes']))}`): "
                 + (", ".join(worse) if worse else "none") + ".")
    lines += [""] + [f"- {n}" for n in res["notes"]]
    t = res["timings"]
    if res.get("parts"):
        lines += ["", "Merged from " + "; ".join(f"seeds {pt['seeds']} ({pt['timings']['total']:.0f} s)"
                                                for pt in res["parts"]) + "; run time below = their sum."]
    lines += ["", f"Run time: {t['total']:.0f} s on {c.get('threads', '?')} torch thread(s) (proxy "
              f"{t['proxy_quality']:.0f} s, embeddings {t['embeddings']:.0f} s, selection {t['selection']:.0f} s, "
              f"training {t['training']:.0f} s). Reproduce: `{res.get('command', COMMAND + ' jobs/bench_selection.yaml')}`.",
              ""]
    return "\n".join(lines)
