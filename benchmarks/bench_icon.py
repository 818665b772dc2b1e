"""ICon scoring speed on CPU: naive one-pair-at-a-time full-sequence scoring vs the batched
engine (thresher.models.icl), step by step, at equal results (max |c_ij| difference).

Methods (all score the same candidate x assessment pairs, real and random context):
- naive: one full forward of [context, separator, item] per pair, no cache (HF-style);
- prefix cache: the context runs once, its KV cache is shared by length-sorted batches of the
  whole assessment items, rows x (prefix + width) within the token budget (the previous engine);
- + shared item head: the tokens every item starts with (the Alpaca template header) join the
  cached prefix, so continuations run only their item-specific tokens;
- + trimmed logits: the LM head runs only from each batch's first scored position on
  (the default engine);
- larger batches (opt-in): the expanded prefix cache may take 8x the token budget, so long
  (random) contexts no longer shrink batches to a few rows.

Timing is interleaved: every repetition runs each candidate under every method, in a random
order, so load from other jobs on a shared machine hits all methods alike; we report medians
over repetitions of wall time and of process CPU time, and the speed-up as the median of the
per-repetition ratios.

    .venv/bin/python benchmarks/bench_icon.py [--runs tiny:8x32 smollm2:3x24] [--reps 3] [--out FILE]
    .venv/bin/python benchmarks/bench_icon.py --demo-data out/icon_demo_data   # data for jobs/icon_demo.yaml
    .venv/bin/python benchmarks/bench_icon.py --separation smollm2:60x24 --out benchmarks/results/icon_separation.md

`--separation MODEL:PERxITEMS` answers a different question: do the ICon scores of a model separate
the planted junk of the selection benchmark's instruction pool from clean pairs? It draws PER
candidates of each planted kind (clean, wrong, garbled) from that pool (`jobs/bench_selection_icon.yaml`'s
pool), scores each against the first ITEMS assessment items with the prefix-KV engine (real and
random-character context), and reports AUC clean-vs-junk / -wrong / -garbled with bootstrap 95%
intervals, for RICo and for the v1-style score without the random control (same forwards).
`--tiny-scores out/bench_selection_icon/pool_scores.parquet` adds the benchmark's own (tiny-model)
ICon AUCs on the same candidates. Per-candidate scores go to a JSON file beside `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

TASKS = {
    "add": lambda r: (f"Add {(a := r.randint(1, 99))} and {(b := r.randint(1, 99))}.", str(a + b)),
    "reverse": lambda r: (f"Reverse the word '{(w := r.choice(['data', 'model', 'spark', 'token', 'shard']))}'.", w[::-1]),
    "upper": lambda r: (f"Write '{(w := r.choice(['hello world', 'data selection', 'fine tuning']))}' in capitals.", w.upper()),
    "copy": lambda r: (f"Repeat exactly: {(w := ' '.join(r.choice(['red', 'blue', 'green']) for _ in range(4)))}", w),
}

# engine settings per method (cache_factor: max_cache_tokens = factor x max_tokens_per_batch,
# None = the engine default); None = the naive reference
METHODS: dict[str, dict[str, Any] | None] = {
    "naive (one full forward per pair)": None,
    "prefix cache + batched continuations (previous engine)":
        {"cache_factor": None, "share_items_prefix": False, "trim_logits": False},
    "+ shared item head in the prefix": {"cache_factor": None, "share_items_prefix": True, "trim_logits": False},
    "+ trimmed logits (default engine)": {"cache_factor": None, "share_items_prefix": True, "trim_logits": True},
    "default engine, max_cache_tokens = 8x (larger batches, opt-in)":
        {"cache_factor": 8, "share_items_prefix": True, "trim_logits": True},
}


def demo_data(folder: Path, n: int = 600, n_assess: int = 40, seed: int = 0) -> None:
    """A synthetic instruction pool (25% wrong answers) and a clean assessment set."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        q, a = TASKS[rng.choice(sorted(TASKS))](rng)
        wrong = rng.random() < 0.25
        rows.append({"id": f"p{i}", "instruction": q, "output": (a[::-1] + "x") if wrong else a, "corrupted": wrong})
    (folder / "pool.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assess = [dict(zip(("prompt", "response"), TASKS[rng.choice(sorted(TASKS))](rng))) for _ in range(n_assess)]
    (folder / "assessment.jsonl").write_text("\n".join(json.dumps(r) for r in assess) + "\n")


def make_engine(model_name: str, max_tokens_per_batch: int) -> tuple[Any, str]:
    """The ICL engine for `tiny` (random-init Llama from a config) or `smollm2` (the local export)."""
    from thresher.models.icl import ICLEngine

    if model_name == "tiny":
        from conftest_models import train_tokenizer
        from transformers import LlamaConfig, LlamaForCausalLM

        tok = train_tokenizer(Path(tempfile.mkdtemp()) / "llama", "llama", vocab_size=500)
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                          num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024)
        model = LlamaForCausalLM(cfg).eval()
        eng = ICLEngine(model, tok, torch.device("cpu"), max_positions=1024, max_tokens_per_batch=max_tokens_per_batch)
        return eng, "Llama 4 layers x 256 hidden, vocab 500 (random init; tokenizer adds BOS), fp32"
    if model_name == "smollm2":
        from thresher.models.loading import ModelConfig, load_model

        lm = load_model(ModelConfig("smollm2", "causal_lm", device="cpu", dtype="float32"))
        eng = ICLEngine(lm.model, lm.tokenizer, lm.device, max_positions=lm.max_positions(),
                        max_tokens_per_batch=max_tokens_per_batch)
        return eng, "SmolLM2-135M-Instruct (30 layers x 576 hidden, vocab 49,152; local GGUF export), fp32"
    raise ValueError(f"unknown model {model_name!r} (tiny or smollm2)")


