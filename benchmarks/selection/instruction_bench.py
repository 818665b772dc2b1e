"""The selection-quality benchmark in instruction mode (`mode: instruction`): selection for SFT data.

1. Build a synthetic instruction pool with planted wrong answers, garbled responses and
   near-duplicate prompt clusters, a clean held-out evaluation set and a separate clean
   assessment set for ICon (`benchmarks.selection.instruction_pool`).
2. Pre-train a *base* model once: the benchmark's small GPT-2 on correct task instances in a
   plain notation without the instruction template (`world_corpus`), so that fine-tuning
   teaches the format and elicits what the base knows, as SFT does for an LLM (a GPT-2 of this
   size fine-tuned from scratch on a few hundred pairs answers nothing right: issue 18).
   The base is kept in the output folder and reused by a run with the same recipe.
3. Fine-tune a *reference* model once: the base on the whole unfiltered pool (SFT format, loss
   on responses). No plant label is used. It serves as
   - the quality proxy: quality = minus its mean response loss (perplexity top-k), and
   - ICon's in-context learner: the `icon` scorer loads it from a folder, puts each candidate
     before every assessment item as a one-shot demonstration and measures the perplexity
     drop against a random-character context (RICo). SmolLM2 is measured separately
     (`benchmarks/bench_icon.py --separation`): on CPU it scores a few candidates a minute.
   Embeddings (diversity, DATAMASK, the ICon probe): TF-IDF + SVD of prompt + response.
4. For each budget and seed, select with every method (thresher selector specs through the
   registry, `icon` included, plus `farthest_first` and `all`).
5. Fine-tune a copy of the base per selection for the same number of steps (the data order
   from the seed): examples are packed whole into blocks, prompt tokens are masked out of the
   loss (SFT: loss on the response and its end token only). A budget pick is seen for many
   epochs (data-constrained), the full pool for a few.
6. Metrics on the clean held-out pairs: response loss (mean response-token loss, each pair
   scored alone, overall and per task) and task accuracy (the answer generated greedily and
   exact-matched, overall and per task: `task_accuracy`). Paired 95% intervals against random
   at the same budget and seed for both (`benchmarks.stats.paired`), full data against random
   at each budget, and the planted junk and near-duplicate share of each selection
   (`selection_quality.json` / `.md`, HTML report).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import torch
from pydantic import Field, model_validator

from benchmarks.selection.harness import (CommonSpec, ModelSpec, TrainSpec, log, make_model, method_plan, run_methods,
                                          summarize, tfidf_svd, train_lm)
from benchmarks.selection.instruction_pool import (JUNK_KINDS, TASKS, TEMPLATE, InstructionPool,
                                                   build_instruction_pool, world_corpus)
from benchmarks.selection.task_accuracy import exact_match, greedy_answers
from thresher.common.atomic import atomic_path, write_text_atomic
from thresher.common.threads import torch_threads
from thresher.models.tiny import EOS, train_bpe_tokenizer
from thresher.specs import Strict

COMMAND = "python -m benchmarks.selection"
IGNORE = -100
Example = tuple[np.ndarray, np.ndarray]  # (templated prompt ids, response ids), no special tokens


# -- configuration ----------------------------------------------------------------------------


class InstructionPoolSpec(Strict):
    docs: int = Field(2000, ge=30)
    wrong: float = Field(0.15, ge=0, lt=1, description="share of pairs with a plausible wrong answer")
    garbled: float = Field(0.10, ge=0, lt=1, description="share of pairs with a garbled (noise) response")
    dup: float = Field(0.25, ge=0, lt=1, description="share of pairs in near-duplicate prompt clusters")
    dup_clusters: int = Field(20, ge=1)
    eval_docs: int = Field(300, ge=6)
    assessment: int = Field(40, ge=2, description="ICon assessment items (clean, not the eval set)")
    seed: int = 0


class BaseModelSpec(Strict):
    """The base model every fine-tuning starts from: the benchmark's GPT-2 pre-trained on a
    plain-notation corpus of correct task instances (`instruction_pool.world_corpus`: the tasks'
    world without the instruction template), as an LLM knows facts before SFT. `steps: 0`
    fine-tunes from random initialisation (the benchmark before issue 18)."""

    docs: int = Field(6000, ge=1, description="documents of the pre-training corpus (4 task lines each)")
    steps: int = Field(600, ge=0, description="pre-training steps (0: no base model)")
    batch: int = Field(16, ge=1)
    lr: float = Field(3e-3, gt=0)
    warmup: int = Field(50, ge=0)


class EvalSpec(Strict):
    task_accuracy: bool = Field(True, description="generate every held-out answer greedily and exact-match it")
    max_new_tokens: int = Field(24, ge=1)


class InstructionScoringSpec(Strict):
    reference_steps: int = Field(200, ge=1, description="steps of the reference model on the whole pool")
    dim: int = Field(64, ge=2, description="TF-IDF + SVD dimensions")


class IconSpec(Strict):
    """Settings of the `icon` scorer run on the pool (the `icon` selector is in `methods`)."""

    sample_fraction: float = Field(0.3, gt=0, le=1, description="share of the pool scored with ICL")
    random_control: bool = True
    seed: int = 42
    max_tokens_per_batch: int = Field(8192, gt=0)


class InstructionBenchSpec(CommonSpec):
    mode: Literal["instruction"] = "instruction"
    name: str = "bench-selection-icon"
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4])
    budgets: list[float] = Field(default_factory=lambda: [0.15])
    pool: InstructionPoolSpec = Field(default_factory=InstructionPoolSpec)
    scoring: InstructionScoringSpec = Field(default_factory=InstructionScoringSpec)
    icon: IconSpec = Field(default_factory=IconSpec)
    base: BaseModelSpec = Field(default_factory=BaseModelSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    model: ModelSpec = Field(default_factory=lambda: ModelSpec(vocab=1024))
    train: TrainSpec = Field(default_factory=lambda: TrainSpec(steps=150, batch=8, warmup=10))
    methods: dict[str, dict[str, Any]] = Field(default_factory=lambda: {
        "random": {"type": "random"}, "full": {"type": "all"}, "topk_quality": {"type": "topk", "column": "quality"},
        "topk_diversity": {"type": "farthest_first"},
        "datamask_fl": {"type": "datamask", "quality": "quality", "embedding": "embedding_vector", "lam": 0.5,
                        "diversity": "fl", "steps": 300, "metric_norm": "group"},
        "icon": {"type": "icon", "classifier": "logistic", "embedding": "embedding_vector"}})
    output: str = "out/bench_selection_icon"

    @model_validator(mode="after")
    def _icon_sample(self) -> InstructionBenchSpec:
        for name, m in self.methods.items():
            if m["type"] == "icon" and m.get("classifier", "logistic") == "none" \
                    and self.icon.sample_fraction < max(self.budgets):
                raise ValueError(f"methods.{name}: `classifier: none` selects among ICL-scored rows only; "
                                 f"icon.sample_fraction {self.icon.sample_fraction} is below the budget "
                                 f"{max(self.budgets)} (raise it or use `classifier: logistic`)")
        return self


QUICK_INSTRUCTION: dict[str, Any] = {
    "seeds": [0, 1], "budgets": [0.2],
    "pool": {"docs": 240, "dup_clusters": 6, "eval_docs": 36, "assessment": 8},
    "scoring": {"reference_steps": 30, "dim": 16},
    "base": {"docs": 200, "steps": 10, "batch": 8, "warmup": 2},
    "model": {"vocab": 400, "n_embd": 32, "n_head": 2, "context": 96},
    "train": {"steps": 12, "batch": 8, "warmup": 2},
}


# -- tokenisation, packing, loss ------------------------------------------------------------


def sft_tokenizer(texts: list[str], vocab: int) -> Any:
    """thresher's byte-level BPE (`thresher.models.tiny`), with `<|endoftext|>` put first by
    `add_special_tokens` (so the `icon` scorer's engine uses it as BOS, as the fine-tuning does)."""
    from tokenizers.processors import TemplateProcessing

    tok = train_bpe_tokenizer(texts, vocab)
    eos = tok.convert_tokens_to_ids(EOS)
    tok.backend_tokenizer.post_processor = TemplateProcessing(single=f"{EOS} $A", pair=f"{EOS} $A $B",
                                                              special_tokens=[(EOS, eos)])
    return tok


def encode_pairs(tok: Any, pairs: list[tuple[str, str]]) -> list[Example]:
    """(templated prompt, response) ids of each pair, each piece tokenised on its own."""
    raw = tok.backend_tokenizer
    qs = raw.encode_batch([TEMPLATE.format(prompt=q) for q, _ in pairs], add_special_tokens=False)
    rs = raw.encode_batch([a for _, a in pairs], add_special_tokens=False)
    return [(np.asarray(q.ids, np.int64), np.asarray(r.ids, np.int64)) for q, r in zip(qs, rs)]


def example_ids(ex: Example, eos: int, context: int) -> tuple[np.ndarray, np.ndarray]:
    """[eos] prompt response [eos] and its labels (prompt masked), cut to `context` tokens."""
    q, r = ex
    ids = np.concatenate([[eos], q, r, [eos]]).astype(np.int64)
    labels = ids.copy()
    labels[: 1 + len(q)] = IGNORE
    return ids[:context], labels[:context]


def pack(examples: list[Example], context: int, eos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole examples packed greedily, in order, into blocks of `context` tokens (padding: eos,
    not scored). Returns (input ids, labels)."""
    blocks_ids: list[np.ndarray] = []
    blocks_lab: list[np.ndarray] = []
    cur_ids: list[np.ndarray] = []
    cur_lab: list[np.ndarray] = []
    used = 0

    def close() -> None:
        ids = np.full(context, eos, np.int64)
        lab = np.full(context, IGNORE, np.int64)
        if cur_ids:
            ids[:used] = np.concatenate(cur_ids)
            lab[:used] = np.concatenate(cur_lab)
        blocks_ids.append(ids)
        blocks_lab.append(lab)

    for ex in examples:
        ids, lab = example_ids(ex, eos, context)
        if used + len(ids) > context:
            close()
            cur_ids, cur_lab, used = [], [], 0
        cur_ids.append(ids)
        cur_lab.append(lab)
        used += len(ids)
    if cur_ids:
        close()
    if not blocks_ids:
        return torch.zeros((0, context), dtype=torch.long), torch.zeros((0, context), dtype=torch.long)
    return torch.from_numpy(np.stack(blocks_ids)), torch.from_numpy(np.stack(blocks_lab))


@torch.no_grad()
def response_nll(model: torch.nn.Module, examples: list[Example], eos: int, context: int, batch: int = 64
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Summed loss and count of the response (+ end) tokens of each example, scored alone."""
    model.eval()
    total, count = np.zeros(len(examples)), np.zeros(len(examples), np.int64)
    seqs = [example_ids(ex, eos, context) for ex in examples]
    order = np.argsort([len(s[0]) for s in seqs], kind="stable")
    for s in range(0, len(order), batch):
        idx = order[s:s + batch]
        width = max(len(seqs[i][0]) for i in idx)
        x = torch.full((len(idx), width), eos, dtype=torch.long)
        y = torch.full((len(idx), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids, lab = seqs[i]
            x[row, :len(ids)] = torch.from_numpy(ids)
            y[row, :len(ids)] = torch.from_numpy(lab)
            mask[row, :len(ids)] = 1
        logits = model(input_ids=x, attention_mask=mask).logits[:, :-1].float()
        target = y[:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, ignore_index=IGNORE,
                                                reduction="none")
        total[idx] = nll.sum(1).numpy()
        count[idx] = (target != IGNORE).sum(1).numpy()
    return total, count


def heldout_loss(model: torch.nn.Module, examples: list[Example], eos: int, context: int) -> float:
    """Mean response-token loss over all held-out examples."""
    total, count = response_nll(model, examples, eos, context)
    return float(total.sum() / max(int(count.sum()), 1))


def pack_text(tok: Any, texts: list[str], eos: int, context: int) -> torch.Tensor:
    """Plain documents (every token a target) as `[eos] doc [eos] doc ...` cut into full blocks."""
    ids = [[eos, *e.ids] for e in tok.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]
    flat = np.fromiter((t for doc in ids for t in doc), np.int64)
    n = len(flat) // context
    if n == 0:
        raise ValueError(f"pack_text: {len(flat)} tokens do not fill one block of {context}")
    return torch.from_numpy(flat[: n * context].reshape(n, context))


def evaluate(model: torch.nn.Module, tok: Any, eval_ex: list[Example], answers: list[str], tasks: list[str],
             eos: int, context: int, spec: EvalSpec) -> dict[str, Any]:
    """Held-out response loss (overall and per task) and, with `spec.task_accuracy`, exact-match
    accuracy of the greedy answers (overall, per task as `acc_<task>`, and a few samples)."""
    total, count = response_nll(model, eval_ex, eos, context)
    t = np.asarray(tasks)
    out: dict[str, Any] = {"heldout_loss": float(total.sum() / max(int(count.sum()), 1)),
                           "loss_by_task": {k: float(total[t == k].sum() / max(int(count[t == k].sum()), 1))
                                            for k in sorted(set(tasks))}}
    if spec.task_accuracy:
        pred = greedy_answers(model, tok, [q for q, _ in eval_ex], eos, context, max_new_tokens=spec.max_new_tokens)
        em = exact_match(pred, answers, tasks)
        out.update(task_accuracy=em["accuracy"], accuracy_by_task=em["by_task"],
                   **{f"acc_{k}": v for k, v in em["by_task"].items()},
                   samples=[{"task": k, "gold": g, "answer": a} for k, g, a in list(zip(tasks, answers, pred))[:6]])
    return out


def pretrain_base(spec: InstructionBenchSpec, tok: Any, world: list[str], vocab_size: int, eos: int,
                  quiet: bool) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The base model: the GPT-2 from seed 20,000 + pool seed, pre-trained on the world corpus
    (`spec.base.steps` steps; none: as initialised)."""
    b = spec.base
    model = make_model(spec.model, vocab_size, seed=20_000 + spec.pool.seed)
    info: dict[str, Any] = {"steps": b.steps, "docs": len(world)}
    if not b.steps:
        return model, info
    # a finished base model is kept in the output folder and reused by a run with the same recipe
    key = {"base": b.model_dump(), "model": spec.model.model_dump(), "pool_seed": spec.pool.seed,
           "vocab": vocab_size, "world": hashlib.sha256("\n\n".join(world).encode()).hexdigest()}
    folder = Path(spec.output) / "base_model"
    meta = folder / "base.json"
    if meta.exists() and json.loads(meta.read_text()).get("key") == key:
        cached = json.loads(meta.read_text())["info"]
        model.load_state_dict(torch.load(folder / "weights.pt", weights_only=True))
        log(f"base model: reused {folder} (loss {cached.get('loss_end', float('nan')):.3f})", quiet)
        return model, {**cached, "reused": True}
    blocks = pack_text(tok, world, eos, spec.model.context)
    curve = train_lm(model, blocks, TrainSpec(steps=b.steps, batch=b.batch, lr=b.lr, warmup=b.warmup),
                     seed=20_000 + spec.pool.seed, label="base")
    info.update(blocks=len(blocks), loss_end=float(np.mean(curve[-20:])))
    log(f"base model: {b.steps} steps on {len(blocks)} blocks of world text, loss {info['loss_end']:.3f}", quiet)
    with atomic_path(folder) as tmp:
        tmp.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), tmp / "weights.pt")
        (tmp / "base.json").write_text(json.dumps({"key": key, "info": info}))
    return model, info


# -- scoring ----------------------------------------------------------------------------------


def icon_columns(spec: InstructionBenchSpec, pool: InstructionPool, model: torch.nn.Module, tok: Any,
                 folder: Path) -> dict[str, pa.Array]:
    """Run thresher's `icon` scorer over the pool with `model` (saved to `folder`) as the
    in-context learner and the pool's assessment set; its columns, one value per pool row."""
    from thresher.models.loading import clear_cache
    from thresher.scorers.registry import build_scorer

    model_dir = folder / "reference_model"
    with atomic_path(model_dir) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    assess = folder / "assessment.jsonl"
    write_text_atomic("".join(json.dumps({"prompt": q, "response": a}) + "\n" for q, a in pool.assessment_pairs),
                      assess)
    ic = spec.icon
    scorer = build_scorer({"type": "icon", "model": str(model_dir), "assessment": str(assess), "template": TEMPLATE,
                           "sample_fraction": ic.sample_fraction, "random_control": ic.random_control,
                           "seed": ic.seed, "max_tokens_per_batch": ic.max_tokens_per_batch, "device": "cpu",
                           "torch_threads": spec.threads})
    parts: dict[str, list[pa.Array]] = {}
    try:
        for s in range(0, len(pool.ids), 256):
            batch = pa.RecordBatch.from_pydict({"id": pool.ids[s:s + 256], "prompt": pool.prompts[s:s + 256],
                                                "response": pool.responses[s:s + 256]})
            for name, arr in scorer(batch).items():
                parts.setdefault(name, []).append(arr)
    finally:
        clear_cache()
    return {name: pa.concat_arrays(arrs) for name, arrs in parts.items()}


def score_table(pool: InstructionPool, quality: np.ndarray, emb: np.ndarray, n_tokens: np.ndarray,
                extra: dict[str, pa.Array]) -> pa.Table:
    """The narrow score table the selectors see (no plant labels)."""
    flat = pa.array(emb.reshape(-1), type=pa.float32())
    cols = {"id": pa.array(pool.ids), "n_words": pa.array([len(t.split()) for t in pool.texts], pa.int64()),
            "n_tokens": pa.array(n_tokens, pa.int64()), "quality": pa.array(quality, pa.float64()),
            "embedding_vector": pa.FixedSizeListArray.from_arrays(flat, emb.shape[1])}
    return pa.table({**cols, **extra})


def by_kind(values: np.ndarray, kinds: np.ndarray) -> dict[str, float]:
    """Mean of `values` (NaN ignored) per planted kind."""
    return {k: float(np.nanmean(values[kinds == k])) for k in sorted(set(kinds.tolist()))
            if np.isfinite(values[kinds == k]).any()}


def composition(sel: np.ndarray, kinds: np.ndarray, clusters: np.ndarray) -> dict[str, Any]:
    """What a selection holds, from the plant labels: junk (wrong + garbled) and near-duplicate
    shares, redundant share (near-duplicates beyond the first of each cluster) and junk counts."""
    sel = np.asarray(sel, bool)
    n = max(int(sel.sum()), 1)
    junk = np.isin(kinds, JUNK_KINDS)
    dup = kinds == "dup"
    n_dup = int((sel & dup).sum())
    covered = len(set(clusters[sel & dup].tolist()))
    return {"junk_frac": float((sel & junk).sum() / n), "dup_frac": n_dup / n,
            "redundant_frac": (n_dup - covered) / n,
            "junk_by_kind": {k: int((sel & (kinds == k)).sum()) for k in JUNK_KINDS}}


def save_scores(table: pa.Table, pool: InstructionPool, out: Path) -> None:
    """`pool_scores.parquet`: the score table (without embeddings) beside the plant labels, for
    inspection (the selectors never see the label columns)."""
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    keep = table.drop_columns(["embedding_vector"])
    labels = {"prompt": pool.prompts, "response": pool.responses, "task": pool.tasks, "kind": pool.kinds,
              "cluster": pool.clusters}
    for name, values in labels.items():
        keep = keep.append_column(f"label_{name}" if name in ("kind", "cluster", "task") else name, pa.array(values))
    with atomic_path(out / "pool_scores.parquet") as tmp:
        pq.write_table(keep, tmp)


# -- the benchmark ----------------------------------------------------------------------------


NOTES = [
    "Reference model = the base model fine-tuned briefly on the whole unfiltered pool (responses only; no plant "
    "label). Quality = minus its mean response loss; ICon's in-context learner is that model too.",
    "ICon = thresher's `icon` scorer (RICo score against the assessment set, random-character control) on a seeded "
    "sample of the pool (`icon.sample_fraction`) and the `icon` selector: with `classifier: logistic` a probe on the "
    "embeddings learns the top-15% labels of the sample and scores the whole pool (the paper's classifier stage); "
    "with `classifier: none` the top budget by raw score is kept (the whole pool must be scored).",
    "A plausible wrong answer changes an assessment response's perplexity only if the in-context learner can tell "
    "right from wrong for that task; read ICon's row together with its AUC line above, and SmolLM2's in "
    "benchmarks/results/icon_separation.md.",
]


def metrics(spec: InstructionBenchSpec) -> dict[str, bool]:
    """The metrics compared with random (name -> lower is better): response loss and, with task
    accuracy on, accuracy overall and per task (`acc_<task>`)."""
    out = {"heldout_loss": True}
    if spec.eval.task_accuracy:
        out.update({"task_accuracy": False, **{f"acc_{t}": False for t in TASKS}})
    return out


def vs_full(runs: list[dict[str, Any]], spec: InstructionBenchSpec, metrics: dict[str, bool]
            ) -> list[dict[str, Any]]:
    """Full data against random at each budget, paired by seed (`benchmarks.stats.paired`):
    does training on everything beat a random pick of the budget?"""
    from benchmarks.stats import paired

    full = [m for m, s in spec.methods.items() if s["type"] == "all"]
    by = {(r["method"], r["budget"], r["seed"]): r for r in runs}
    out = []
    for f in full:
        for b in spec.budgets:
            seeds = [s for s in spec.seeds if (f, 1.0, s) in by and ("random", b, s) in by]
            if seeds:
                out.append({"method": f, "budget": b, "n_seeds": len(seeds),
                            "vs_random": {k: paired([by[(f, 1.0, s)][k] for s in seeds],
                                                    [by[("random", b, s)][k] for s in seeds], lower).as_dict()
                                          for k, lower in metrics.items()}})
    return out


def run_instruction_bench(spec: InstructionBenchSpec, quiet: bool = False) -> dict[str, Any]:
    """Run every (budget, method, seed) on instruction data; the results dictionary (JSON).
    `spec.threads` sets torch's threads for the run (restored afterwards)."""
    with torch_threads(spec.threads):
        return _run_instruction_bench(spec, quiet)


def _run_instruction_bench(spec: InstructionBenchSpec, quiet: bool) -> dict[str, Any]:
    from thresher.selectors.icon import auc

    t0 = time.perf_counter()
    p = spec.pool
    pool = build_instruction_pool(p.docs, p.wrong, p.garbled, p.dup, p.dup_clusters, p.eval_docs, p.assessment,
                                  p.seed)
    log(f"pool: {pool.info}", quiet)
    world = world_corpus(spec.base.docs, p.seed) if spec.base.steps else []
    tok = sft_tokenizer(pool.texts + world, spec.model.vocab)
    eos = tok.convert_tokens_to_ids(EOS)
    vocab_size = len(tok)
    ctx = spec.model.context
    pool_ex = encode_pairs(tok, list(zip(pool.prompts, pool.responses)))
    eval_ex = encode_pairs(tok, pool.eval_pairs)
    kinds, tasks = np.asarray(pool.kinds), np.asarray(pool.tasks)
    junk, clusters = pool.junk, np.asarray(pool.clusters)

    eval_answers, eval_tasks = [a for _, a in pool.eval_pairs], pool.eval_tasks
    t = time.perf_counter()
    base, base_info = pretrain_base(spec, tok, world, vocab_size, eos, quiet)
    timings = {"base": time.perf_counter() - t}
    base_info["eval"] = {k: v for k, v in evaluate(base, tok, eval_ex, eval_answers, eval_tasks, eos, ctx,
                                                   spec.eval).items() if not k.startswith("acc_")}

    # reference model: the base fine-tuned on the whole unfiltered pool (quality proxy, ICL model)
    t = time.perf_counter()
    ref = copy.deepcopy(base)
    ids, labels = pack(pool_ex, ctx, eos)
    train_lm(ref, ids, spec.train.model_copy(update={"steps": spec.scoring.reference_steps}), seed=10_000 + p.seed,
             labels=labels)
    nll, cnt = response_nll(ref, pool_ex, eos, ctx)
    quality = -nll / np.maximum(cnt, 1)
    timings["reference"] = time.perf_counter() - t
    t = time.perf_counter()
    emb = tfidf_svd(pool.texts, spec.scoring.dim, p.seed)
    timings["embeddings"] = time.perf_counter() - t
    diagnostics: dict[str, Any] = {"quality_by_kind": by_kind(quality, kinds),
                                   "quality_auc_clean_vs_junk": auc(~junk, quality)}
    extra: dict[str, pa.Array] = {}
    if any(m["type"] == "icon" for m in spec.methods.values()):
        t = time.perf_counter()
        out = Path(spec.output)
        out.mkdir(parents=True, exist_ok=True)
        extra = icon_columns(spec, pool, ref, tok, out)
        timings["icon_scoring"] = time.perf_counter() - t
        score = extra["icon_score"].to_numpy(zero_copy_only=False).astype(np.float64)
        ok = np.isfinite(score)
        diagnostics.update(icon_by_kind=by_kind(score, kinds), icon_scored=int(ok.sum()),
                           icon_auc_clean_vs_junk=auc(~junk[ok], score[ok]),
                           icon_auc_clean_vs_wrong=auc(kinds[ok & ~(kinds == "garbled")] != "wrong",
                                                       score[ok & ~(kinds == "garbled")]),
                           icon_auc_clean_vs_garbled=auc(kinds[ok & ~(kinds == "wrong")] != "garbled",
                                                         score[ok & ~(kinds == "wrong")]))
        log(f"icon score (mean by kind): {diagnostics['icon_by_kind']}  ({timings['icon_scoring']:.0f}s)", quiet)
    log(f"quality (mean by kind): {diagnostics['quality_by_kind']}  ({timings['reference']:.0f}s)", quiet)
    table = score_table(pool, quality, emb, np.array([len(q) + len(r) for q, r in pool_ex]), extra)
    save_scores(table, pool, Path(spec.output))

    def train_eval(sel: np.ndarray, seed: int) -> dict[str, Any]:
        model = copy.deepcopy(base) if spec.base.steps else make_model(spec.model, vocab_size, seed=seed)
        chosen = [pool_ex[i] for i in np.flatnonzero(sel)]
        ids, labels = pack(chosen, ctx, eos)
        curve = train_lm(model, ids, spec.train, seed=seed, labels=labels)
        return {**evaluate(model, tok, eval_ex, eval_answers, eval_tasks, eos, ctx, spec.eval),
                "train_loss_end": float(np.mean(curve[-10:])), "steps": len(curve), "blocks": len(ids),
                "docs": int(sel.sum()), "tokens": int(sum(len(q) + len(r) for q, r in chosen)),
                "response_tokens": int((labels != IGNORE).sum()), **composition(sel, kinds, clusters),
                "tasks": {k: int(v) for k, v in zip(*np.unique(tasks[sel], return_counts=True))},
                "mean_quality": float(quality[sel].mean())}

    eval_tokens = int(sum(len(r) + 1 for _, r in eval_ex))

    def result(runs: list[dict[str, Any]]) -> dict[str, Any]:
        return {"name": spec.name, "mode": "instruction", "spec": spec.model_dump(mode="json"),
                "methods": list(spec.methods), "budgets": spec.budgets, "seeds": spec.seeds, "runs": runs,
                "summary": summarize(runs, spec, metrics(spec)), "vs_full": vs_full(runs, spec, metrics(spec)),
                "config": {"pool_docs": len(pool.ids), "pool": pool.info, "vocab": vocab_size,
                           "train_tokens": spec.train.steps * spec.train.batch * ctx, "eval_tokens": eval_tokens,
                           "diagnostics": diagnostics, "embedding": "tfidf", "threads": torch.get_num_threads(),
                           "base": base_info, "load_avg_1min": os.getloadavg()[0]},
                "timings": {k: round(v, 2) for k, v in timings.items()},
                "notes": NOTES}

    # after every seed: the results so far (selection_quality.partial.json / .md) for a run cut short
    plan = method_plan(spec.methods, spec.budgets)
    done: list[dict[str, Any]] = []

    def train_eval_saved(sel: np.ndarray, seed: int) -> dict[str, Any]:
        record = train_eval(sel, seed)
        name, budget = plan[len(done) % len(plan)]
        done.append({"method": name, "budget": budget, "seed": seed, **record})
        if len(done) % len(plan) == 0:
            timings.update(total=time.perf_counter() - t0)
            part = result(done)
            part["seeds"] = [s_ for s_ in spec.seeds if any(r["seed"] == s_ for r in done)]
            part["partial"] = True
            out = Path(spec.output)
            write_text_atomic(json.dumps(part, indent=2), out / "selection_quality.partial.json")
            write_text_atomic(markdown_instruction(part), out / "selection_quality.partial.md")
        return record

    runs, t_sel, t_train = run_methods(spec, table, emb, train_eval_saved, quiet)
    timings.update(selection=t_sel, training=t_train, total=time.perf_counter() - t0)
    return result(runs)


def _fmt(x: float | None) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.3f}"


def _short_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The keys of a method spec worth printing."""
    keys = ["type", "column", "quality", "lam", "diversity", "steps", "classifier"]
    if spec.get("type") == "datamask" or spec.get("classifier") == "logistic":
        keys.append("embedding")
    return {k: spec[k] for k in keys if k in spec and not (k == "steps" and spec.get("type") != "datamask")}


VERDICT = {"helps": "helps", "hurts": "does not help here (worse than random)", "not resolved": "not resolved"}
SHORT = {"helps": "helps", "hurts": "worse", "not resolved": "not resolved"}


def _ci(p: dict[str, Any] | None, digits: int = 3) -> str:
    if p is None:
        return "–"
    f = f"{{:+.{digits}f}}"
    return f"{f.format(p['mean'])} [{f.format(p['lo'])}, {f.format(p['hi'])}]"


def _rows(res: dict[str, Any]) -> list[tuple[str, float, dict[str, Any], dict[str, Any] | None]]:
    """(method, budget, summary row, paired comparisons vs random) in table order: full against
    random at every budget, then every method at every budget."""
    summ = {(s["method"], s["budget"]): s for s in res["summary"]}
    out = []
    for f in res.get("vs_full", []):
        out.append((f["method"], f["budget"], summ[(f["method"], 1.0)], f["vs_random"]))
    for s in res["summary"]:
        if s["budget"] < 1:
            out.append((s["method"], s["budget"], s, s["vs_random"]))
    return out


def markdown_instruction(res: dict[str, Any]) -> str:
    """The results tables (and the set-up) of the instruction mode as Markdown."""
    c, sp = res["config"], res["spec"]
    pi, dg = c["pool"], c["diagnostics"]
    methods = {m: s for m, s in sp["methods"].items()}
    acc = sp.get("eval", {}).get("task_accuracy", False)
    base = c.get("base", {})
    steps = sorted({r.get("steps", sp["train"]["steps"]) for r in res["runs"]})
    lines = [f"# Selection quality (instruction data): {res['name']}", "",
             f"Pool: {c['pool_docs']:,} synthetic instruction pairs over {len(pi['tasks'])} deterministic tasks "
             f"({', '.join(pi['tasks'])}): {pi['clean']} clean, {pi['junk']} planted junk ({pi['wrong']} plausible "
             f"wrong answers, {pi['garbled']} garbled responses), {pi['dup']} near-duplicate prompts in "
             f"{pi['dup_clusters']} clusters. Held-out: {pi['eval_docs']} clean pairs ({c['eval_tokens']:,} response "
             f"tokens; {pi['eval_prompts_in_pool']} of their prompts also occur in the pool); ICon assessment set: "
             f"{pi['assessment']} other clean pairs.", "",
             (f"Base model: the GPT-2 ({sp['model']['n_layer']} layers, d={sp['model']['n_embd']}, context "
              f"{sp['model']['context']}, BPE vocab {c['vocab']}) pre-trained for {base['steps']} steps on "
              f"{base['docs']:,} documents of correct task instances in a plain notation without the instruction "
              f"template (`world_corpus`; loss {base.get('loss_end', float('nan')):.2f}); before fine-tuning it "
              f"answers {base.get('eval', {}).get('task_accuracy', 0):.1%} of the held-out prompts exactly "
              f"(response loss {base.get('eval', {}).get('heldout_loss', float('nan')):.2f}). "
              if base.get("steps") else "No base model: every fine-tuning starts from random initialisation. ")
             + f"Each selection fine-tunes a copy of it for {'/'.join(map(str, steps))} steps x "
             f"{sp['train']['batch']} packed blocks ({c['train_tokens']:,} token positions: several epochs over a "
             f"budget pick, fewer over the full pool), loss on responses only, the data order drawn from the seed. "
             "Metrics on the held-out pairs: response loss (mean response-token loss, each pair scored alone) and "
             + ("task accuracy (the answer generated greedily, exact match after whitespace normalisation). "
                if acc else "(task accuracy off). ") + f"Seeds: {res['seeds']}.", "",
             "Δ vs random: the method's metric minus random's at the same budget and seed (full data: against "
             "random at each budget), mean and 95% interval of the paired differences over seeds (Student t); "
             "loss: negative = better, accuracy: positive = better. Verdict: helps / worse when the interval "
             "excludes 0, else not resolved.", "",
             "| method | budget | docs | response loss | Δ loss [95% CI] | loss verdict | "
             + ("accuracy | Δ accuracy [95% CI] | accuracy verdict | " if acc else "")
             + "junk | near-dup | redundant |",
             "| --- | --- | ---: | --- | --- | --- | " + ("--- | --- | --- | " if acc else "")
             + "---: | ---: | ---: |"]
    for m, b, s, vs in _rows(res):
        name = f"{m} (all data)" if s["budget"] >= 1 else m
        pl = (vs or {}).get("heldout_loss")
        row = (f"| {name} | {b:g} | {s['docs']:,} | {s['loss_mean']:.4f} ± {s['loss_std']:.4f} | {_ci(pl)} "
               f"| {SHORT[pl['verdict']] if pl else '–'} | ")
        if acc:
            pa_ = (vs or {}).get("task_accuracy")
            row += (f"{s['means']['task_accuracy']:.3f} | {_ci(pa_)} | {SHORT[pa_['verdict']] if pa_ else '–'} | ")
        lines.append(row + f"{s['junk_frac']:.3f} | {s['dup_frac']:.3f} | {s['redundant_frac']:.3f} |")
    lines += ["", "junk: share of the selection with a planted wrong or garbled answer; near-dup: share in planted "
              "near-duplicate prompt clusters; redundant: near-duplicates beyond the first of each cluster selected.",
              ""]
    if acc:
        lines += ["Task accuracy by task (mean over seeds) and Δ vs random [95% CI]:", "",
                  "| method | budget | " + " | ".join(pi["tasks"]) + " |",
                  "| --- | --- | " + " | ".join(["---"] * len(pi["tasks"])) + " |"]
        for m, b, s, vs in _rows(res):
            cells = []
            for t in pi["tasks"]:
                p = (vs or {}).get(f"acc_{t}")
                cells.append(f"{s['means'][f'acc_{t}']:.3f}" + (f" ({_ci(p, 2)})" if p else ""))
            lines.append(f"| {m} | {b:g} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["Verdicts (paired 95% intervals against random at the same budget; full data against random at "
              "each budget):", ""]
    for m, b, s, vs in _rows(res):
        if not vs:
            continue
        parts = [f"response loss {VERDICT[vs['heldout_loss']['verdict']]} ({_ci(vs['heldout_loss'])})"]
        if acc:
            parts.append(f"task accuracy {VERDICT[vs['task_accuracy']['verdict']]} ({_ci(vs['task_accuracy'])})")
        lines.append(f"- **{m}** @ {b:g}: " + "; ".join(parts) + ".")
    lines.append("")
    # planted kinds per selection (mean over seeds)
    n_tasks = len(pi["tasks"])
    kinds_rows: dict[tuple[str, float], list[list[float]]] = {}
    for r in res["runs"]:
        shares = [r["tasks"].get(t, 0) / r["docs"] for t in pi["tasks"]]
        kinds_rows.setdefault((r["method"], r["budget"]), []).append(
            [r["junk_by_kind"][k] / r["docs"] for k in JUNK_KINDS] + [min(shares), max(shares)])
    lines += ["Planted junk by kind and task mix (share of the selection, mean over seeds; each task is "
              f"1/{n_tasks} = {1 / n_tasks:.3f} of the held-out set):", "",
              "| method | budget | " + " | ".join(JUNK_KINDS) + " | smallest task | largest task |",
              "| --- | --- | " + " | ".join(["---:"] * (len(JUNK_KINDS) + 2)) + " |"]
    for (m, b), vals in kinds_rows.items():
        lines.append(f"| {m} | {b:g} | " + " | ".join(f"{v:.3f}" for v in np.mean(vals, axis=0)) + " |")
    lines += ["", "Method specs: " + "; ".join(f"`{m}`: {json.dumps(_short_spec(s))}" for m, s in methods.items())
              + ".", ""]
    lines.append("Quality (minus the reference model's response loss), mean by planted kind: "
                 + ", ".join(f"{k} {v:.2f}" for k, v in dg["quality_by_kind"].items())
                 + f"; AUC clean-vs-junk {_fmt(dg.get('quality_auc_clean_vs_junk'))}.")
    if "icon_by_kind" in dg:
        lines.append(f"ICon score ({dg.get('icon_model', 'RICo')}, {dg['icon_scored']:,} pairs scored), mean by "
                     "planted kind: " + ", ".join(f"{k} {v:+.4f}" for k, v in dg["icon_by_kind"].items())
                     + f"; AUC clean-vs-junk {_fmt(dg.get('icon_auc_clean_vs_junk'))}, clean-vs-wrong "
                       f"{_fmt(dg.get('icon_auc_clean_vs_wrong'))}, clean-vs-garbled "
                       f"{_fmt(dg.get('icon_auc_clean_vs_garbled'))}.")
    lines += [""] + [f"- {n}" for n in res["notes"]]
    t = res["timings"]
    parts = ", ".join(f"{k.replace('_', ' ')} {v:.0f} s" for k, v in t.items() if k != "total")
    lines += ["", f"Run time: {t['total']:.0f} s on {c.get('threads', '?')} torch thread(s) ({parts}); 1-min load "
              f"average at the end {c.get('load_avg_1min', float('nan')):.1f} on 2 cores shared with other jobs "
              "(timings are upper bounds). Per-seed results: the JSON beside this file. "
              f"Reproduce: `{res.get('command') or COMMAND + ' jobs/bench_selection_icon.yaml'}`.", ""]
    return "\n".join(lines)
