"""ICon scoring speed on CPU: naive one-pair-at-a-time full-sequence scoring vs the batched
engine (thresher.models.icl), step by step, at equal results (max |c_ij| difference).

Methods (all score the same candidate x assessment pairs, real and random context):
- naive: one full forward of [context, separator, item] per pair, no cache (HF-style);
- prefix cache: the context runs once, its KV cache is shared by length-sorted batches of the
  whole assessment items, rows x (prefix + width) within the token budget (the previous engine);
- + batches bounded by continuation tokens: rows x width within the budget, the expanded cache
  within 8x it (the CPU default), so long (random) contexts no longer shrink batches to a few rows;
- + shared item head: the tokens every item starts with (the Alpaca template header) join the
  cached prefix, so continuations run only their item-specific tokens;
- + trimmed logits: the LM head runs only from each batch's first scored position on
  (the default engine).

Timing is interleaved: every repetition runs each candidate under every method, in a random
order, so load from other jobs on a shared machine hits all methods alike; we report medians
over repetitions of wall time and of process CPU time, and the speed-up as the median of the
per-repetition ratios.

    .venv/bin/python benchmarks/bench_icon.py [--runs tiny:8x32 smollm2:4x24] [--reps 3] [--out FILE]
    .venv/bin/python benchmarks/bench_icon.py --demo-data out/icon_demo_data   # data for jobs/icon_demo.yaml
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
        {"cache_factor": 1, "share_items_prefix": False, "trim_logits": False},
    "+ batches bounded by continuation tokens": {"cache_factor": None, "share_items_prefix": False, "trim_logits": False},
    "+ shared item head in the prefix": {"cache_factor": None, "share_items_prefix": True, "trim_logits": False},
    "+ trimmed logits (default engine)": {"cache_factor": None, "share_items_prefix": True, "trim_logits": True},
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
    wall = {n: np.zeros(reps) for n in names}
    cpu = {n: np.zeros(reps) for n in names}
    c = {n: np.zeros((n_cand, n_items)) for n in names}
    load = [os.getloadavg()[0]]
    order_rng = random.Random(2)
    for rep in range(reps):
        for j, text in enumerate(cands):
            for name in order_rng.sample(names, len(names)):  # a fresh random method order per candidate
                naive = configure(name)
                t, p = time.perf_counter(), time.process_time()
                c[name][j] = eng.candidate_c(f"c{j}", text, items, base[name], seed=0, naive=naive)
                wall[name][rep] += time.perf_counter() - t
                cpu[name][rep] += time.process_time() - p
        load.append(os.getloadavg()[0])
        print(f"{model_name} rep {rep + 1}/{reps}: " + ", ".join(f"{wall[n][rep]:.1f}s" for n in names),
              file=sys.stderr, flush=True)
    ref = names[0]
    rows = [{"method": n, "wall_s": float(np.median(wall[n])), "cpu_s": float(np.median(cpu[n])),
             "speedup": float(np.median(wall[ref] / wall[n])), "speedup_cpu": float(np.median(cpu[ref] / cpu[n])),
             "speedup_min": float(np.min(wall[ref] / wall[n])), "speedup_max": float(np.max(wall[ref] / wall[n])),
             "max_abs_diff_c": float(np.abs(c[n] - c[ref]).max())} for n in names]
    real = [eng.context_ids(t, items) for t in cands]
    return {"model": model_name, "description": desc, "candidates": n_cand, "items": n_items, "reps": reps,
            "pairs": 2 * n_cand * n_items, "max_tokens_per_batch": max_tokens_per_batch,
            "mean_item_tokens": float(np.mean([len(i.ids) for i in items])),
            "mean_scored_tokens": float(np.mean([i.n_scored for i in items])),
            "shared_item_tokens": shared_prefix_len(items), "mean_context_tokens": float(np.mean([len(r) for r in real])),
            "load_avg_1min": load, "methods": rows}


def markdown(results: list[dict], command: str) -> str:
    """The results file: machine note, one table per model, the command line."""
    u = platform.uname()
    lines = ["# ICon scoring speed: naive vs the batched engine (CPU)", "",
             f"Machine: {u.machine}, {os.cpu_count()} cores shared with other jobs (timings are noisy: methods are "
             f"interleaved per candidate and we report medians over repetitions), torch {torch.__version__}, "
             "2 threads, fp32. Each pair = one assessment item scored after a context (real candidate and its "
             "random-character control); c_ij compared with the naive scores.", ""]
    for r in results:
        lines += [f"## {r['model']}: {r['description']}", "",
                  f"{r['candidates']} candidates x {r['items']} assessment items x 2 contexts = {r['pairs']} scored pairs, "
                  f"{r['reps']} repetitions; mean item {r['mean_item_tokens']:.0f} tokens ({r['shared_item_tokens']} shared "
                  f"by all items, {r['mean_scored_tokens']:.1f} scored), mean real context {r['mean_context_tokens']:.0f} "
                  f"tokens; continuation batches of <= {r['max_tokens_per_batch']} tokens (prefix included); "
                  f"1-min load average during the run: {min(r['load_avg_1min']):.1f}-{max(r['load_avg_1min']):.1f}.", "",
                  "| method | wall s (median) | CPU s (median) | pairs/s | speed-up (wall, median [min-max]) "
                  "| speed-up (CPU) | max abs diff c vs naive |",
                  "|---|---|---|---|---|---|---|"]
        for m in r["methods"]:
            lines.append(f"| {m['method']} | {m['wall_s']:.2f} | {m['cpu_s']:.2f} | {r['pairs'] / m['wall_s']:.1f} | "
                         f"**{m['speedup']:.2f}x** [{m['speedup_min']:.2f}-{m['speedup_max']:.2f}] | "
                         f"{m['speedup_cpu']:.2f}x | {m['max_abs_diff_c']:.1e} |")
        lines.append("")
    lines += [f"Reproduce: `{command}`", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", nargs="+", default=["tiny:8x32", "smollm2:4x24"],
                    help="MODEL:CANDIDATESxITEMS, MODEL = tiny or smollm2")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--max-tokens-per-batch", type=int, default=2048, help="the scorer's CPU default")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/icon.md"))
    ap.add_argument("--demo-data", default=None)
    a = ap.parse_args()
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
    Path(a.out).write_text(markdown(results, command))


if __name__ == "__main__":
    main()
