"""The GPU path, checked on a CUDA machine in a few minutes (`make gpu-check`).

Writes benchmarks/results/gpu.json (after every part, so a killed run keeps what it measured):

1. perplexity: the `perplexity` scorer (SmolLM2-135M, `dtype: auto` = bf16 on a bf16 GPU)
   against a bare forward loop over the same pre-tokenised, length-sorted batches (the
   `bench_scoring.py` comparison), tokens/s and the ratio.
2. embedding: the MiniLM `embedding` scorer in bf16 against a bare forward + mean-pooling
   loop over the same batches, docs/s; and the cosine of its bf16 vectors to fp32 ones.
3. faiss: spherical k-means (200k x 384, k=1000, 20 iterations) on the GPU against the CPU,
   seconds and the final objective (when faiss has GPU support, i.e. faiss-gpu is installed).
4. DATAMASK: one block solved on CUDA against the CPU (`bench_datamask.py`'s data), seconds
   and the objective.
5. Spark: a standalone master + one worker on 127.0.0.1 that discovers the GPUs with
   jobs/spark/get_gpus_resources.sh, a job with the embedding scorer submitted with
   `spark.executor.resource.gpu.amount` / `spark.task.resource.gpu.amount`; records which
   device every task used and that the job's counts match a local run.

Without CUDA it prints one line saying so and exits 0. `--rehearse` runs every part on the
CPU with tiny sizes and fake GPU addresses for Spark: it checks the script, not a GPU.

    .venv/bin/python benchmarks/gpu_check.py                 # on a CUDA machine, under 8 minutes
    .venv/bin/python benchmarks/gpu_check.py --skip spark    # parts: perplexity embedding faiss datamask spark
    .venv/bin/python benchmarks/gpu_check.py --rehearse --out /tmp/gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

PARTS = ("perplexity", "embedding", "faiss", "datamask", "spark")
DEADLINE_S = 7 * 60  # parts not started by then are skipped (the whole check stays under 8 minutes)


def no_cuda_reason() -> str | None:
    """None when torch sees a CUDA GPU, else why not (one line)."""
    try:
        import torch
    except Exception as exc:  # pragma: no cover - torch is a core dependency
        return f"torch cannot be imported ({type(exc).__name__})"
    if torch.cuda.is_available():
        return None
    build = torch.version.cuda
    return (f"torch {torch.__version__} sees no CUDA GPU" + (f" (a CUDA {build} build)" if build else
                                                              " (a CPU-only build)"))


def _sync(device: Any) -> None:
    import torch

    if getattr(device, "type", str(device)).startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], repeats: int = 1) -> tuple[float, Any]:
    """(best wall seconds over `repeats`, last result)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


# -- 1. perplexity -------------------------------------------------------------------------
def perplexity_part(device: str, docs: int, model: str = "smollm2", max_length: int = 512,
                    repeats: int = 2) -> dict[str, Any]:
    from benchmarks.bench_scoring import bench_perplexity

    res = bench_perplexity(model, device, docs, max_length, None, repeats, False)
    return {k: res[k] for k in ("model", "device", "dtype", "docs", "tokens", "max_tokens_per_batch", "scorer_tok_s",
                                "bare_tok_s", "ratio_wall", "scorer_padding_fraction", "bare_padding_fraction",
                                "load_seconds", "mean_ppl") if k in res}