def bench(model_name: str, n_cand: int, n_items: int, reps: int, max_tokens_per_batch: int) -> dict:
    """Interleaved timing of all METHODS on the same pairs; equality against the naive scores."""
    from thresher.models.icl import shared_prefix_len

    torch.set_num_threads(2)
    eng, desc = make_engine(model_name, max_tokens_per_batch)
    rng = random.Random(1)
    items = [eng.item(*TASKS[rng.choice(sorted(TASKS))](rng)) for _ in range(n_items)]
    cands = [eng.candidate_text(*TASKS[rng.choice(sorted(TASKS))](rng)) + " Explanation follows. " * rng.randint(2, 8)
             for _ in range(n_cand)]
    names = list(METHODS)

    def configure(name: str) -> bool:
        cfg = dict(METHODS[name] or {})
        factor = cfg.pop("cache_factor", None)
        eng.max_cache_tokens = factor * max_tokens_per_batch if factor else None
        for k, v in cfg.items():
            setattr(eng, k, v)
        return METHODS[name] is None

    base = {}
    for name in names:  # once per worker in the scorer: not timed, but each method uses its own
        naive = configure(name)
        base[name] = eng.ppl(eng.bos, items, naive=naive)
    for name in names:  # warm-up
        naive = configure(name)
        eng.candidate_c("warm", cands[0], items, base[name], seed=0, naive=naive)
    wall = {n: np.zeros((reps, n_cand)) for n in names}
    cpu = {n: np.zeros((reps, n_cand)) for n in names}
    c = {n: np.zeros((n_cand, n_items)) for n in names}
    load = [os.getloadavg()[0]]
    order_rng = random.Random(2)
    for rep in range(reps):
        for j, text in enumerate(cands):
            for name in order_rng.sample(names, len(names)):  # a fresh random method order per candidate
                naive = configure(name)
                t, p = time.perf_counter(), time.process_time()
                c[name][j] = eng.candidate_c(f"c{j}", text, items, base[name], seed=0, naive=naive)
                wall[name][rep, j] = time.perf_counter() - t
                cpu[name][rep, j] = time.process_time() - p
        load.append(os.getloadavg()[0])
        print(f"{model_name} rep {rep + 1}/{reps}: " + ", ".join(f"{wall[n][rep].sum():.1f}s" for n in names),
              file=sys.stderr, flush=True)
    ref = names[0]
    rows = []
    for n in names:
        ratio = wall[ref] / wall[n]  # same candidate and repetition, run minutes apart at most
        rows.append({"method": n, "total_wall_s": float(np.median(wall[n].sum(1))),
                     "total_cpu_s": float(np.median(cpu[n].sum(1))), "cand_wall_s": float(np.median(wall[n])),
                     "speedup": float(np.median(ratio)), "speedup_q25": float(np.quantile(ratio, 0.25)),
                     "speedup_q75": float(np.quantile(ratio, 0.75)),
                     "speedup_total": float(wall[ref].sum() / wall[n].sum()),
                     "speedup_cpu": float(np.median(cpu[ref] / cpu[n])),
                     "max_abs_diff_c": float(np.abs(c[n] - c[ref]).max()),
                     "raw_wall_s": np.round(wall[n], 3).tolist()})
    real = [eng.context_ids(t, items) for t in cands]
    return {"model": model_name, "description": desc, "candidates": n_cand, "items": n_items, "reps": reps,
            "pairs": 2 * n_cand * n_items, "max_tokens_per_batch": max_tokens_per_batch,
            "mean_item_tokens": float(np.mean([len(i.ids) for i in items])),
            "mean_scored_tokens": float(np.mean([i.n_scored for i in items])),
            "shared_item_tokens": shared_prefix_len(items), "mean_context_tokens": float(np.mean([len(r) for r in real])),
            "load_avg_1min": load, "methods": rows}


