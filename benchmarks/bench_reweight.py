"""Benchmark: online LinUpper loss reweighting vs uniform on a redundant corpus (SPEC 6.4 (ii)).

Half of the training documents repeat a few templates (low loss after a while), the rest
is diverse grammar text. A tiny GPT-2 (from a config) trains for the same steps and batch
with (a) uniform weights and (b) LinUpper (r, warm-up 10% of steps uniform), 3 seeds.
Metric: mean token loss on held-out *diverse* text. Also logged: the share of the weight
mass that template documents get (uniform = their share of the batch).

    python benchmarks/bench_reweight.py [--seeds 0 1 2] [--steps 120]

Writes benchmarks/results/reweight.json and reweight.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from thresher.training.data import ShardDataset, collate, make_loader  # noqa: E402
from thresher.training.loss import Objective, masked_loss  # noqa: E402
from thresher.training.reweight import ReweightConfig  # noqa: E402
from benchmarks.synthetic import diverse_doc, redundant_corpus, write_shards  # noqa: E402
from thresher.models.tiny import tiny_gpt2, train_bpe_tokenizer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


@torch.no_grad()
def eval_loss(model, batches) -> float:
    model.eval()
    tot, n = 0.0, 0
    for b in batches:
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
        k = int((b["labels"][:, 1:] != -100).sum())
        tot += float(masked_loss(out.logits, b["labels"])) * k
        n += k
    model.train()
    return tot / n


def run(method: str, seed: int, args, data: Path, tok, kinds: np.ndarray, eval_batches) -> dict:
    model = tiny_gpt2(len(tok), n_layer=2, n_embd=args.dim, n_head=4, n_positions=args.max_length,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id, seed=seed)
    ds = ShardDataset(data, tok, pack=False, max_length=args.max_length, seed=seed, return_row_index=True)
    loader = make_loader(ds, args.batch)
    rw = None if method == "uniform" else ReweightConfig(strategy=method, temperature=args.temperature,
                                                          warmup_steps=int(0.1 * args.steps))
    obj = Objective(reweight=rw).setup(model)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    step, epoch, template_mass = 0, 0, []
    while step < args.steps:
        ds.set_epoch(epoch)
        for b in loader:
            loss, _ = obj(model, b, step)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            is_t = torch.from_numpy(kinds[b["row_index"].numpy()] == "template")
            w = obj.reweight.last_weights if rw is not None else torch.full((len(is_t),), 1 / len(is_t))
            if step >= int(0.1 * args.steps):
                template_mass.append((float(w[is_t].sum()), float(is_t.float().mean())))
            step += 1
            if step >= args.steps:
                break
        epoch += 1
    tm = np.array(template_mass)
    return {"method": method, "seed": seed, "heldout_diverse_loss": eval_loss(model, eval_batches),
            "template_weight_mass": float(tm[:, 0].mean()), "template_batch_share": float(tm[:, 1].mean())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--docs", type=int, default=1500)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--max-length", dest="max_length", type=int, default=96)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--temperature", type=float, default=0.5)
    p.add_argument("--methods", nargs="+", default=["uniform", "linupper"])
    p.add_argument("--threads", type=int, default=2, help="torch threads (1 is faster on a busy machine)")
    p.add_argument("--out", default=str(RESULTS / "reweight"))
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, min(args.threads, os.cpu_count() or 1)))
    t0 = time.time()
    rows = redundant_corpus(args.docs, 0.5, seed=100)
    rng = np.random.default_rng(999)
    heldout = [diverse_doc(rng) for _ in range(200)]
    tok = train_bpe_tokenizer([r["text"] for r in rows] + heldout[:0], 1024)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "shards"
        write_shards([{"id": r["id"], "text": r["text"]} for r in rows], data, n_shards=4, row_group_size=250)
        ds_probe = ShardDataset(data, tok, pack=False, shuffle=False, return_row_index=True)
        kinds = np.empty(ds_probe.num_rows, dtype=object)
        by_id = {r["id"]: r["kind"] for r in rows}
        import pyarrow.parquet as pq
        ids = pq.read_table(data, columns=["id"])["id"].to_pylist()
        kinds[:] = [by_id[i] for i in ids]
        eval_samples = []
        for t in heldout:
            x = torch.tensor((tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])[:args.max_length])
            eval_samples.append({"input_ids": x, "labels": x.clone()})
        eval_batches = [collate(eval_samples[i:i + 50], tok.eos_token_id) for i in range(0, len(eval_samples), 50)]
        for seed in args.seeds:
            for m in args.methods:
                r = run(m, seed, args, data, tok, kinds, eval_batches)
                results.append(r)
                print(json.dumps(r), flush=True)
    summary = summarise(results, args.methods)
    out = {"benchmark": "reweight", "config": vars(args), "results": results, "summary": summary,
           "seconds": round(time.time() - t0, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(out, indent=1))
    Path(args.out + ".md").write_text(markdown(out))
    print(markdown(out))
    return 0


def summarise(results, methods) -> dict:
    s = {}
    for m in methods:
        v = np.array([r["heldout_diverse_loss"] for r in results if r["method"] == m])
        mass = np.array([r["template_weight_mass"] for r in results if r["method"] == m])
        s[m] = {"loss_mean": float(v.mean()), "loss_std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                "template_weight_mass": float(mass.mean())}
    base = {r["seed"]: r["heldout_diverse_loss"] for r in results if r["method"] == methods[0]}
    for m in methods[1:]:
        d = [base[r["seed"]] - r["heldout_diverse_loss"] for r in results if r["method"] == m]
        s[m]["gain_vs_" + methods[0] + "_per_seed"] = d  # positive = lower held-out loss than the baseline
        s[m]["wins"] = int(sum(x > 0 for x in d))
    return s


def markdown(out) -> str:
    lines = [f"# Loss reweighting benchmark ({out['seconds']} s)", "",
             f"config: `{json.dumps({k: v for k, v in out['config'].items() if k != 'out'})}`", "",
             "| method | held-out diverse loss (mean ± std) | template weight mass | per-seed gain vs uniform |",
             "|---|---|---|---|"]
    for m, s in out["summary"].items():
        gains = s.get("gain_vs_uniform_per_seed")
        lines.append(f"| {m} | {s['loss_mean']:.4f} ± {s['loss_std']:.4f} | {s['template_weight_mass']:.3f} | "
                     f"{'' if gains is None else ', '.join(f'{g:+.4f}' for g in gains)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