# -- 2. embedding --------------------------------------------------------------------------
def embedding_part(device: str, docs: int, repeats: int = 2) -> dict[str, Any]:
    import numpy as np
    import pyarrow as pa
    import torch

    from benchmarks.bench_scoring import bbc_paragraphs
    from thresher.common.arrays import vectors_to_numpy
    from thresher.models.batching import TokenBatcher
    from thresher.scorers.registry import build_scorer

    texts = bbc_paragraphs(docs, seed=2)
    batch = pa.record_batch({"id": [str(i) for i in range(len(texts))], "text": texts})
    scorer = build_scorer({"type": "embedding", "device": device})
    scorer.ensure_setup()
    lm, batcher = scorer._lm, scorer._batcher
    dev = lm.device
    scorer(pa.record_batch({"id": ["w"], "text": [texts[0]]}))  # warm-up

    enc = batcher.encode(texts)
    segs = [s for i, ids in enumerate(enc) for s in batcher.split(i, ids)]
    plan = TokenBatcher(lm.tokenizer, max_length=batcher.max_length, max_tokens_per_batch=batcher.max_tokens_per_batch,
                        policy=batcher.policy, mode="encoder").plan(segs)
    bare_batches = [batcher.collate([segs[i] for i in group]) for group in plan]
    tensors = [(b.input_ids.to(dev), b.attention_mask.to(dev)) for b in bare_batches]

    def bare() -> None:
        with torch.inference_mode():
            for ids, mask in tensors:
                h = lm.model(input_ids=ids, attention_mask=mask).last_hidden_state
                m = mask.unsqueeze(-1).to(h.dtype)
                v = (h * m).sum(1) / m.sum(1).clamp(min=1)
                torch.nn.functional.normalize(v.float(), dim=-1).cpu()
        _sync(dev)

    def scored() -> Any:
        out = scorer(batch)
        _sync(dev)
        return out

    t_bare, _ = _timed(bare, repeats)
    t_scorer, out = _timed(scored, repeats)
    vecs, _ = vectors_to_numpy(out["embedding_vector"])
    fp32 = build_scorer({"type": "embedding", "device": device, "dtype": "float32"})
    t_fp32, ref = _timed(lambda: (fp32(batch), _sync(dev))[0], 1)
    ref_vecs, _ = vectors_to_numpy(ref["embedding_vector"])
    return {"model": "minilm", "device": str(dev), "dtype": str(lm.dtype).replace("torch.", ""), "docs": len(texts),
            "scorer_docs_s": round(len(texts) / t_scorer, 1), "bare_docs_s": round(len(texts) / t_bare, 1),
            "ratio_wall": round(t_bare / t_scorer, 3), "fp32_scorer_docs_s": round(len(texts) / t_fp32, 1),
            "min_cosine_to_fp32": round(float(np.min(np.sum(vecs * ref_vecs, axis=1))), 5)}


# -- 3. faiss ------------------------------------------------------------------------------
def faiss_part(n: int, d: int = 384, k: int = 1000, niter: int = 20, gpu: bool = True) -> dict[str, Any]:
    import faiss
    import numpy as np

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(max(k * 2, 10), d)).astype(np.float32)
    x = centers[rng.integers(0, len(centers), size=n)] + 0.5 * rng.normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    res: dict[str, Any] = {"n": n, "d": d, "k": k, "niter": niter, "faiss": faiss.__version__,
                           "faiss_gpus": int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0}

    def fit(on_gpu: bool) -> tuple[float, float]:
        km = faiss.Kmeans(d, k, niter=niter, seed=0, spherical=True, verbose=False, gpu=on_gpu)
        t0 = time.perf_counter()
        km.train(x)
        return time.perf_counter() - t0, float(km.obj[-1])

    res["cpu_s"], res["cpu_objective"] = (round(v, 4) for v in fit(False))
    if not gpu:
        res["gpu"] = "not asked (--rehearse)"
    elif res["faiss_gpus"] == 0:
        res["gpu"] = "faiss has no GPU support here (faiss-cpu); install faiss-gpu-cu12 (the [gpu] extra)"
    else:
        res["gpu_s"], res["gpu_objective"] = (round(v, 4) for v in fit(True))
        res["speedup"] = round(res["cpu_s"] / res["gpu_s"], 2)
        res["objective_ratio_gpu_vs_cpu"] = round(res["gpu_objective"] / res["cpu_objective"], 5)
    return res


