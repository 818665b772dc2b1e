"""Benchmark: ssToken vs random-token selection vs full SFT, on task accuracy (issue 18, part 4).

Data: the selection benchmark's synthetic instruction pool (`benchmarks.selection.instruction_pool`:
six deterministic tasks with known answers; 15% plausible wrong answers, 10% garbled responses,
25% near-duplicate prompts), its byte-level BPE tokenizer and its clean held-out evaluation pairs.

Per seed:
1. base model: the small GPT-2 pre-trained as a plain language model (every token a target,
   prompts included) on clean pairs of another draw of the tasks, in the SFT template, at a
   higher learning rate: a model that already does the tasks a little. It is the history
   model: its per-token losses on the pool are computed once and read as `history: column`
   (the official code precomputes the base model's losses). SFT on the pool, with its 25%
   junk, then shows what each token selection learns from, and keeps of, the base's skill.
   (`--base-format plain` pre-trains on "Q: ... A: ..." text instead: the base then knows
   the content but not the template; it needs far more SFT to reach non-zero accuracy.)
2. From that base, the same SFT run for each method: one sample per row (right padding, prompt
   and padding masked), the pool in a seeded order shared by all methods, AdamW, linear warm-up
   and linear decay (the official schedule; peak 1e-3, below the base's 5e-3), thresher's
   `Objective` with `SSTokenConfig`:
   - `full`: every response token (and the end token);
   - `random`: ceil(rho * L) random response tokens per sample, drawn every step (rho 0.6);
   - `sstoken`: the official configuration: rho 0.6, gamma 0.5, history = base, last-layer
     prompt-sum attention, attention-only warm-up for the first 20% of the samples (the official
     10,000 of a 50k epoch);
   - ablations: `sstoken_adjusted` (attention divided by the uniform share, `attention:
     prompt_sum_adjusted`) and `sstoken_nowarmup` (no warm-up: thresher's default).
3. Scores on the clean held-out pairs: exact-match accuracy of the greedy answer
   (`task_accuracy.greedy_answers` / `exact_match`) and mean response-token loss.
4. Paired per-seed differences with 95% intervals (`benchmarks.stats.paired`) for each ssToken
   variant against random and against full; diagnostics: how often the end token is kept,
   the mean relative position of the kept tokens, and the attention-to-prompt profile by
   position of the base model (and, with `--profile-smollm2`, of SmolLM2-135M-Instruct).

    python benchmarks/bench_sstoken.py            # default: 5 seeds, 5 methods (time: see sstoken.md)
    python benchmarks/bench_sstoken.py --quick    # a smoke run (tests): all 5 methods, 2 seeds
    python benchmarks/bench_sstoken.py --render benchmarks/results/sstoken.json  # re-derive the tables

Writes benchmarks/results/sstoken.json and sstoken.md (raw per-seed results in the JSON).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.selection.instruction_bench import (IGNORE, Example, encode_pairs, example_ids,  # noqa: E402
                                                    heldout_loss, sft_tokenizer)
from benchmarks.selection.instruction_pool import TEMPLATE, build_instruction_pool  # noqa: E402
from benchmarks.selection.task_accuracy import exact_match, greedy_answers  # noqa: E402
from benchmarks.stats import paired  # noqa: E402
from thresher.models.tiny import EOS, tiny_gpt2  # noqa: E402
from thresher.training.loss import Objective  # noqa: E402
from thresher.training.sstoken import (LastLayerAttention, SSToken, SSTokenConfig,  # noqa: E402
                                       aligned_token_losses, attention_score, keep_counts, response_positions,
                                       top_tokens)

RESULTS = Path(__file__).resolve().parent / "results"
COMMAND = "python benchmarks/bench_sstoken.py"

# method -> SSTokenConfig overrides (None: full SFT); warm-up samples are set from the run length
METHODS: dict[str, dict[str, Any] | None] = {
    "full": None,
    "random": {"mode": "random"},
    "sstoken": {},
    "sstoken_nowarmup": {"warmup": 0.0},
    "sstoken_adjusted": {"attention": "prompt_sum_adjusted"},
}
DEFAULT_METHODS = list(METHODS)


# -- data -------------------------------------------------------------------------------------


def collate_examples(examples: list[Example], eos: int, context: int,
                     hist: list[np.ndarray] | None = None) -> dict[str, torch.Tensor]:
    """One sample per row, right-padded with eos: input ids, labels (prompt and padding -100), mask;
    with `hist`, the examples' precomputed history losses as `hist_token_loss` (aligned, 0-padded)."""
    seqs = [example_ids(ex, eos, context) for ex in examples]
    width = max(len(s[0]) for s in seqs)
    ids = torch.full((len(seqs), width), eos, dtype=torch.long)
    lab = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, (i, y) in enumerate(seqs):
        ids[row, :len(i)] = torch.from_numpy(i)
        lab[row, :len(i)] = torch.from_numpy(y)
        mask[row, :len(i)] = 1
    out = {"input_ids": ids, "labels": lab, "attention_mask": mask}
    if hist is not None:
        h = torch.zeros((len(seqs), width), dtype=torch.float32)
        for row, x in enumerate(hist):
            h[row, :len(x)] = torch.from_numpy(x)
        out["hist_token_loss"] = h
    return out


