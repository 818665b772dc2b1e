"""MinHash signatures and LSH band keys, vectorised over a whole Arrow batch with numpy.

Pipeline for one batch of texts (already `exact.normalize`d):

1. **tokens**: `word` shingles split the text on whitespace and hash every word (SipHash-2-4
   through pandas `hash_array`, one call for the batch); `char` shingles use the Unicode code
   points of the whole batch (one UTF-32 decode of the batch's bytes).
2. **shingles**: every run of `n` consecutive tokens inside one document is combined into one
   64-bit value (a polynomial combine, `n` vectorised steps over all positions of the batch,
   then the splitmix64 finaliser) and kept as its low 32 bits. A document shorter than `n`
   tokens has one shingle (all its tokens); an empty document has none (it is never a
   near-duplicate candidate; exact dedup still groups empty texts). Shingles are made a set
   per document (`np.unique` on (document, shingle)), which is what Jaccard is defined on.
3. **signatures**: hash function `i` maps a shingle x (< 2^32) to ((a_i * x + b_i) mod 2^64) >> 32
   with a_i odd and b_i random 64-bit: Dietzfelbinger's multiply-add-shift, strongly universal
   from 32-bit keys to 32-bit values, three numpy operations per value. We first used
   (a_i * x + b_i) mod (2^61 - 1) with a_i, b_i < 2^32 (so the product stays exact in uint64):
   with so small a multiplier the map wraps the prime at most 8 times, nearby shingles stay in
   order, and the estimate was badly biased (0.35 for a pair with Jaccard 0.75); a_i up to 2^61
   needs a 93-bit product (split multiplications, ~3x the work). Multiply-add-shift measured
   unbiased (mean error -0.004, std 0.040 = sqrt(J(1-J)/128) over 200 random pairs). The
   signature is the per-document minimum: one (permutations x shingles) matrix per chunk of
   documents (at most `CHUNK_ELEMENTS` values), `np.minimum.reduceat` along its contiguous rows
   at the document boundaries. No Python loop per shingle or per document. (a_i, b_i) come from
   a fixed seed, so signatures are the same on every machine and engine; values are uint32.
4. **bands**: the first b*r signature values cut into b bands of r rows; each band hashed to a
   64-bit key (the band number mixed in, so equal values in different bands never collide).
   Two documents are LSH candidates when any band key is equal.

**Choosing (b, r)** (`optimal_param`): with Jaccard similarity s, one band matches with
probability s^r, so the chance that two documents become candidates is the S-curve
P(s) = 1 - (1 - s^r)^b. For a threshold t the false-positive area is the integral of P(s) over
[0, t] and the false-negative area the integral of 1 - P(s) over [t, 1]; we take the (b, r)
with b*r <= num_perm that minimises fp_weight * FP + fn_weight * FN (trapezoid rule on 1,001
points). b*r may be below num_perm (only b*r permutations are computed then): restricting to
exact divisors of num_perm leaves too few curves (for t = 0.8 and 128 permutations only 16x8,
whose 50% point is s ~= 0.71, or 8x16, s ~= 0.88). With `verify` the candidates are checked
by exact Jaccard, so false positives cost only time; `MinHashSpec.band_rows` then weights false
negatives 9x (threshold 0.8, 128 permutations: 14 x 9 instead of 9 x 13).

**Why our own numpy rather than datasketch**: datasketch's `MinHash.update_batch` works one
document at a time and hashes every shingle in Python (sha1 by default), so the shingles of a
document are Python bytes objects and the cost grows with Python calls; here a whole Arrow
batch is one set of numpy calls, signatures are uint32 (half of datasketch's uint64), and the
shingle sets needed for verification come out of the same pass. Measured with
`benchmarks/bench_minhash_speed.py` (10,000 documents of 200 words, 5-word shingles, 128
permutations, 1 process, 2 cores shared with other work): this module 7,910 docs per CPU-second
(normalisation, shingling and signatures), datasketch 2.0.0 3,539 (shingling and signatures
only): 2.2x (`benchmarks/results/dedup_minhash_speed.txt`). rensa 0.5 (Rust), given these
shingle sets through its bulk API, computes signatures ~4x faster than step 3 counting the copy
back to numpy (it returns Python lists), which makes the whole pass ~1.3x faster; not adopted:
signatures here are a pure function of this code (a resumed run never mixes two library
versions), no compiled dependency, and steps 1-2 dominate (docs/dedup.md has the numbers).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.dedup.exact import hash_strings

EMPTY = np.uint32(0xFFFF_FFFF)  # the signature of a document without shingles (never banded: see `band_keys`)
CHUNK_ELEMENTS = 1 << 22  # shingles x permutations per chunk: 32 MiB of uint64 (bounds a task's memory)
PERM_SEED = 0x5EED_0F_1A5  # fixed: signatures do not depend on the job seed (a copy is a copy)
_WORD_KEY = "776f72647368696e"  # SipHash key of the word hashes (hex of b"wordshin")
_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)
_P = np.uint64(0x100000001B3)  # the combine's multiplier (FNV prime)

Shingle = Literal["word", "char"]


def mix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser (a bijection of uint64 that spreads every input bit)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * _C1
        x = x ^ (x >> np.uint64(27))
        x = x * _C2
        return x ^ (x >> np.uint64(31))


def tokens(normalized: pa.Array, kind: Shingle) -> tuple[np.ndarray, np.ndarray]:
    """(token values uint64, offsets int64 of length n+1) of a batch of normalised texts."""
    if isinstance(normalized, pa.ChunkedArray):
        normalized = normalized.combine_chunks()
    n = len(normalized)
    if kind == "word":
        words = pc.utf8_split_whitespace(normalized)  # normalised: no empty word but the one of an empty text
        empty = pc.equal(pc.utf8_length(normalized), 0).to_numpy(zero_copy_only=False)
        lengths = pc.list_value_length(words).to_numpy(zero_copy_only=False).astype(np.int64)
        lengths[empty] = 0
        flat = pc.list_flatten(words)
        tok = hash_strings(flat.filter(pc.not_equal(pc.utf8_length(flat), 0)) if empty.any() else flat, _WORD_KEY)
    else:
        lengths = pc.fill_null(pc.utf8_length(normalized), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        offs = np.frombuffer(normalized.buffers()[1], dtype=np.int32)[normalized.offset:normalized.offset + n + 1]
        data = normalized.buffers()[2]
        raw = b"" if data is None or n == 0 else data.to_pybytes()[offs[0]:offs[-1]]
        tok = np.frombuffer(raw.decode("utf-8").encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] != len(tok):
        raise ValueError(f"tokens: {len(tok)} tokens for offsets ending at {offsets[-1]}")
    return tok, offsets


def shingles(tok: np.ndarray, offsets: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The shingle SETS of every document: (uint32 values sorted within each document, offsets of
    length docs+1). A document with fewer than n tokens has one shingle; an empty one none."""
    docs = len(offsets) - 1
    total = len(tok)
    if total == 0:
        return np.zeros(0, dtype=np.uint32), np.zeros(docs + 1, dtype=np.int64)
    lengths = np.diff(offsets)
    doc_of = np.repeat(np.arange(docs, dtype=np.int64), lengths)
    start, end = offsets[doc_of], offsets[doc_of + 1]
    i = np.arange(total, dtype=np.int64)
    valid = (i + n <= end) | ((i == start) & (end - start < n))
    pos, e, d = i[valid], end[valid], doc_of[valid]
    h = np.full(len(pos), np.uint64(n), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            idx = pos + j
            ok = idx < e
            h = np.where(ok, h * _P + tok[np.minimum(idx, total - 1)], h)
    sh = (mix64(h) & np.uint64(0xFFFF_FFFF))
    key = np.sort((d.astype(np.uint64) << np.uint64(32)) | sh)  # by (document, shingle); nearly sorted already
    if len(key) > 1:
        key = key[np.concatenate(([True], key[1:] != key[:-1]))]  # distinct (np.unique is ~100x slower here)
    out_docs = (key >> np.uint64(32)).astype(np.int64)
    out = np.zeros(docs + 1, dtype=np.int64)
    np.cumsum(np.bincount(out_docs, minlength=docs), out=out[1:])
    return (key & np.uint64(0xFFFF_FFFF)).astype(np.uint32), out


def permutations(num_perm: int) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) of the hash functions, from a fixed seed: a odd in [1, 2^64), b in [0, 2^64)."""
    rng = np.random.default_rng(PERM_SEED)
    a = rng.integers(0, np.iinfo(np.uint64).max, size=num_perm, dtype=np.uint64, endpoint=True) | np.uint64(1)
    b = rng.integers(0, np.iinfo(np.uint64).max, size=num_perm, dtype=np.uint64, endpoint=True)
    return a, b


def signatures(sh: np.ndarray, offsets: np.ndarray, num_perm: int) -> np.ndarray:
    """(docs, num_perm) uint32 MinHash signatures of the shingle sets (`EMPTY` for a document
    without shingles)."""
    docs = len(offsets) - 1
    a, b = permutations(num_perm)
    sig = np.full((docs, num_perm), EMPTY, dtype=np.uint32)
    counts = np.diff(offsets)
    nonempty = np.flatnonzero(counts > 0)
    if not len(nonempty):
        return sig
    per_chunk = max(1, CHUNK_ELEMENTS // num_perm)  # shingles per chunk (a longer document is one chunk)
    ends = offsets[nonempty + 1]
    k = 0
    while k < len(nonempty):
        lo = offsets[nonempty[k]]
        stop = max(int(np.searchsorted(ends, lo + per_chunk, side="right")), k + 1)
        chunk = nonempty[k:stop]
        x = sh[lo:offsets[chunk[-1] + 1]].astype(np.uint64)
        y = np.multiply.outer(a, x)  # (permutations, shingles): the min runs along contiguous rows
        y += b[:, None]  # mod 2^64
        y >>= np.uint64(32)
        sig[chunk] = np.minimum.reduceat(y, offsets[chunk] - lo, axis=1).T
        k = stop
    return sig


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(docs, bands) uint64: the hash of each band's r signature values, the band number mixed in."""
    docs = sig.shape[0]
    s = sig[:, : bands * rows].reshape(docs, bands, rows)
    h = np.broadcast_to(np.arange(bands, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15), (docs, bands)).copy()
    with np.errstate(over="ignore"):
        for k in range(rows):
            h = mix64(h * _P + s[:, :, k])
    return h