# -- 4. DATAMASK ---------------------------------------------------------------------------
def datamask_part(sizes: list[int], devices: list[str], repeats: int = 3) -> dict[str, Any]:
    import torch

    from benchmarks.bench_datamask import synthetic
    from thresher.selectors.datamask import DataMaskParams, solve_block

    rows = []
    for n in sizes:
        q, emb = synthetic(n)
        s = n // 10
        row: dict[str, Any] = {"n": n, "budget_docs": s}
        for dev in devices:
            p = DataMaskParams(quality="q", diversity="pws", device=dev, threads=torch.get_num_threads())
            solve_block(q, emb, s, p, seed=0)  # warm-up (CUDA context, kernels)
            t, r = _timed(lambda: solve_block(q, emb, s, p, seed=0), repeats)
            row[f"{dev}_s"], row[f"{dev}_objective"] = round(t, 4), round(float(r.objective), 5)
        if len(devices) == 2:
            a, b = devices
            row["speedup"] = round(row[f"{a}_s"] / row[f"{b}_s"], 2)
            row["objective_ratio"] = round(row[f"{b}_objective"] / row[f"{a}_objective"], 5) \
                if row[f"{a}_objective"] else None
        rows.append(row)
    return {"diversity": "pws", "lam": DataMaskParams(quality="q").lam, "rows": rows}


# -- 5. Spark with GPU resource scheduling --------------------------------------------------
from benchmarks.spark_cluster import standalone_cluster  # noqa: E402


def spark_part(docs: int, rehearse: bool) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from benchmarks.bench_scoring import bbc_paragraphs
    from thresher import run
    from thresher.config import load_job
    from thresher.io.readers import plan_shards
    from thresher.pipelines import stages
    from thresher.pipelines.spark_engine import SparkEngine, get_session

    have_smi = shutil.which("nvidia-smi") is not None
    gpus = 1
    scorers: list[dict[str, Any]] = [{"type": "heuristics"}]
    if not rehearse:  # a model scorer with device auto: the task's GPU
        scorers.append({"type": "embedding", "device": "auto", "max_length": 128})
    with tempfile.TemporaryDirectory(prefix="thresher-gpu-spark-") as tmp_s:
        tmp = Path(tmp_s)
        texts = bbc_paragraphs(docs, seed=5)
        (tmp / "in").mkdir()
        for i in range(4):
            part = texts[i::4]
            pq.write_table(pa.table({"text": part}), tmp / "in" / f"part-{i}.parquet")
        base = {"name": "gpu-check-spark", "seed": 0, "input": {"path": str(tmp / "in")}, "scorers": scorers,
                "selector": {"type": "topk", "column": "n_words", "budget": 0.3},
                "output": {"path": str(tmp / "local")}, "engine": {"name": "local", "local": {"workers": 1}}}
        t0 = time.perf_counter()
        local = run(base, progress=False)
        t_local = time.perf_counter() - t0
        with standalone_cluster(tmp, gpus, fake=rehearse or not have_smi) as url:
            conf = {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
                    "spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1",
                    "spark.cores.max": "4", "spark.executor.cores": "4", "spark.task.cpus": "4",
                    "spark.executor.memory": "4g", "spark.task.maxFailures": "2",
                    "spark.executor.resource.gpu.amount": str(gpus), "spark.task.resource.gpu.amount": "1",
                    "spark.thresher.executorWaitSeconds": "60"}
            engine = {"name": "spark", "spark": {"master": url, "conf": conf}}
            job = {**base, "engine": engine, "output": {"path": str(tmp / "cluster")}}
            t0 = time.perf_counter()
            res = run(job, progress=False)
            t_cluster = time.perf_counter() - t0
            spec = load_job(data={**job, "output": {"path": str(tmp / "probe")}})
            session, owned = get_session(spec.engine.spark, progress=False)
            try:
                eng = SparkEngine(spec, progress=False)
                try:
                    results = eng.map_shards("score", stages.score_shard, spec, plan_shards(spec.input),
                                             str(tmp / "probe"))
                finally:
                    eng.close()
            finally:
                if owned:
                    session.stop()
        tasks = [r.get("_task", {}) for r in results]
        devices = sorted({str(t.get("device")) for t in tasks})
        return {"master": "standalone on 127.0.0.1 (1 worker, 4 cores)", "gpus_announced": gpus,
                "discovery": "fake addresses (THRESHER_FAKE_GPUS)" if (rehearse or not have_smi) else "nvidia-smi",
                "scorers": [s["type"] for s in scorers], "docs": len(texts), "shards": len(tasks),
                "task_devices": devices, "task_gpus": sorted({",".join(t.get("gpus", [])) for t in tasks}),
                "every_task_on_a_gpu": all(str(t.get("device", "")).startswith("cuda:") for t in tasks),
                "counts_match_local": res.manifest["counts"] == local.manifest["counts"],
                "local_s": round(t_local, 2), "cluster_s": round(t_cluster, 2)}