@torch.no_grad()
def history_losses(model: torch.nn.Module, examples: list[Example], eos: int, context: int, batch: int = 64
                   ) -> list[np.ndarray]:
    """Per-example aligned token losses of the base model, computed once (as the official code does:
    index k = loss of token k, index 0 = 0), for `history: column`."""
    model.eval()
    out: list[np.ndarray] = []
    for s in range(0, len(examples), batch):
        b = collate_examples(examples[s:s + batch], eos, context)
        loss = aligned_token_losses(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits,
                                    b["labels"])
        for row in range(len(loss)):
            out.append(loss[row, :int(b["attention_mask"][row].sum())].numpy())
    return out


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then linear decay to 0 (the official SFT schedule)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * max(0.0, (total - step) / max(1, total - warmup))


# -- training ---------------------------------------------------------------------------------


class RecordingSSToken(SSToken):
    """SSToken that keeps statistics of its masks after the warm-up (benchmark bookkeeping)."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.eos_kept: list[float] = []
        self.kept_pos: list[float] = []

    def token_mask(self, batch: dict[str, torch.Tensor], logits: torch.Tensor, capture: Any, step: int
                   ) -> torch.Tensor:
        keep = super().token_mask(batch, logits, capture, step)
        if self.config.mode == "random" or self.last_stats.get("gamma", 0.0) > 0 or self.config.gamma == 0:
            self.eos_kept.append(float(eos_kept_share(keep, batch["labels"])))
            self.kept_pos.append(float(kept_relative_position(keep, batch["labels"])))
        return keep


def eos_kept_share(keep: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Share of samples whose last response token (the end token) is kept."""
    resp = response_positions(labels)
    last = resp.long().cumsum(1).argmax(1)  # index of the last response token
    return keep[torch.arange(len(keep)), last].float().mean()


