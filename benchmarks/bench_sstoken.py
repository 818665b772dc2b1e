"""Benchmark: ssToken vs random-token selection vs full SFT with noisy responses (SPEC 6.3).

Deterministic word tasks (reverse, copy, sort, next digit); in the SFT data ~35% of the
response words are replaced by random words (token-level label noise; a word-level
tokenizer makes one word one token, so the noise positions are known). A tiny GPT-2
(from a config) is first trained briefly on clean task text (the history / base model),
then fine-tuned for the same steps with (a) random tokens rho = 0.6, (b) ssToken rho =
0.6, gamma = 0.5, history = base, attention-only warm-up for the first 20% of steps, and
(c) full SFT. Metrics on clean held-out tasks: response loss and teacher-forced token
accuracy; plus the precision of the kept tokens (share of kept tokens that are clean).

    python benchmarks/bench_sstoken.py [--seeds 0 1 2] [--steps 150]

Writes benchmarks/results/sstoken.json and sstoken.md.
"""

from __future__ import annotations

import argparse
import copy
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
from thresher.training.data import ShardDataset, collate, make_loader, tokenize_row  # noqa: E402
from thresher.training.loss import Objective, masked_loss  # noqa: E402
from thresher.training.sstoken import SSTokenConfig, response_positions  # noqa: E402
from benchmarks.synthetic import DIGITS, TASKS, instruction_rows, write_shards  # noqa: E402
from thresher.models.tiny import tiny_gpt2  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TEMPLATE = "{prompt} ="


def word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<eos>", "<unk>", "="] + [t + ":" for t in TASKS] + DIGITS
    t = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<eos>", pad_token="<eos>", unk_token="<unk>")


def batches(tok, rows, size):
    out = []
    for i in range(0, len(rows), size):
        samples = []
        for r in rows[i:i + size]:
            ids, plen = tokenize_row(tok, r, True, template=TEMPLATE)
            t = torch.tensor(ids)
            lab = t.clone()
            lab[:plen] = -100
            samples.append({"input_ids": t, "labels": lab})
        out.append(collate(samples, tok.eos_token_id))
    return out


@torch.no_grad()
def evaluate(model, eval_batches) -> tuple[float, float]:
    model.eval()
    loss_sum = acc_sum = n = 0.0
    for b in eval_batches:
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        keep = b["labels"][:, 1:] != -100
        k = float(keep.sum())
        loss_sum += float(masked_loss(logits, b["labels"])) * k
        acc_sum += float(((logits[:, :-1].argmax(-1) == b["labels"][:, 1:]) & keep).sum())
        n += k
    model.train()
    return loss_sum / n, acc_sum / n


def train_steps(model, loader, ds, obj, steps, lr, noise_of=None, record=None):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    step, epoch = 0, 0
    while step < steps:
        ds.set_epoch(epoch)
        for b in loader:
            loss, _ = obj(model, b, step)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if record is not None and noise_of is not None and obj.sstoken is not None:
                record.append(selection_precision(obj, b, noise_of, step))
            step += 1
            if step >= steps:
                break
        epoch += 1


