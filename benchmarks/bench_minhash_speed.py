"""MinHash signatures per second: thresher's numpy code (`thresher.dedup.minhash`) vs datasketch.

10,000 synthetic documents of 200 words (5,000-word vocabulary), 5-word shingles, 128
permutations, one process. thresher's three steps are timed apart (word hashes, shingle sets,
signatures). The libraries are measured only if installed (neither is a dependency):
- datasketch: `MinHash(num_perm=128).update_batch(shingles)` per document, shingles built in Python;
- rensa (Rust): its bulk API `RMinHash.digest_matrix_from_flat_token_hashes` on thresher's own
  shingle sets (so it replaces only the signature step), plus `to_rows()`, the only way to get the
  matrix back into numpy (Python lists).

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
    t0 = time.process_time()
    tok, off = minhash.tokens(exact.normalize(pa.array(texts)), "word")
    t1 = time.process_time()
    sh, sh_off = minhash.shingles(tok, off, 5)
    t2 = time.process_time()
    minhash.signatures(sh, sh_off, 128)
    t3 = time.process_time()
    lines.append(f"thresher numpy (normalise + shingle + sign): {t3 - t0:.2f} CPU-s, {args.docs / (t3 - t0):,.0f} docs/CPU-s"
                 f"  [normalise + word hashes {t1 - t0:.2f}, shingle sets {t2 - t1:.2f}, signatures {t3 - t2:.2f}]")
    try:
        import rensa
    except ImportError:
        lines.append("rensa: not installed")
    else:
        t = time.process_time()
        m = rensa.RMinHash.digest_matrix_from_flat_token_hashes(sh.astype(np.uint64), sh_off.astype(np.uint64), 128, 42)
        t4 = time.process_time()
        np.asarray(m.to_rows(), dtype=np.uint32)
        t5 = time.process_time()
        lines.append(f"rensa signatures on thresher's shingle sets:  {t4 - t:.2f} CPU-s + {t5 - t4:.2f} CPU-s to_rows() "
                     f"(vs thresher's signature step {t3 - t2:.2f})")
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
