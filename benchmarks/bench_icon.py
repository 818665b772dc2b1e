"""ICon scoring speed: prefix-shared KV cache + batched continuations vs naive one-pair-at-a-time
full-sequence scoring, at equal results (max |c_ij| difference). CPU, a small Llama from a config.

    .venv/bin/python benchmarks/bench_icon.py [--candidates 8] [--items 32] [--out benchmarks/results/icon.md]
    .venv/bin/python benchmarks/bench_icon.py --demo-data out/icon_demo_data   # data for jobs/icon_demo.yaml
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

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


def bench(n_cand: int, n_items: int) -> dict:
    from conftest_models import train_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    from thresher.models.icl import ICLEngine

    torch.set_num_threads(2)
    folder = Path(tempfile.mkdtemp()) / "llama"
    tok = train_tokenizer(folder, "llama", vocab_size=500)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024)
    model = LlamaForCausalLM(cfg).eval()
    eng = ICLEngine(model, tok, torch.device("cpu"), max_positions=1024, max_tokens_per_batch=4096)
    rng = random.Random(1)
    items = [eng.item(*TASKS[rng.choice(sorted(TASKS))](rng)) for _ in range(n_items)]
    cands = [eng.candidate_text(*TASKS[rng.choice(sorted(TASKS))](rng)) + " Explanation follows. " * rng.randint(2, 8)
             for _ in range(n_cand)]
    base = eng.base_ppl(items)
    out = {}
    for naive in (True, False):
        t = time.perf_counter()
        c = np.stack([eng.candidate_c(f"c{j}", text, items, base, seed=0, naive=naive) for j, text in enumerate(cands)])
        out["naive" if naive else "cached"] = (time.perf_counter() - t, c)
    (tn, cn), (tc, cc) = out["naive"], out["cached"]
    ctx_tokens = np.mean([len(eng.context_ids(t, items)) for t in cands])
    return {"candidates": n_cand, "items": n_items, "pairs": 2 * n_cand * n_items, "naive_s": tn, "cached_s": tc,
            "speedup": tn / tc, "max_abs_diff_c": float(np.abs(cn - cc).max()),
            "mean_item_tokens": float(np.mean([len(i.ids) for i in items])), "mean_context_tokens": float(ctx_tokens)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--items", type=int, default=32)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/icon.md"))
    ap.add_argument("--demo-data", default=None)
    a = ap.parse_args()
    if a.demo_data:
        demo_data(Path(a.demo_data))
        print(f"wrote {a.demo_data}/pool.jsonl and assessment.jsonl")
        return
    r = bench(a.candidates, a.items)
    print(json.dumps(r, indent=1))
    md = (f"# ICon scoring: prefix-shared KV cache vs naive\n\n"
          f"CPU (2 cores, shared machine), Llama 4 layers x 256 hidden (random init, vocab 500), fp32.\n"
          f"{r['candidates']} candidates x {r['items']} assessment items x 2 contexts (real + random) = "
          f"{r['pairs']} scored pairs; mean item {r['mean_item_tokens']:.0f} tokens, mean context "
          f"{r['mean_context_tokens']:.0f} tokens.\n\n"
          f"| method | seconds | pairs/s |\n|---|---|---|\n"
          f"| naive (one full forward per pair) | {r['naive_s']:.2f} | {r['pairs'] / r['naive_s']:.1f} |\n"
          f"| prefix cache + batched continuations | {r['cached_s']:.2f} | {r['pairs'] / r['cached_s']:.1f} |\n\n"
          f"Speed-up: **{r['speedup']:.1f}x**; max |c_ij| difference: {r['max_abs_diff_c']:.2e}.\n\n"
          f"Reproduce: `.venv/bin/python benchmarks/bench_icon.py --candidates {r['candidates']} --items {r['items']}`\n")
    Path(a.out).write_text(md)


if __name__ == "__main__":
    main()