NOTES = [
    "Notes:",
    "- naive = `ICLEngine.full_sequence_nll`: per pair one forward of `[bos] context sep item` with no cache and "
    "logits at every position (as an HF `labels` loss computes them), then fp32 cross-entropy on the response "
    "tokens; same tokenisation and pairs as the engine.",
    "- shared item head: the longest common token prefix of the items' existing ids (the Alpaca header), so "
    "tokenisation is unchanged and every scored sequence is token-for-token the naive one.",
    "- trimmed logits (`logits_to_keep`) pays with a real vocabulary (SmolLM2, 49k) and is neutral with vocab 500.",
    "- larger batches (`max_cache_tokens`) stay opt-in: on an idle CPU they were slower for the tiny model and "
    "only slightly faster for SmolLM2 (fewer, larger batches helped mainly under heavy CPU contention).",
    "- not cached: the random-context control (seeded per candidate, its own length: sharing it would change "
    "the score); the baseline PPL(S_i) is already computed once per worker. What remains per candidate is the "
    "two context forwards and the item-specific tokens (prompt, the template's response marker, response), "
    "which depend on the context. SmolLM2 continuation profile: matmul ~67%, attention ~15%, KV copies ~13%.",
    "- the speed-up grows with the number of assessment items (the two context forwards per candidate are "
    "amortised over them): n = 1,020 in the paper, 24-32 here.",
]


def markdown(results: list[dict], command: str) -> str:
    """The results file: machine note, one table per model, the command line."""
    u = platform.uname()
    lines = ["# ICon scoring speed: naive vs the batched engine (CPU)", "",
             f"Machine: {u.machine}, {os.cpu_count()} cores shared with other jobs (timings are noisy), "
             f"torch {torch.__version__}, 2 threads, fp32. A pair = one assessment item scored after one context "
             "(the candidate, or its random-character control); c_ij of every method is compared with the naive "
             "scores (each method also computes its own baseline PPL(S_i)).", "",
             "Timing: every candidate (both contexts, all items) runs under every method in a fresh random order, "
             "so load bursts from other jobs hit the methods alike; a run = one candidate under one method. The "
             "headline speed-up is the median over runs of naive time / method time for the same candidate and "
             "repetition (IQR in brackets); the total-time ratio sums all runs; the CPU-time ratio uses process "
             "CPU time.", ""]
    for r in results:
        lines += [f"## {r['model']}: {r['description']}", "",
                  f"{r['candidates']} candidates x {r['items']} assessment items x 2 contexts = {r['pairs']} scored pairs, "
                  f"{r['reps']} repetitions; mean item {r['mean_item_tokens']:.0f} tokens ({r['shared_item_tokens']} shared "
                  f"by all items, {r['mean_scored_tokens']:.1f} scored), mean real context {r['mean_context_tokens']:.0f} "
                  f"tokens; max_tokens_per_batch {r['max_tokens_per_batch']} (the scorer's CPU default); "
                  f"1-min load average during the run: {min(r['load_avg_1min']):.1f}-{max(r['load_avg_1min']):.1f}.", "",
                  "| method | s per candidate (median) | s per repetition (median) | speed-up: median per-run "
                  "ratio [IQR] | total-time ratio | CPU-time ratio (median) | max abs diff c vs naive |",
                  "|---|---|---|---|---|---|---|"]
        for m in r["methods"]:
            lines.append(f"| {m['method']} | {m['cand_wall_s']:.2f} | {m['total_wall_s']:.1f} | "
                         f"**{m['speedup']:.2f}x** [{m['speedup_q25']:.2f}-{m['speedup_q75']:.2f}] | "
                         f"{m['speedup_total']:.2f}x | {m['speedup_cpu']:.2f}x | {m['max_abs_diff_c']:.1e} |")
        lines.append("")
    lines += NOTES + ["", f"Reproduce: `{command}`", ""]
    return "\n".join(lines)


