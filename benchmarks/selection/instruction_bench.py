"""The selection-quality benchmark in instruction mode (`mode: instruction`): selection for SFT data.

1. Build a synthetic instruction pool with planted wrong answers, garbled responses and
   near-duplicate prompt clusters, a clean held-out evaluation set and a separate clean
   assessment set for ICon (`benchmarks.selection.instruction_pool`).
2. Train a *reference* model once: the benchmark's small GPT-2 trained briefly on the whole
   unfiltered pool (SFT format, loss on responses). No plant label is used. It serves as
   - the quality proxy: quality = minus its mean response loss (perplexity top-k), and
   - ICon's in-context learner: the `icon` scorer loads it from a folder, puts each candidate
     before every assessment item as a one-shot demonstration and measures the perplexity
     drop against a random-character context (RICo). On CPU this is the only choice that fits:
     SmolLM2 would not run a few thousand candidates x 2 x assessment items in minutes, and
     a model that never saw the format shows no in-context learning.
   Embeddings (diversity, DATAMASK, the ICon probe): TF-IDF + SVD of prompt + response.
3. For each budget and seed, select with every method (thresher selector specs through the
   registry, `icon` included, plus `farthest_first` and `all`).
4. Fine-tune the same GPT-2 from the same initialisation per seed for the same number of token
   positions on each selection: examples are packed whole into blocks, prompt tokens are
   masked out of the loss (SFT: loss on the response and its end token only).
5. Held-out loss = mean response-token loss on the clean evaluation pairs, each scored alone.
   Mean ± std over seeds, paired differences against random, and the planted junk and
   near-duplicate share of each selection (`selection_quality.json` / `.md`, HTML report).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import torch
from pydantic import Field, model_validator

from benchmarks.selection.harness import (CommonSpec, ModelSpec, TrainSpec, log, make_model, not_beating_random,
                                          run_methods, summarize, summary_table, tfidf_svd, train_lm)
from benchmarks.selection.instruction_pool import JUNK_KINDS, TEMPLATE, InstructionPool, build_instruction_pool
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


class InstructionScoringSpec(Strict):
    reference_steps: int = Field(300, ge=1, description="steps of the reference model on the whole pool")
    dim: int = Field(64, ge=2, description="TF-IDF + SVD dimensions")


class IconSpec(Strict):
    """Settings of the `icon` scorer run on the pool (the `icon` selector is in `methods`)."""

    sample_fraction: float = Field(1.0, gt=0, le=1, description="share of the pool scored with ICL")
    random_control: bool = True
    seed: int = 42
    max_tokens_per_batch: int = Field(8192, gt=0)


class InstructionBenchSpec(CommonSpec):
    mode: Literal["instruction"] = "instruction"
    name: str = "bench-selection-icon"
    pool: InstructionPoolSpec = Field(default_factory=InstructionPoolSpec)
    scoring: InstructionScoringSpec = Field(default_factory=InstructionScoringSpec)
    icon: IconSpec = Field(default_factory=IconSpec)
    model: ModelSpec = Field(default_factory=lambda: ModelSpec(vocab=1024))
    train: TrainSpec = Field(default_factory=lambda: TrainSpec(steps=80, batch=8, warmup=8))
    methods: dict[str, dict[str, Any]] = Field(default_factory=lambda: {
        "random": {"type": "random"}, "full": {"type": "all"}, "topk_quality": {"type": "topk", "column": "quality"},
        "topk_diversity": {"type": "farthest_first"},
        "datamask_fl": {"type": "datamask", "quality": "quality", "embedding": "embedding_vector", "lam": 0.5,
                        "diversity": "fl", "steps": 300, "metric_norm": "group"},
        "icon": {"type": "icon", "classifier": "none"}})
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
    tok = sft_tokenizer(pool.texts, spec.model.vocab)
    eos = tok.convert_tokens_to_ids(EOS)
    vocab_size = len(tok)
    ctx = spec.model.context
    pool_ex = encode_pairs(tok, list(zip(pool.prompts, pool.responses)))
    eval_ex = encode_pairs(tok, pool.eval_pairs)
    kinds, tasks = np.asarray(pool.kinds), np.asarray(pool.tasks)
    junk, clusters = pool.junk, np.asarray(pool.clusters)

    # reference model: the small GPT-2 trained on the whole unfiltered pool (quality proxy, ICL model)
    t = time.perf_counter()
    ref = make_model(spec.model, vocab_size, seed=10_000 + p.seed)
    ids, labels = pack(pool_ex, ctx, eos)
    train_lm(ref, ids, spec.train.model_copy(update={"steps": spec.scoring.reference_steps}), seed=10_000 + p.seed,
             labels=labels)
    nll, cnt = response_nll(ref, pool_ex, eos, ctx)
    quality = -nll / np.maximum(cnt, 1)
    timings = {"reference": time.perf_counter() - t}
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
                                                       score[ok & ~(kinds == "garbled")]))
        log(f"icon score (mean by kind): {diagnostics['icon_by_kind']}  ({timings['icon_scoring']:.0f}s)", quiet)
    log(f"quality (mean by kind): {diagnostics['quality_by_kind']}  ({timings['reference']:.0f}s)", quiet)
    table = score_table(pool, quality, emb, np.array([len(q) + len(r) for q, r in pool_ex]), extra)
    save_scores(table, pool, Path(spec.output))

    def train_eval(sel: np.ndarray, seed: int) -> dict[str, Any]:
        model = make_model(spec.model, vocab_size, seed=seed)
        chosen = [pool_ex[i] for i in np.flatnonzero(sel)]
        ids, labels = pack(chosen, ctx, eos)
        curve = train_lm(model, ids, spec.train, seed=seed, labels=labels)
        return {"heldout_loss": heldout_loss(model, eval_ex, eos, ctx), "train_loss_end": float(np.mean(curve[-10:])),
                "docs": int(sel.sum()), "tokens": int(sum(len(q) + len(r) for q, r in chosen)),
                "response_tokens": int((labels != IGNORE).sum()), **composition(sel, kinds, clusters),
                "tasks": {k: int(v) for k, v in zip(*np.unique(tasks[sel], return_counts=True))},
                "mean_quality": float(quality[sel].mean())}

    runs, t_sel, t_train = run_methods(spec, table, emb, train_eval, quiet)
    timings.update(selection=t_sel, training=t_train, total=time.perf_counter() - t0)
    eval_tokens = int(sum(len(r) + 1 for _, r in eval_ex))
    return {"name": spec.name, "mode": "instruction", "spec": spec.model_dump(mode="json"),
            "methods": list(spec.methods), "budgets": spec.budgets, "seeds": spec.seeds, "runs": runs,
            "summary": summarize(runs, spec),
            "config": {"pool_docs": len(pool.ids), "pool": pool.info, "vocab": vocab_size,
                       "train_tokens": spec.train.steps * spec.train.batch * ctx, "eval_tokens": eval_tokens,
                       "diagnostics": diagnostics, "embedding": "tfidf", "threads": torch.get_num_threads()},
            "timings": {k: round(v, 2) for k, v in timings.items()},
            "notes": ["Reference model = the same small GPT-2 trained briefly on the whole unfiltered pool (responses "
                      "only). Quality = minus its mean response loss; ICon's in-context learner is that model too.",
                      "ICon = thresher's `icon` scorer (RICo score against the assessment set, random-character "
                      "control) and `icon` selector; with `classifier: none` the whole pool is scored and the top "
                      "budget by score is kept.",
                      "A plausible wrong answer changes an assessment response's perplexity only if the in-context "
                      "learner can tell right from wrong for that task; with a small reference model that is mostly "
                      "out of reach, so read ICon's row together with its AUC line above."]}


def _fmt(x: float | None) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.3f}"


def _short_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The keys of a method spec worth printing."""
    keys = ["type", "column", "quality", "lam", "diversity", "steps", "classifier"]
    if spec.get("type") == "datamask" or spec.get("classifier") == "logistic":
        keys.append("embedding")
    return {k: spec[k] for k in keys if k in spec and not (k == "steps" and spec.get("type") != "datamask")}