def kept_relative_position(keep: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean relative position (0 = first response token, 1 = the end token) of kept tokens."""
    resp = response_positions(labels)
    idx = resp.long().cumsum(1) - 1
    n = resp.sum(1, keepdim=True).clamp(min=2)
    rel = idx.float() / (n - 1).float()
    return (rel * keep).sum() / keep.sum().clamp(min=1)


BASE_FORMAT = "Q: {prompt} A: {response}"


def plain_text_examples(tok: Any, pairs: list[tuple[str, str]]) -> list[Example]:
    """Pairs as plain text in another format than the SFT template (`BASE_FORMAT`), for the base's
    LM pre-training: the base knows the tasks' text but not the instruction format."""
    enc = tok.backend_tokenizer.encode_batch([BASE_FORMAT.format(prompt=q, response=a) for q, a in pairs],
                                             add_special_tokens=False)
    return [(np.asarray(e.ids, np.int64), np.zeros(0, np.int64)) for e in enc]


def pretrain_base(model: torch.nn.Module, examples: list[Example], eos: int, context: int, steps: int,
                  batch: int, lr: float, seed: int) -> None:
    """Plain LM pre-training (every real token a target) on clean pairs: the base / history model."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.95))
    rng = np.random.default_rng([seed, 7])
    model.train()
    for step in range(steps):
        idx = rng.choice(len(examples), batch, replace=False)
        b = collate_examples([examples[i] for i in idx], eos, context)
        labels = torch.where(b["attention_mask"].bool(), b["input_ids"], torch.full_like(b["input_ids"], IGNORE))
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, max(1, steps // 20))
        loss = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()


def sft(model: torch.nn.Module, pool_ex: list[Example], eos: int, context: int, method: dict[str, Any] | None,
        args: argparse.Namespace, seed: int, hist: list[np.ndarray]) -> dict[str, Any]:
    """Fine-tune `model` in place for `args.epochs` epochs over the pool; selection statistics."""
    n_steps = math.ceil(len(pool_ex) / args.batch) * args.epochs
    total_samples = len(pool_ex) * args.epochs
    sst = None
    if method is not None:
        over = dict(method)
        warm = over.pop("warmup", args.warmup_frac)
        cfg = SSTokenConfig(rho=args.rho, gamma=args.gamma, warmup_samples=int(round(warm * total_samples)),
                            history="column", **over)
        sst = RecordingSSToken(cfg, seed=seed)
    obj = Objective(sstoken=sst, seed=seed).setup(model)  # history = the base's precomputed losses
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.95))
    warmup = max(1, int(0.03 * n_steps))
    step, losses = 0, []
    model.train()
    for epoch in range(args.epochs):
        order = np.random.default_rng([seed, 11, epoch]).permutation(len(pool_ex))  # shared by all methods
        for s in range(0, len(order), args.batch):
            rows = order[s:s + args.batch]
            b = collate_examples([pool_ex[i] for i in rows], eos, context,
                                 [hist[i] for i in rows] if sst is not None else None)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, n_steps, args.lr, warmup)
            loss, _ = obj(model, b, step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            step += 1
    out: dict[str, Any] = {"steps": step, "train_loss_end": float(np.mean(losses[-10:]))}
    if sst is not None:
        out["warmup_samples"] = sst.config.warmup_samples
        out["eos_kept"] = float(np.mean(sst.eos_kept)) if sst.eos_kept else None
        out["kept_relative_position"] = float(np.mean(sst.kept_pos)) if sst.kept_pos else None
    return out


def evaluate(model: torch.nn.Module, tok: Any, eval_ex: list[Example], answers: list[str], tasks: list[str],
             eos: int, context: int) -> dict[str, Any]:
    """Exact-match accuracy of greedy answers and held-out response loss on the clean pairs."""
    pred = greedy_answers(model, tok, [q for q, _ in eval_ex], eos, context, max_new_tokens=24)
    em = exact_match(pred, answers, tasks)
    return {"accuracy": em["accuracy"], "accuracy_by_task": em["by_task"],
            "heldout_loss": heldout_loss(model, eval_ex, eos, context),
            "ends_answer": float(np.mean([p.strip() != "" for p in pred]))}


# -- attention profile ------------------------------------------------------------------------


@torch.no_grad()
def attention_profile(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], rho: float,
                      bins: int = 5) -> dict[str, Any]:
    """How the prompt-sum attention of response tokens moves with their position.

    Per response token: its head-mean last-layer attention to the prompt (the official term),
    binned by relative position in the response (0 = first token, 1 = end token); the share of
    samples whose end token is among the top ceil(rho * L) by attention alone (gamma = 0), for
    the official term and the adjusted one; the mean per-sample Spearman correlation of the
    term with position (negative = falls with position)."""
    from scipy.stats import spearmanr

    model.eval()
    sums, counts = np.zeros(bins), np.zeros(bins)
    eos = {"prompt_sum": [], "prompt_sum_adjusted": []}
    chance: list[float] = []  # a random ceil(rho * L) keeps the end token with probability ceil(rho * L) / L
    rhos: list[float] = []
    for b in batches:
        mask = b["attention_mask"]
        with LastLayerAttention(model) as cap:
            model(input_ids=b["input_ids"], attention_mask=mask)
        probs = cap.probs(mask)
        resp = response_positions(b["labels"])
        chance += (keep_counts(resp, rho).float() / resp.sum(1).clamp(min=1).float()).tolist()
        for kind in eos:
            score = attention_score(probs, b["labels"], mask, kind)
            eos[kind].append(float(eos_kept_share(top_tokens(score, resp, rho), b["labels"])))
        raw = attention_score(probs, b["labels"], mask, "prompt_sum")
        for j in range(len(raw)):
            pos = torch.nonzero(resp[j]).flatten()
            vals = raw[j, pos].numpy()
            if len(vals) < 3:
                continue
            rel = np.linspace(0, 1, len(vals))
            k = np.minimum((rel * bins).astype(int), bins - 1)
            np.add.at(sums, k, vals)
            np.add.at(counts, k, 1)
            r = spearmanr(np.arange(len(vals)), vals).statistic
            if np.isfinite(r):
                rhos.append(float(r))
    return {"prompt_attention_by_position": [float(x) for x in sums / np.maximum(counts, 1)],
            "eos_kept_attention_only": {k: float(np.mean(v)) for k, v in eos.items()},
            "eos_kept_random": float(np.mean(chance)), "spearman_position_mean": float(np.mean(rhos)) if rhos else None}


def smollm2_profile(pairs: list[tuple[str, str]], rho: float, n: int) -> dict[str, Any]:
    """`attention_profile` of SmolLM2-135M-Instruct (thresher's packaged model) on `n` pool pairs."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from thresher.models.loading import resolve_model_ref

    path = resolve_model_ref("smollm2")
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, torch_dtype=torch.float32)
    eos = tok.eos_token_id
    examples = []
    for q, a in pairs[:n]:
        p = tok(TEMPLATE.format(prompt=q), add_special_tokens=False).input_ids
        r = tok(a, add_special_tokens=False).input_ids
        examples.append((np.asarray(p, np.int64), np.asarray(r, np.int64)))
    batches = [collate_examples(examples[s:s + 16], eos, 256) for s in range(0, len(examples), 16)]
    out = attention_profile(model, batches, rho)
    out["model"] = "SmolLM2-135M-Instruct"
    out["pairs"] = len(examples)
    return out


# -- the run ----------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.time()
    pool = build_instruction_pool(args.pool, seed=args.pool_seed, eval_pairs=args.eval, dup_clusters=args.dup_clusters)
    base_pool = build_instruction_pool(args.base_pairs, wrong=0.0, garbled=0.0, dup=0.0, eval_pairs=6,
                                       seed=args.pool_seed + 1000)
    tok = sft_tokenizer(pool.texts, args.vocab)
    eos = tok.convert_tokens_to_ids(EOS)
    pool_ex = encode_pairs(tok, list(zip(pool.prompts, pool.responses)))
    base_pairs = list(zip(base_pool.prompts, base_pool.responses))
    base_ex = plain_text_examples(tok, base_pairs) if args.base_format == "plain" else encode_pairs(tok, base_pairs)
    eval_ex = encode_pairs(tok, pool.eval_pairs)
    answers = [a for _, a in pool.eval_pairs]
    eval_tasks = [task_of(q) for q, _ in pool.eval_pairs]
    runs: list[dict[str, Any]] = []
    profiles: dict[str, Any] = {}
    for seed in args.seeds:
        base = tiny_gpt2(len(tok), n_layer=args.layers, n_embd=args.dim, n_head=4, n_positions=args.context,
                         eos_token_id=eos, dropout=0.0, seed=seed, loss_type="ForCausalLM")
        pretrain_base(base, base_ex, eos, args.context, args.base_steps, args.batch, args.base_lr, seed)
        res = evaluate(base, tok, eval_ex, answers, eval_tasks, eos, args.context)
        runs.append({"method": "base", "seed": seed, **res})
        log(f"seed {seed} base: acc {res['accuracy']:.3f} loss {res['heldout_loss']:.3f}", t0)
        hist = history_losses(base, pool_ex, eos, args.context)
        if seed == args.seeds[0]:
            profiles["tiny_base"] = attention_profile(base, profile_batches(pool_ex, eos, args.context), args.rho)
        for name in args.methods:
            model = tiny_gpt2(len(tok), n_layer=args.layers, n_embd=args.dim, n_head=4, n_positions=args.context,
                              eos_token_id=eos, dropout=0.0, seed=seed, loss_type="ForCausalLM")
            model.load_state_dict(base.state_dict())
            t = time.time()
            info = sft(model, pool_ex, eos, args.context, METHODS[name], args, seed, hist)
            res = evaluate(model, tok, eval_ex, answers, eval_tasks, eos, args.context)
            runs.append({"method": name, "seed": seed, **res, **info, "seconds": round(time.time() - t, 1)})
            log(f"seed {seed} {name}: acc {res['accuracy']:.3f} loss {res['heldout_loss']:.3f} "
                f"eos_kept {info.get('eos_kept')} ({time.time() - t:.0f}s)", t0)
            if seed == args.seeds[0] and name == "full":
                profiles["tiny_after_full_sft"] = attention_profile(
                    model, profile_batches(pool_ex, eos, args.context), args.rho)
    if args.profile_smollm2:
        try:
            profiles["smollm2"] = smollm2_profile(list(zip(pool.prompts, pool.responses)), args.rho,
                                                  args.profile_smollm2)
        except Exception as exc:  # a missing packaged model must not lose the benchmark's results
            profiles["smollm2"] = {"error": f"{type(exc).__name__}: {exc}"}
    return {"benchmark": "sstoken", "command": COMMAND + " " + " ".join(args.argv), "config": config_of(args),
            "pool": pool.info, "vocab": len(tok), "runs": runs, "comparisons": compare(runs, args.methods),
            "summary": summarise(runs, ["base", *args.methods]), "attention_profiles": profiles,
            "seconds": round(time.time() - t0, 1), "torch_threads": torch.get_num_threads()}


def profile_batches(examples: list[Example], eos: int, context: int, n: int = 256) -> list[dict[str, torch.Tensor]]:
    """The first `n` examples in batches of 32 (the attention profiles' sample)."""
    ex = examples[:n]
    return [collate_examples(ex[s:s + 32], eos, context) for s in range(0, len(ex), 32)]


def task_of(prompt: str) -> str:
    """The task of an instruction-pool prompt (from its wording)."""
    p = prompt.lower()
    for key, task in (("add", "add"), ("plus", "add"), (" + ", "add"), ("reverse", "reverse"),
                      ("backwards", "reverse"), ("capital", "upper"), ("upper", "upper"), ("repeat", "copy"),
                      ("copy", "copy"), ("sort", "sort"), ("smallest", "sort"), ("code", "lookup")):
        if key in p:
            return task
    return "other"


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from runs of the same configuration on disjoint seeds (the seeds of each part joined;
    profiles from the first part that has each; seconds: the longest part, as they ran in parallel)."""
    keep = ("seeds", "profile_smollm2")
    first = {k: v for k, v in parts[0]["config"].items() if k not in keep}
    for q in parts[1:]:
        if {k: v for k, v in q["config"].items() if k not in keep} != first:
            raise ValueError("--merge: the parts were run with different configurations")
    res = dict(parts[0])
    res["runs"] = [r for q in parts for r in q["runs"]]
    res["config"] = {**parts[0]["config"], "seeds": sorted(x for q in parts for x in q["config"]["seeds"])}
    res["attention_profiles"] = {}
    for q in parts:
        for k, v in q["attention_profiles"].items():
            res["attention_profiles"].setdefault(k, v)
    res["seconds"] = max(q["seconds"] for q in parts)
    res["command"] = "; ".join(q["command"].strip() for q in parts)
    return res


def config_of(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k not in ("out", "argv")}


def log(msg: str, t0: float) -> None:
    print(f"[{time.time() - t0:6.0f}s] {msg}", file=sys.stderr, flush=True)


def summarise(runs: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in methods:
        rs = [r for r in runs if r["method"] == m]
        if not rs:
            continue
        acc = np.array([r["accuracy"] for r in rs])
        loss = np.array([r["heldout_loss"] for r in rs])
        s: dict[str, Any] = {"accuracy_mean": float(acc.mean()), "accuracy_std": float(acc.std(ddof=1)) if len(rs) > 1
                             else 0.0, "heldout_loss_mean": float(loss.mean()),
                             "heldout_loss_std": float(loss.std(ddof=1)) if len(rs) > 1 else 0.0, "seeds": len(rs),
                             "accuracy_by_task": {t: float(np.mean([r["accuracy_by_task"].get(t, np.nan) for r in rs]))
                                                  for t in rs[0]["accuracy_by_task"]}}
        for k in ("eos_kept", "kept_relative_position"):
            vals = [r[k] for r in rs if r.get(k) is not None]
            if vals:
                s[k] = float(np.mean(vals))
        out[m] = s
    return out


def compare(runs: list[dict[str, Any]], methods: list[str]) -> list[dict[str, Any]]:
    """Paired per-seed differences of each ssToken variant against random, full and (ablations) sstoken."""
    by = {(r["method"], r["seed"]): r for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    out = []
    for m in [x for x in methods if x.startswith("sstoken")]:
        for base in [x for x in ("random", "full", "sstoken") if x in methods and x != m]:
            ss = [s for s in seeds if (m, s) in by and (base, s) in by]
            if not ss:
                continue
            acc = paired([by[(m, s)]["accuracy"] for s in ss], [by[(base, s)]["accuracy"] for s in ss],
                         lower_is_better=False)
            loss = paired([by[(m, s)]["heldout_loss"] for s in ss], [by[(base, s)]["heldout_loss"] for s in ss])
            out.append({"method": m, "baseline": base, "accuracy": acc.as_dict(), "heldout_loss": loss.as_dict()})
    return out


def _ci(d: dict[str, Any], digits: int = 3) -> str:
    f = f"{{:+.{digits}f}}"
    lo, hi = d["lo"], d["hi"]
    rng = f"[{f.format(lo)}, {f.format(hi)}]" if math.isfinite(lo) else "[–]"
    return f"{f.format(d['mean'])} {rng}"


def markdown(res: dict[str, Any]) -> str:
    c = res["config"]
    pi = res["pool"]
    lines = [
        "# ssToken vs random tokens vs full SFT: task accuracy (issue 18, part 4)", "",
        f"Pool: {pi['docs']:,} synthetic instruction pairs (`benchmarks/selection/instruction_pool.py`, six tasks "
        f"with known answers): {pi['clean']} clean, {pi['wrong']} plausible wrong answers, {pi['garbled']} garbled, "
        f"{pi['dup']} near-duplicate prompts. Held-out: {pi['eval_docs']} clean pairs. Model: GPT-2, "
        f"{c['layers']} layers, d={c['dim']}, BPE vocab {res['vocab']}; base = {c['base_steps']} steps of LM "
        f"pre-training (every token a target, lr {c.get('base_lr', c['lr'])}) on {c['base_pairs']} clean pairs of "
        f"another draw ({c.get('base_format', 'template')} format); SFT from the base: {c['epochs']} epoch(s) "
        f"over the pool, batch {c['batch']}, one sample per row, lr {c['lr']} (linear warm-up 3%, linear decay). "
        f"rho {c['rho']}, gamma {c['gamma']}; ssToken's attention-only warm-up covers the first "
        f"{c['warmup_frac']:.0%} of the samples (the official 10,000 of 50,000). Seeds: {c['seeds']}. "
        f"Accuracy = exact match of the greedy answer (`task_accuracy.py`); loss = mean response-token loss "
        f"(answer and end token) of the held-out pairs.", "",
        "| method | accuracy (mean ± std) | held-out loss (mean ± std) | end token kept | kept position |",
        "| --- | --- | --- | ---: | ---: |"]
    for m, s in res["summary"].items():
        eos = f"{s['eos_kept']:.2f}" if "eos_kept" in s else "–"
        pos = f"{s['kept_relative_position']:.2f}" if "kept_relative_position" in s else "–"
        lines.append(f"| {m} | {s['accuracy_mean']:.3f} ± {s['accuracy_std']:.3f} | "
                     f"{s['heldout_loss_mean']:.3f} ± {s['heldout_loss_std']:.3f} | {eos} | {pos} |")
    lines += ["", "end token kept: share of samples whose end token is in the kept set (after the warm-up; "
              "a random pick of ceil(rho L) keeps it with probability ceil(rho L) / L); kept position: mean relative position of kept tokens (0 = first response "
              "token, 1 = end token; 0.5 = no position preference).", "",
              "Paired per-seed differences (method minus baseline, mean and 95% interval; accuracy: positive = "
              "better; loss: negative = better):", "",
              "| method | vs | Δ accuracy [95% CI] | verdict | Δ held-out loss [95% CI] | verdict |",
              "| --- | --- | --- | --- | --- | --- |"]
    for cmp in res["comparisons"]:
        a, lo = cmp["accuracy"], cmp["heldout_loss"]
        lines.append(f"| {cmp['method']} | {cmp['baseline']} | {_ci(a)} | {a['verdict']} | {_ci(lo)} | "
                     f"{lo['verdict']} |")
    lines += ["", "Accuracy by task (mean over seeds):", "",
              "| method | " + " | ".join(next(iter(res["summary"].values()))["accuracy_by_task"]) + " |",
              "| --- |" + " ---: |" * len(next(iter(res["summary"].values()))["accuracy_by_task"])]
    for m, s in res["summary"].items():
        lines.append(f"| {m} | " + " | ".join(f"{v:.3f}" for v in s["accuracy_by_task"].values()) + " |")
    prof = res["attention_profiles"]
    if prof:
        lines += ["", "Attention of response tokens to the prompt (last layer, head mean; the official term), by "
                  "relative position in the response (5 bins, first to end token); end token kept by attention "
                  "alone (gamma 0, rho " + f"{c['rho']}; a random pick keeps it with probability ceil(rho L) / L: the "
                  "last column); Spearman correlation of "
                  "the term with position, mean over samples:", "",
                  "| model | by position (first → last) | Spearman | end kept: prompt_sum | end kept: adjusted | "
                  "end kept: random |",
                  "| --- | --- | ---: | ---: | ---: | ---: |"]
        for name, p in prof.items():
            if "error" in p:
                lines.append(f"| {name} | {p['error']} | | | |")
                continue
            e = p["eos_kept_attention_only"]
            sp = p["spearman_position_mean"]
            lines.append(f"| {name} | {' '.join(f'{x:.3f}' for x in p['prompt_attention_by_position'])} | "
                         f"{sp:+.2f} | {e['prompt_sum']:.2f} | {e['prompt_sum_adjusted']:.2f} | "
                         f"{p['eos_kept_random']:.2f} |")
    lines += ["", f"Run time {res['seconds']:.0f} s on {res['torch_threads']} torch thread(s) (a shared machine: an "
              f"upper bound). Reproduce: `{res['command'].strip()}`. Raw per-seed results: the JSON file of the same name.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS),
                   help=f"default: {' '.join(DEFAULT_METHODS)}; sstoken_nowarmup is the warm-up ablation")
    p.add_argument("--pool", type=int, default=1000, help="instruction pairs in the SFT pool")
    p.add_argument("--pool-seed", dest="pool_seed", type=int, default=0)
    p.add_argument("--dup-clusters", dest="dup_clusters", type=int, default=20)
    p.add_argument("--eval", type=int, default=300, help="held-out clean pairs")
    p.add_argument("--base-pairs", dest="base_pairs", type=int, default=2000, help="clean pairs of the base's LM data")
    p.add_argument("--base-steps", dest="base_steps", type=int, default=450, help="LM pre-training steps of the base")
    p.add_argument("--epochs", type=int, default=2, help="SFT epochs over the pool")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3, help="peak SFT learning rate")
    p.add_argument("--base-format", dest="base_format", choices=["template", "plain"], default="template",
                   help="the base's LM text: the SFT template (it knows the tasks) or plain Q/A text")
    p.add_argument("--base-lr", dest="base_lr", type=float, default=5e-3, help="peak LM learning rate of the base")
    p.add_argument("--rho", type=float, default=0.6)
    p.add_argument("--gamma", type=float, default=0.5)
    p.add_argument("--warmup-frac", dest="warmup_frac", type=float, default=0.2,
                   help="share of the run's samples with attention-only selection (official: 10k of 50k)")
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--profile-smollm2", dest="profile_smollm2", type=int, default=128,
                   help="pool pairs for SmolLM2-135M's attention profile (0: skip)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 2 seeds, a small pool, a few steps")
    p.add_argument("--out", default=str(RESULTS / "sstoken"))
    p.add_argument("--render", metavar="JSON", help="recompute the comparisons and the Markdown of a saved run")
    p.add_argument("--merge", metavar="JSON", nargs="+",
                   help="merge runs of the same configuration on other seeds (e.g. one process per seed) into --out")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.merge:
        res = merge([json.loads(Path(f).read_text()) for f in args.merge])
        Path(args.out + ".json").write_text(json.dumps(res, indent=1))
        args.render = args.out + ".json"
    if args.render:
        res = json.loads(Path(args.render).read_text())
        methods = [m for m in dict.fromkeys(r["method"] for r in res["runs"]) if m != "base"]
        res["comparisons"] = compare(res["runs"], methods)
        res["summary"] = summarise(res["runs"], ["base", *methods])
        Path(args.render).write_text(json.dumps(res, indent=1))
        Path(args.render).with_suffix(".md").write_text(markdown(res))
        print(markdown(res))
        return 0
    if args.quick:
        args.seeds, args.pool, args.eval, args.base_pairs, args.base_steps = args.seeds[:2], 96, 24, 96, 4
        args.epochs, args.batch, args.dim, args.vocab, args.dup_clusters = 1, 16, 32, 300, 4
        args.profile_smollm2 = 0
    torch.set_num_threads(max(1, args.threads))
    res = run(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(res, indent=1))
    md = markdown(res)
    Path(args.out + ".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