def selection_precision(obj, b, noise_of, step) -> float:
    """Share of the kept response tokens (EOS excluded) that are clean."""
    keep = obj._last_mask if hasattr(obj, "_last_mask") else None
    if keep is None:
        return float("nan")
    resp = response_positions(b["labels"])
    noisy = torch.zeros_like(resp)
    for j, ri in enumerate(b["row_index"].tolist()):
        plen = int((~resp[j]).cumprod(0).sum())  # first response position
        for w in noise_of[ri]:
            noisy[j, plen + w] = True
    eos = b["input_ids"] == b["labels"].new_tensor(0)
    kept = keep & resp & ~eos
    return float((kept & ~noisy).sum() / kept.sum().clamp(min=1))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=150, help="SFT steps")
    p.add_argument("--base-steps", dest="base_steps", type=int, default=30, help="clean pre-SFT steps (history)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--noise", type=float, default=0.35)
    p.add_argument("--rho", type=float, default=0.6)
    p.add_argument("--gamma", type=float, default=0.5)
    p.add_argument("--warmup-frac", dest="warmup_frac", type=float, default=0.2,
                   help="fraction of SFT steps with attention-only selection (official code: 20%%)")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--methods", nargs="+", default=["full", "random", "sstoken"])
    p.add_argument("--threads", type=int, default=2, help="torch threads (1 is faster on a busy machine)")
    p.add_argument("--out", default=str(RESULTS / "sstoken"))
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, min(args.threads, os.cpu_count() or 1)))
    t0 = time.time()
    tok = word_tokenizer()
    train_rows = instruction_rows(args.rows, noise=args.noise, seed=10)
    clean_rows = [{"id": f"c{i}", "prompt": r["prompt"], "response": r["clean"]}
                  for i, r in enumerate(instruction_rows(2000, noise=0.0, seed=11))]
    test_rows = [{"prompt": r["prompt"], "response": r["clean"]} for r in instruction_rows(400, seed=12)]
    eval_batches = batches(tok, test_rows, 100)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        sft_dir, clean_dir = Path(tmp) / "sft", Path(tmp) / "clean"
        write_shards([{k: r[k] for k in ("id", "prompt", "response")} for r in train_rows], sft_dir, n_shards=4,
                     row_group_size=250)
        write_shards(clean_rows, clean_dir, n_shards=1)
        import pyarrow.parquet as pq
        ids = pq.read_table(sft_dir, columns=["id"])["id"].to_pylist()
        noise_by_id = {r["id"]: r["noisy_words"] for r in train_rows}
        noise_of = [noise_by_id[i] for i in ids]
        for seed in args.seeds:
            torch.manual_seed(seed)
            base = tiny_gpt2(len(tok), n_layer=2, n_embd=args.dim, n_head=4, n_positions=64,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id, seed=seed)
            cds = ShardDataset(clean_dir, tok, prompt_template=TEMPLATE, seed=seed)
            train_steps(base, make_loader(cds, args.batch), cds, Objective(), args.base_steps, args.lr)
            base_loss, base_acc = evaluate(base, eval_batches)
            for method in args.methods:
                model = copy.deepcopy(base)
                ds = ShardDataset(sft_dir, tok, prompt_template=TEMPLATE, seed=seed, return_row_index=True)
                sst = None
                if method != "full":
                    sst = SSTokenConfig(rho=args.rho, gamma=args.gamma, mode=method,
                                        warmup_steps=int(args.warmup_frac * args.steps))
                obj = Objective(sstoken=sst, seed=seed)
                obj.setup(model)
                if obj.sstoken is not None:
                    obj.sstoken.history_model = copy.deepcopy(base).eval()  # history = pre-SFT model
                    _wrap_mask_recorder(obj)
                precisions: list[float] = []
                train_steps(model, make_loader(ds, args.batch), ds, obj, args.steps, args.lr, noise_of, precisions)
                loss, acc = evaluate(model, eval_batches)
                wsteps = int(args.warmup_frac * args.steps)
                post = [x for i, x in enumerate(precisions) if i >= wsteps]
                r = {"method": method, "seed": seed, "clean_loss": loss, "clean_token_acc": acc,
                     "base_clean_loss": base_loss, "base_clean_acc": base_acc,
                     "kept_clean_precision": float(np.nanmean(post)) if post else None,
                     "kept_clean_precision_warmup": float(np.nanmean(precisions[:wsteps]))
                     if precisions and wsteps else None}
                results.append(r)
                print(json.dumps(r), flush=True)
    clean_share = 1 - float(np.mean([len(r["noisy_words"]) / max(1, len(r["clean"].split())) for r in train_rows]))
    out = {"benchmark": "sstoken", "config": vars(args), "clean_token_share_in_sft_data": clean_share,
           "results": results, "summary": summarise(results, args.methods), "seconds": round(time.time() - t0, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(out, indent=1))
    Path(args.out + ".md").write_text(markdown(out))
    print(markdown(out))
    return 0


def _wrap_mask_recorder(obj: Objective) -> None:
    """Keep the last selection mask on the objective (benchmark bookkeeping only)."""
    sst = obj.sstoken
    original = sst.token_mask

    def token_mask(batch, logits, capture, step):
        keep = original(batch, logits, capture, step)
        obj._last_mask = keep
        return keep

    sst.token_mask = token_mask


def summarise(results, methods) -> dict:
    s = {}
    by = {(r["method"], r["seed"]): r for r in results}
    seeds = sorted({r["seed"] for r in results})
    for m in methods:
        loss = np.array([by[(m, x)]["clean_loss"] for x in seeds])
        acc = np.array([by[(m, x)]["clean_token_acc"] for x in seeds])
        prec = [by[(m, x)]["kept_clean_precision"] for x in seeds]
        s[m] = {"clean_loss_mean": float(loss.mean()), "clean_loss_std": float(loss.std(ddof=1)) if len(seeds) > 1 else 0.0,
                "clean_acc_mean": float(acc.mean()), "clean_acc_std": float(acc.std(ddof=1)) if len(seeds) > 1 else 0.0,
                "kept_clean_precision": float(np.mean(prec)) if all(p is not None for p in prec) else None}
    if "sstoken" in methods:
        for other in [m for m in methods if m != "sstoken"]:
            d = [by[(other, x)]["clean_loss"] - by[("sstoken", x)]["clean_loss"] for x in seeds]
            s["sstoken"][f"loss_gain_vs_{other}_per_seed"] = d  # positive = ssToken lower clean loss
    return s


def markdown(out) -> str:
    lines = [f"# ssToken benchmark ({out['seconds']} s)", "",
             f"config: `{json.dumps({k: v for k, v in out['config'].items() if k != 'out'})}`", "",
             f"clean share of response words in the SFT data: {out['clean_token_share_in_sft_data']:.3f}", "",
             "| method | clean loss (mean ± std) | token acc (mean ± std) | kept-clean precision |", "|---|---|---|---|"]
    for m, s in out["summary"].items():
        prec = "-" if s["kept_clean_precision"] is None else f"{s['kept_clean_precision']:.3f}"
        lines.append(f"| {m} | {s['clean_loss_mean']:.4f} ± {s['clean_loss_std']:.4f} | "
                     f"{s['clean_acc_mean']:.4f} ± {s['clean_acc_std']:.4f} | {prec} |")
    sst = out["summary"].get("sstoken", {})
    for k, v in sst.items():
        if k.startswith("loss_gain_vs_"):
            lines.append(f"\nssToken {k.replace('_', ' ')} (positive = better): {', '.join(f'{x:+.4f}' for x in v)}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