def markdown_instruction(res: dict[str, Any]) -> str:
    """The results table (and the set-up) of the instruction mode as Markdown."""
    c, sp = res["config"], res["spec"]
    pi, dg = c["pool"], c["diagnostics"]
    methods = {m: s for m, s in sp["methods"].items()}
    lines = [f"# Selection quality (instruction data): {res['name']}", "",
             f"Pool: {c['pool_docs']:,} synthetic instruction pairs over {len(pi['tasks'])} deterministic tasks "
             f"({', '.join(pi['tasks'])}): {pi['clean']} clean, {pi['junk']} planted junk ({pi['wrong']} plausible "
             f"wrong answers, {pi['garbled']} garbled responses), {pi['dup']} near-duplicate prompts in "
             f"{pi['dup_clusters']} clusters. Held-out: {pi['eval_docs']} clean pairs ({c['eval_tokens']:,} response "
             f"tokens; {pi['eval_prompts_in_pool']} of their prompts also occur in the pool); ICon assessment set: "
             f"{pi['assessment']} other clean pairs. Each selection fine-tunes the same GPT-2 "
             f"({sp['model']['n_layer']} layers, d={sp['model']['n_embd']}, context {sp['model']['context']}, BPE vocab "
             f"{c['vocab']}) from the same initialisation per seed for {c['train_tokens']:,} token positions "
             f"({sp['train']['steps']} steps x {sp['train']['batch']} packed blocks), loss on responses only; held-out "
             f"loss = mean response-token loss of the evaluation pairs, each scored alone. Seeds: {res['seeds']}.", "",
             *summary_table(res["summary"])]
    worse = not_beating_random(res["summary"])
    lines += ["", "junk: share of the selection with a planted wrong or garbled answer; near-dup: share in planted "
              "near-duplicate prompt clusters; redundant: near-duplicates beyond the first of each cluster selected.", "",
              "Does not beat random (mean Δ ≥ 0): " + (", ".join(worse) if worse else "none") + ".", ""]
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
        lines.append(f"ICon score (RICo, {dg['icon_scored']:,} pairs scored), mean by planted kind: "
                     + ", ".join(f"{k} {v:+.4f}" for k, v in dg["icon_by_kind"].items())
                     + f"; AUC clean-vs-junk {_fmt(dg.get('icon_auc_clean_vs_junk'))}, clean-vs-wrong "
                       f"{_fmt(dg.get('icon_auc_clean_vs_wrong'))}.")
    lines += [""] + [f"- {n}" for n in res["notes"]]
    t = res["timings"]
    parts = ", ".join(f"{k.replace('_', ' ')} {v:.0f} s" for k, v in t.items() if k != "total")
    lines += ["", f"Run time: {t['total']:.0f} s on {c.get('threads', '?')} torch thread(s) ({parts}). "
              f"Reproduce: `{res.get('command') or COMMAND + ' jobs/bench_selection_icon.yaml'}`.", ""]
    return "\n".join(lines)