# -- separation: do ICon scores tell planted junk from clean pairs? ----------------------------

KINDS = ("clean", "wrong", "garbled")


def auc_ci(labels: np.ndarray, scores: np.ndarray, reps: int = 2000, seed: int = 0) -> dict[str, float | None]:
    """ROC AUC (positive = `labels`) with a stratified bootstrap 95% interval over candidates."""
    from thresher.selectors.icon import auc

    labels = np.asarray(labels, bool)
    scores = np.asarray(scores, np.float64)
    point = auc(labels, scores)
    if point is None:
        return {"auc": None, "lo": None, "hi": None}
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(labels), np.flatnonzero(~labels)
    boots = []
    for _ in range(reps):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        boots.append(auc(labels[idx], scores[idx]))
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return {"auc": float(point), "lo": float(lo), "hi": float(hi)}


def separation_aucs(kinds: np.ndarray, scores: np.ndarray) -> dict[str, dict[str, float | None]]:
    """AUC of `scores` for clean (positive) vs junk, vs wrong and vs garbled (NaN scores left out)."""
    ok = np.isfinite(scores)
    out = {}
    for name, neg in (("junk", ("wrong", "garbled")), ("wrong", ("wrong",)), ("garbled", ("garbled",))):
        m = ok & np.isin(kinds, ("clean", *neg))
        out[name] = auc_ci(kinds[m] == "clean", scores[m])
    return out


def separation(model_name: str, per_kind: int, n_items: int, out_json: Path, tiny_scores: str | None,
               max_tokens_per_batch: int, seed: int = 0) -> dict[str, Any]:
    """ICon scores of `per_kind` pool candidates of each planted kind against `n_items` assessment
    items of the instruction benchmark's pool; AUCs clean-vs-junk/-wrong/-garbled. Writes the
    per-candidate results to `out_json` after every candidate (a partial run keeps what it did)."""
    from benchmarks.selection.cli import load_spec
    from benchmarks.selection.instruction_pool import TEMPLATE, build_instruction_pool
    from thresher.models.icl import contributions, random_context

    spec = load_spec(ROOT / "jobs" / "bench_selection_icon.yaml")
    p = spec.pool
    pool = build_instruction_pool(p.docs, p.wrong, p.garbled, p.dup, p.dup_clusters, p.eval_docs, p.assessment,
                                  p.seed)
    kinds = np.asarray(pool.kinds)
    rng = np.random.default_rng(seed)
    rows = np.concatenate([rng.choice(np.flatnonzero(kinds == k), per_kind, replace=False) for k in KINDS])
    rows = rows[rng.permutation(len(rows))]  # kinds interleaved: a cut-short run stays balanced
    eng, desc = make_engine(model_name, max_tokens_per_batch)
    eng.template = TEMPLATE
    items = [eng.item(q, a) for q, a in pool.assessment_pairs[:n_items]]
    t0 = time.perf_counter()
    base = eng.base_ppl(items)
    res: dict[str, Any] = {"model": model_name, "description": desc, "per_kind": per_kind, "items": len(items),
                           "threads": torch.get_num_threads(), "pool": {"docs": p.docs, "seed": p.seed},
                           "candidates": [], "load_avg_1min": [os.getloadavg()[0]]}
    for n, r in enumerate(rows):
        t = time.perf_counter()
        text = eng.candidate_text(pool.prompts[r], pool.responses[r])
        real = eng.ppl(eng.context_ids(text, items), items)
        rand = eng.ppl(eng.context_ids(random_context(len(text), 42, pool.ids[r]), items), items)
        res["candidates"].append({"id": pool.ids[r], "kind": str(kinds[r]), "task": pool.tasks[r],
                                  "rico": float(contributions(real, base, rand).mean()),
                                  "v1": float(contributions(real, base, None).mean()),
                                  "seconds": time.perf_counter() - t})
        res["seconds"] = time.perf_counter() - t0
        if n % 10 == 9 or n == len(rows) - 1:
            res["load_avg_1min"].append(os.getloadavg()[0])
            out_json.write_text(json.dumps(res, indent=1))
            print(f"{model_name}: {n + 1}/{len(rows)} candidates, {res['seconds']:.0f}s", file=sys.stderr, flush=True)
    finish_separation(res, tiny_scores)
    out_json.write_text(json.dumps(res, indent=1))
    return res