def candidate_probability(s: np.ndarray | float, bands: int, rows: int) -> np.ndarray:
    """The S-curve: P(two documents with Jaccard s share a band) = 1 - (1 - s^r)^b."""
    return 1.0 - (1.0 - np.asarray(s, dtype=np.float64) ** rows) ** bands


def optimal_param(threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5
                  ) -> tuple[int, int]:
    """(bands, rows), b*r <= num_perm, minimising fp_weight * FP + fn_weight * FN, where FP is the
    area under the S-curve below the threshold and FN the area above it left uncovered."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold {threshold} must be in (0, 1)")
    lo = np.linspace(0.0, threshold, 1001)
    hi = np.linspace(threshold, 1.0, 1001)
    best, best_err = (1, num_perm), np.inf
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = np.trapezoid(candidate_probability(lo, b, r), lo)
            fn = np.trapezoid(1.0 - candidate_probability(hi, b, r), hi)
            err = fp_weight * fp + fn_weight * fn
            if err < best_err - 1e-15:
                best, best_err = (b, r), err
    return best


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two sorted distinct shingle sets (1.0 for two empty sets)."""
    if len(a) == 0 and len(b) == 0:
        return 1.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


def batch_signatures(normalized: pa.Array, kind: Shingle, n: int, num_perm: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(signatures, shingle values, shingle offsets) of a batch of normalised texts."""
    tok, offsets = tokens(normalized, kind)
    sh, sh_off = shingles(tok, offsets, n)
    return signatures(sh, sh_off, num_perm), sh, sh_off