# -- main ----------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                            "torch": torch.__version__, "torch_cuda": torch.version.cuda}
    if torch.cuda.is_available():
        info.update({"gpu": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(),
                     "bf16_supported": bool(torch.cuda.is_bf16_supported())})
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "gpu.json")
    ap.add_argument("--skip", nargs="*", default=[], choices=PARTS)
    ap.add_argument("--rehearse", action="store_true",
                    help="every part on the CPU, tiny sizes, fake GPU addresses for Spark (checks the script)")
    args = ap.parse_args(argv)
    reason = no_cuda_reason()
    if reason is not None and not args.rehearse:
        print(f"gpu_check: no CUDA GPU ({reason}); nothing to check, exiting")
        return 0
    import torch

    dev = "cpu" if args.rehearse else "cuda"
    t_start = time.perf_counter()
    res: dict[str, Any] = {"machine": machine(), "rehearsal": args.rehearse, "parts": {}}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        res["seconds"] = round(time.perf_counter() - t_start, 1)
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps(res, indent=1) + "\n")
        os.replace(tmp, args.out)

    model = "smollm2"
    with tempfile.TemporaryDirectory(prefix="thresher-gpu-check-") as scratch:
        if args.rehearse:
            from benchmarks.bench_scoring import tiny_model

            model = tiny_model(Path(scratch) / "tiny")
        work: dict[str, Callable[[], dict[str, Any]]] = {
            "perplexity": lambda: perplexity_part(dev, 16 if args.rehearse else 2000, model,
                                                  repeats=1 if args.rehearse else 2),
            "embedding": lambda: embedding_part(dev, 16 if args.rehearse else 5000, repeats=1 if args.rehearse else 2),
            "faiss": lambda: faiss_part(5000 if args.rehearse else 200_000, k=50 if args.rehearse else 1000,
                                        gpu=not args.rehearse),
            "datamask": lambda: datamask_part([2000] if args.rehearse else [50_000, 100_000],
                                              ["cpu"] if args.rehearse else ["cpu", "cuda"],
                                              repeats=1 if args.rehearse else 3),
            "spark": lambda: spark_part(40 if args.rehearse else 400, args.rehearse),
        }
        for name in PARTS:
            if name in args.skip:
                continue
            if time.perf_counter() - t_start > DEADLINE_S:
                res["parts"][name] = {"skipped": f"not started: past {DEADLINE_S} s"}
                save()
                continue
            t0 = time.perf_counter()
            try:
                out = work[name]()
                out["seconds"] = round(time.perf_counter() - t0, 1)
                res["parts"][name] = out
                print(f"{name}: {json.dumps(out)}", flush=True)
            except Exception as exc:  # one broken part does not hide the others
                res["parts"][name] = {"error": f"{type(exc).__name__}: {exc}"[:2000],
                                      "traceback": traceback.format_exc()[-3000:],
                                      "seconds": round(time.perf_counter() - t0, 1)}
                print(f"{name}: FAILED {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            if dev == "cuda":
                torch.cuda.empty_cache()
            save()
    failed = [k for k, v in res["parts"].items() if "error" in v]
    print(f"wrote {args.out} in {res.get('seconds')} s" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