def finish_separation(res: dict[str, Any], tiny_scores: str | None) -> None:
    """AUCs of the scored candidates (RICo, v1) and, given the benchmark's `pool_scores.parquet`,
    of the tiny model's ICon scores on the same candidates."""
    cands = res["candidates"]
    kinds = np.array([c["kind"] for c in cands])
    res["aucs"] = {s: separation_aucs(kinds, np.array([c[s] for c in cands])) for s in ("rico", "v1")}
    res["mean_by_kind"] = {s: {k: float(np.mean([c[s] for c in cands if c["kind"] == k])) for k in KINDS}
                           for s in ("rico", "v1")}
    res["per_kind_scored"] = {k: int((kinds == k).sum()) for k in KINDS}
    if tiny_scores and Path(tiny_scores).exists():
        import pyarrow.parquet as pq

        t = pq.read_table(tiny_scores, columns=["id", "icon_score", "label_kind"]).to_pydict()
        tiny = dict(zip(t["id"], t["icon_score"]))
        score = np.array([np.nan if tiny.get(c["id"]) is None else tiny[c["id"]] for c in cands], np.float64)
        res["aucs"]["tiny_rico"] = separation_aucs(kinds, score)
        all_scores = np.array([np.nan if v is None else v for v in t["icon_score"]], np.float64)
        res["aucs"]["tiny_rico_all"] = separation_aucs(np.array(t["label_kind"]), all_scores)
        res["tiny_scored"] = int(np.isfinite(all_scores).sum())
        res["tiny_scores"] = tiny_scores


