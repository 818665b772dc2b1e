"""MinHash signatures per second: thresher's numpy code (`thresher.dedup.minhash`) vs datasketch.

10,000 synthetic documents of 200 words (5,000-word vocabulary), 5-word shingles, 128
permutations, one process. datasketch is measured only if installed (it is not a dependency):
`MinHash(num_perm=128).update_batch(shingles)` per document, shingles built in Python.

    .venv/bin/python benchmarks/bench_minhash_speed.py [--docs 10000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow as pa

from thresher.dedup import exact, minhash


def corpus(docs: int, words: int = 200, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(5000)])
    return [" ".join(vocab[rng.integers(0, len(vocab), words)]) for _ in range(docs)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=10_000)
    args = ap.parse_args()
    texts = corpus(args.docs)
    lines = [f"{args.docs} docs x 200 words, 5-word shingles, 128 permutations, 1 process"]
    t = time.process_time()
    minhash.batch_signatures(exact.normalize(pa.array(texts)), "word", 5, 128)
    dt = time.process_time() - t
    lines.append(f"thresher numpy (normalise + shingle + sign): {dt:.2f} CPU-s, {args.docs / dt:,.0f} docs/CPU-s")
    try:
        from datasketch import MinHash
    except ImportError:
        lines.append("datasketch: not installed")
    else:
        t = time.process_time()
        for doc in texts:
            w = " ".join(doc.lower().split()).split()
            sh = {" ".join(w[i:i + 5]).encode() for i in range(max(1, len(w) - 4))}
            m = MinHash(num_perm=128)
            m.update_batch(sh)
        dt = time.process_time() - t
        lines.append(f"datasketch MinHash.update_batch:              {dt:.2f} CPU-s, {args.docs / dt:,.0f} docs/CPU-s")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
