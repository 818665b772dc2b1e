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

import time
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import torch
from pydantic import Field

from benchmarks.selection.harness import (CommonSpec, log, make_model, not_beating_random, run_methods, summarize,
                                          summary_table, tfidf_svd, train_lm)
from benchmarks.selection.pool import Pool, build_pool
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


class ScoringSpec(Strict):
    proxy_steps: int = Field(200, ge=1, description="steps of the quality proxy on the seed set")
    embedding: str = Field("tfidf", pattern="^(tfidf|minilm)$")
    dim: int = Field(64, ge=2, description="TF-IDF + SVD dimensions")


class BenchSpec(CommonSpec):
    mode: Literal["pretrain"] = Field("pretrain", description="pretrain (this module) or instruction "
                                                               "(benchmarks.selection.instruction_bench)")
    name: str = "bench-selection"
    pool: PoolSpec = Field(default_factory=PoolSpec)
    scoring: ScoringSpec = Field(default_factory=ScoringSpec)
    methods: dict[str, dict[str, Any]] = Field(default_factory=lambda: {
        "random": {"type": "random"}, "topk_quality": {"type": "topk", "column": "quality"},
        "topk_diversity": {"type": "farthest_first"}, "full": {"type": "all"}})
    output: str = "out/bench_selection"


QUICK = {
    "seeds": [0, 1], "budgets": [0.2],
    "pool": {"docs": 500, "dup_clusters": 10, "eval_docs": 60, "seed_docs": 120},
    "scoring": {"proxy_steps": 200, "dim": 32},
    "model": {"vocab": 512, "n_embd": 64, "context": 64},
    "train": {"steps": 40, "batch": 8, "warmup": 5},
}


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


def score_table(pool: Pool, quality: np.ndarray, emb: np.ndarray, n_tokens: np.ndarray) -> pa.Table:
    """The narrow score table a selector sees (no labels)."""
    flat = pa.array(emb.reshape(-1), type=pa.float32())
    return pa.table({"id": pool.ids, "n_words": pa.array([len(t.split()) for t in pool.texts], pa.int64()),
                     "n_tokens": pa.array(n_tokens, pa.int64()), "quality": pa.array(quality, pa.float64()),
                     "embedding_vector": pa.FixedSizeListArray.from_arrays(flat, emb.shape[1])})


# -- the benchmark ----------------------------------------------------------------------------


def run_bench(spec: BenchSpec, quiet: bool = False) -> dict[str, Any]:
    """Run every (budget, method, seed); return the results dictionary (also the JSON file).
    `spec.threads` sets torch's threads for the run (restored afterwards)."""
    with torch_threads(spec.threads):
        return _run_bench(spec, quiet)


def _run_bench(spec: BenchSpec, quiet: bool) -> dict[str, Any]:
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
    log(f"quality proxy (mean by kind): {quality_by_kind}", quiet)

    def train_eval(sel: np.ndarray, seed: int) -> dict[str, Any]:
        model = make_model(spec.model, vocab_size, seed=seed)
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
                      f"(`{COMMAND} jobs/bench_selection_icon.yaml` runs it on instruction data).",
                      "Quality = minus the mean token loss of a tiny GPT-2 trained on the clean seed set."]}


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
              f"Reproduce: `{COMMAND} jobs/bench_selection.yaml`.", ""]
    return "\n".join(lines)