def markdown_separation(res: dict[str, Any], command: str) -> str:
    """The separation results as Markdown."""
    n = len(res["candidates"])
    names = {"rico": f"{res['model']} RICo (random-character control)",
             "v1": f"{res['model']} v1-style (base - real) / base",
             "tiny_rico": "benchmark's GPT-2 reference model, RICo (same candidates where scored)",
             "tiny_rico_all": f"benchmark's GPT-2 reference model, RICo (all {res.get('tiny_scored', 0):,} ICL-scored "
                              "pool pairs; clean = clean only)"}
    got = res.get("per_kind_scored") or {}
    lines = ["# ICon with a model that learns in context: does its score separate planted junk?", "",
             f"Model: {res['description']}. Candidates: {n} pairs of the selection benchmark's instruction pool "
             f"(`jobs/bench_selection_icon.yaml`, {res['pool']['docs']:,} pairs, seed {res['pool']['seed']}), "
             f"{res['per_kind']} drawn per planted kind (clean, wrong, garbled) in an interleaved order"
             + (f" (scored: {', '.join(f'{v} {k}' for k, v in got.items())})" if got else "") + "; each scored against "
             f"{res['items']} of its assessment items with and without a random-character context of the same "
             f"length (prefix-KV engine): {n} x {res['items']} x 2 = {2 * n * res['items']:,} continuations. "
             f"Time: {res['seconds']:.0f} s on {res['threads']} torch thread(s), 2 shared cores (1-min load "
             f"{min(res['load_avg_1min']):.1f}-{max(res['load_avg_1min']):.1f}).", "",
             "AUC: probability that a clean pair scores above a junk pair (0.5 = no separation); 95% interval "
             "from a stratified bootstrap over candidates.", "",
             "| score | clean vs junk | clean vs wrong | clean vs garbled |", "| --- | --- | --- | --- |"]
    for s, a in res["aucs"].items():
        cells = [("–" if a[k]["auc"] is None else f"{a[k]['auc']:.3f} [{a[k]['lo']:.3f}, {a[k]['hi']:.3f}]")
                 for k in ("junk", "wrong", "garbled")]
        lines.append(f"| {names.get(s, s)} | " + " | ".join(cells) + " |")
    lines += ["", "Mean score by planted kind: " + "; ".join(
        f"{names[s]}: " + ", ".join(f"{k} {v:+.4f}" for k, v in m.items()) for s, m in res["mean_by_kind"].items()),
        "", f"Reproduce: `{res.get('command') or command}`" + (f" ({res['note']})" if res.get("note") else ""), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", nargs="+", default=["tiny:8x32", "smollm2:3x24"],
                    help="MODEL:CANDIDATESxITEMS, MODEL = tiny or smollm2")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--max-tokens-per-batch", type=int, default=2048, help="the scorer's CPU default")
    ap.add_argument("--out", default=None, help="Markdown results (default: benchmarks/results/icon.md, with "
                                                "--separation icon_separation.md; its JSON beside it)")
    ap.add_argument("--demo-data", default=None)
    ap.add_argument("--separation", metavar="MODEL:PERxITEMS", default=None,
                    help="AUC of ICon scores for planted junk vs clean pairs of the instruction benchmark's pool")
    ap.add_argument("--tiny-scores", default=str(ROOT / "out/bench_selection_icon/pool_scores.parquet"),
                    help="--separation: the benchmark's pool_scores.parquet (tiny-model ICon AUCs on the same rows)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--from-json", default=None, help="--separation: rewrite the table from a (partial) JSON file")
    a = ap.parse_args()
    command = ".venv/bin/python " + " ".join(shlex.quote(x) for x in ["benchmarks/bench_icon.py", *sys.argv[1:]] if x)
    if a.separation or a.from_json:
        torch.set_num_threads(a.threads)
        a.out = a.out or str(ROOT / "benchmarks/results/icon_separation.md")
        out_json = Path(a.out).with_suffix(".json")
        if a.from_json:
            res = json.loads(Path(a.from_json).read_text())
            finish_separation(res, a.tiny_scores)
        else:
            model_name, size = a.separation.split(":")
            per, items = (int(x) for x in size.lower().split("x"))
            res = separation(model_name, per, items, out_json, a.tiny_scores, a.max_tokens_per_batch)
            res["command"] = command
        Path(a.out).write_text(markdown_separation(res, command))
        out_json.write_text(json.dumps(res, indent=1))
        print(markdown_separation(res, command))
        return
    if a.demo_data:
        demo_data(Path(a.demo_data))
        print(f"wrote {a.demo_data}/pool.jsonl and assessment.jsonl")
        return
    results = []
    for spec in a.runs:
        model_name, size = spec.split(":")
        n_cand, n_items = (int(x) for x in size.lower().split("x"))
        r = bench(model_name, n_cand, n_items, a.reps, a.max_tokens_per_batch)
        print(json.dumps(r, indent=1), flush=True)
        results.append(r)
        for m in r["methods"]:
            assert m["max_abs_diff_c"] < 1e-3, f"{m['method']} differs from naive by {m['max_abs_diff_c']}"
    command = ".venv/bin/python " + " ".join(shlex.quote(x) for x in
                                             ["benchmarks/bench_icon.py", *sys.argv[1:]] if x)
    Path(a.out or ROOT / "benchmarks/results/icon.md").write_text(markdown(results, command))


if __name__ == "__main__":
    main()
