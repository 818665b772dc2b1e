"""Deterministic synthetic English-like web corpus for benchmarks.

`write_corpus(folder, n_docs, n_files, seed)` writes `folder/data/part-XXXXX.parquet`
(columns `id`, `text`, `url`, `kind`) and `folder/corpus.json` (the parameters, per-kind
counts and a content hash, so a later run can reuse the folder). The same arguments
always give the same bytes of text: every file draws from its own generator seeded by
`(seed, file index)`, so files can be generated in parallel.

Documents are ~100-300 words of prose: Zipf-distributed words (real English function
words at the top of the ranking, then real and made-up content words), sentences of
6-25 words with capitals, commas and full stops, paragraphs separated by blank lines
or single newlines. About a quarter of the documents are junk of the kinds heuristic
filters (Gopher, C4, FineWeb) are meant to remove:

    short        5-45 words
    rep_lines    a few menu/boilerplate lines repeated many times
    hashtags     prose with `#tag` tokens on a large share of words
    ellipsis     lines that end with "..." (teaser lists)
    numbers      tables of numbers, prices and symbols (few alphabetic words)
    spam         a short phrase repeated (n-gram repetition)
    keywords     keyword lists without stop words
    footer       clean prose plus a boilerplate footer repeated 1-4 times (borderline:
                 whether it fails depends on the exact definition of the rules)

Run it alone: `python benchmarks/corpus.py OUT_DIR --docs 200000 --files 8 --seed 0`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

CORPUS_VERSION = 1

# kind -> share of the corpus (the rest is clean prose)
JUNK_MIX: dict[str, float] = {
    "short": 0.05,
    "rep_lines": 0.04,
    "hashtags": 0.02,
    "ellipsis": 0.02,
    "numbers": 0.02,
    "spam": 0.03,
    "keywords": 0.02,
    "footer": 0.04,
}

# Function words in rough frequency order (the head of the Zipf ranking).
FUNCTION_WORDS = (
    "the of and to a in is that for it was on with as be by at this are from or have an they which "
    "not but you his her were their one all we can has there been if more when will would who so no "
    "she other its about what up out them into only some could than then these two may first any "
    "new like our over such after also most did many before must through back years where much your "
    "way well down should because each just those people how too little very make world still own "
    "see men work long get here between both life being under never day same another know while last "
    "might us great old year off come since against go came right used take three"
).split()

CONTENT_WORDS = (
    "system water history house family government school company program question country problem "
    "market research service information community development language process model result "
    "student teacher city village river mountain forest garden season weather morning evening "
    "computer network software library museum hospital doctor patient medicine science energy "
    "policy economy industry product customer quality design material method theory practice "
    "project team member leader council report article story book paper letter record archive "
    "station bridge harbour island valley coast region province county district street building "
    "window kitchen table chair paint music song dance festival theatre church castle tower "
    "ancient modern simple complex careful quiet bright narrow broad gentle strong rapid steady "
    "measure follow require provide consider develop include continue describe explain produce "
    "suggest receive remember understand support increase reduce improve prepare protect discover "
    "travel journey voyage harvest orchard meadow stream canyon glacier volcano desert prairie "
    "engine vehicle railway airport journey passenger ticket schedule platform carriage freight "
    "nation empire kingdom republic treaty border army battle victory defeat alliance colony "
    "painting portrait sculpture gallery exhibition collection curator visitor audience critic "
    "chemistry biology physics geology astronomy mathematics statistics economics philosophy"
).split()

_ONSETS = ("b", "c", "d", "f", "g", "h", "l", "m", "n", "p", "r", "s", "t", "v", "w", "br", "cl", "dr", "gr",
           "pl", "st", "tr", "sh", "ch", "th")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "ou", "io")
_CODAS = ("", "", "n", "r", "s", "t", "l", "nd", "st", "ng", "rk", "m")

FOOTERS = (
    "Copyright 2024 All rights reserved. Terms of use and privacy policy apply.",
    "Share this article on social media. Subscribe to our newsletter for weekly updates.",
    "Click here to read more stories from our archive and related categories.",
    "Leave a comment below and tell us what you think about this post.",
)
MENU = ("Home", "About us", "Contact", "Products and services", "Latest news", "Login", "Register",
        "Privacy policy", "Terms of service", "Site map", "Careers", "Help center")
SPAM = ("buy cheap shoes online", "best price guaranteed today", "free shipping on all orders",
        "click here now", "limited time offer", "download free software")


def _pseudo_words(n: int, seed: int) -> list[str]:
    """n distinct made-up words of 1-4 syllables (deterministic)."""
    rng = np.random.default_rng([seed, 7919])
    out: list[str] = []
    seen = set(FUNCTION_WORDS) | set(CONTENT_WORDS)
    while len(out) < n:
        k = int(rng.choice([1, 2, 2, 3, 3, 4]))
        w = "".join(_ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))] for _ in range(k))
        w += _CODAS[rng.integers(len(_CODAS))]
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


class Vocabulary:
    """Words, their capitalised forms and a Zipf sampling distribution."""

    def __init__(self, size: int = 8000, zipf: float = 1.05, seed: int = 0) -> None:
        words = FUNCTION_WORDS + CONTENT_WORDS
        words = words + _pseudo_words(size - len(words), seed)
        self.words = np.array(words, dtype=object)
        self.cap = np.array([w.capitalize() for w in words], dtype=object)
        ranks = np.arange(1, len(words) + 1, dtype=np.float64)
        p = ranks ** -zipf
        self.cdf = np.cumsum(p / p.sum())
        self.cdf[-1] = 1.0
        # content words only (no Gopher stop words): the tail after the function words
        self.first_content = len(FUNCTION_WORDS)

    def sample(self, rng: np.random.Generator, n: int, content_only: bool = False) -> np.ndarray:
        u = rng.random(n)
        if content_only:
            lo = self.cdf[self.first_content - 1]
            u = lo + u * (1.0 - lo)
        return np.minimum(np.searchsorted(self.cdf, u, side="right"), len(self.words) - 1)


def _sentences(vocab: Vocabulary, rng: np.random.Generator, n_words: int) -> list[str]:
    """Sentences totalling n_words words: capitalised, commas, a full stop (or ? !)."""
    codes = vocab.sample(rng, n_words)
    toks = vocab.words[codes]
    lens = rng.integers(6, 26, size=n_words // 6 + 2)
    ends = np.cumsum(lens)
    ends = ends[ends < n_words]
    starts = np.concatenate([[0], ends])
    toks[starts] = vocab.cap[codes[starts]]
    commas = np.flatnonzero(rng.random(n_words) < 0.05)
    toks[commas] = toks[commas] + ","
    bounds = np.concatenate([starts, [n_words]])
    marks = rng.choice([".", ".", ".", ".", ".", ".", "?", "!"], size=len(bounds) - 1)
    out = []
    for a, b, m in zip(bounds[:-1].tolist(), bounds[1:].tolist(), marks.tolist()):
        s = " ".join(toks[a:b].tolist()).rstrip(",")
        out.append(s + m)
    return out


def _paragraphs(sents: list[str], rng: np.random.Generator) -> str:
    """Group sentences into paragraphs of 1-6 sentences; blank-line or newline separated."""
    sep = "\n\n" if rng.random() < 0.6 else "\n"
    paras = []
    i = 0
    while i < len(sents):
        k = int(rng.integers(1, 7))
        paras.append(" ".join(sents[i:i + k]))
        i += k
    return sep.join(paras)


def clean_doc(vocab: Vocabulary, rng: np.random.Generator) -> str:
    return _paragraphs(_sentences(vocab, rng, int(rng.integers(100, 301))), rng)


def junk_doc(kind: str, vocab: Vocabulary, rng: np.random.Generator) -> str:
    if kind == "short":
        return " ".join(_sentences(vocab, rng, int(rng.integers(5, 46))))
    if kind == "rep_lines":
        lines = [MENU[i] for i in rng.choice(len(MENU), size=int(rng.integers(3, 7)), replace=False)]
        body = " ".join(_sentences(vocab, rng, int(rng.integers(30, 60))))
        reps = int(rng.integers(5, 12))
        return "\n".join(lines * reps) + "\n" + body
    if kind == "hashtags":
        sents = _sentences(vocab, rng, int(rng.integers(100, 250)))
        text = " ".join(sents).split(" ")
        idx = np.flatnonzero(rng.random(len(text)) < 0.25)
        for i in idx.tolist():
            text[i] = "#" + text[i].strip(".,?!").lower()
        return " ".join(text)
    if kind == "ellipsis":
        n = int(rng.integers(8, 20))
        lines = []
        for _ in range(n):
            s = " ".join(_sentences(vocab, rng, int(rng.integers(8, 20))))
            lines.append(s.rstrip(".?!") + ("..." if rng.random() < 0.7 else "."))
        return "\n".join(lines)
    if kind == "numbers":
        rows = []
        for _ in range(int(rng.integers(10, 30))):
            cells = [f"{rng.integers(0, 10000)}", f"${rng.integers(1, 999)}.{rng.integers(0, 100):02d}",
                     f"{rng.random() * 100:.1f}%", "|", f"{rng.integers(1990, 2025)}-{rng.integers(1, 13):02d}"]
            word = vocab.words[vocab.sample(rng, 1)[0]]
            rows.append(" ".join([str(word)] + cells))
        return "\n".join(rows)
    if kind == "spam":
        phrase = SPAM[int(rng.integers(len(SPAM)))]
        parts = []
        for _ in range(int(rng.integers(15, 40))):
            parts.append(phrase.capitalize() + "!" if rng.random() < 0.5 else phrase)
            if rng.random() < 0.3:
                parts.append(" ".join(_sentences(vocab, rng, int(rng.integers(6, 12)))))
        return " ".join(parts)
    if kind == "keywords":
        codes = vocab.sample(rng, int(rng.integers(80, 200)), content_only=True)
        words = vocab.words[codes].tolist()
        lines = [", ".join(words[i:i + 10]) for i in range(0, len(words), 10)]
        return "\n".join(lines)
    if kind == "footer":
        body = clean_doc(vocab, rng)
        footer = FOOTERS[int(rng.integers(len(FOOTERS)))]
        return body + ("\n" + footer) * int(rng.integers(1, 5))
    raise ValueError(f"unknown document kind {kind!r}")


def kinds_for(n: int, rng: np.random.Generator) -> np.ndarray:
    """The kind of each of n documents (clean or one of JUNK_MIX), drawn i.i.d."""
    names = ["clean", *JUNK_MIX]
    p = np.array([1.0 - sum(JUNK_MIX.values()), *JUNK_MIX.values()])
    return np.array(names, dtype=object)[rng.choice(len(names), size=n, p=p)]


def make_documents(n: int, seed: int, file_index: int, start: int, vocab: Vocabulary | None = None) -> pa.Table:
    """n documents for file `file_index`, with global ids from `start`."""
    vocab = vocab or Vocabulary(seed=seed)
    rng = np.random.default_rng([seed, file_index])
    kinds = kinds_for(n, rng)
    texts = [clean_doc(vocab, rng) if k == "clean" else junk_doc(k, vocab, rng) for k in kinds.tolist()]
    ids = [f"doc-{start + i:09d}" for i in range(n)]
    hosts = rng.integers(0, 5000, size=n)
    urls = [f"https://site{h}.example.org/page/{start + i}" for i, h in enumerate(hosts.tolist())]
    return pa.table({"id": ids, "text": texts, "url": urls, "kind": pa.array(kinds.tolist(), pa.string())})


def _write_file(args: tuple[str, int, int, int, int]) -> dict[str, Any]:
    path, n, seed, index, start = args
    table = make_documents(n, seed, index, start)
    tmp = path + ".tmp"
    pq.write_table(table, tmp, compression="zstd", row_group_size=10_000)
    os.replace(tmp, path)
    kinds = table.column("kind").value_counts().to_pylist()
    digest = hashlib.sha256()
    for chunk in table.column("text").chunks:
        digest.update(chunk.buffers()[2] or b"")
    return {"file": os.path.basename(path), "rows": n, "bytes": os.path.getsize(path),
            "text_sha256": digest.hexdigest(), "kinds": {d["values"]: d["counts"] for d in kinds}}


def write_corpus(folder: str | os.PathLike[str], n_docs: int, n_files: int = 8, seed: int = 0,
                 workers: int = 2) -> dict[str, Any]:
    """Write (or reuse, when corpus.json matches) the corpus; returns its description."""
    folder = Path(folder)
    data = folder / "data"
    meta_path = folder / "corpus.json"
    params = {"version": CORPUS_VERSION, "docs": n_docs, "files": n_files, "seed": seed}
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("params") == params and all((data / f["file"]).exists() for f in meta["files"]):
            meta["reused"] = True
            return meta
    data.mkdir(parents=True, exist_ok=True)
    for p in data.glob("*.parquet"):
        p.unlink()
    per = [n_docs // n_files + (1 if i < n_docs % n_files else 0) for i in range(n_files)]
    starts = np.concatenate([[0], np.cumsum(per)[:-1]]).tolist()
    jobs = [(str(data / f"part-{i:05d}.parquet"), per[i], seed, i, int(starts[i])) for i in range(n_files)]
    t0 = time.perf_counter()
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            files = list(pool.map(_write_file, jobs))
    else:
        files = [_write_file(j) for j in jobs]
    kinds: dict[str, int] = {}
    for f in files:
        for k, v in f["kinds"].items():
            kinds[k] = kinds.get(k, 0) + v
    meta = {
        "params": params,
        "files": files,
        "rows": sum(per),
        "bytes": sum(f["bytes"] for f in files),
        "kinds": dict(sorted(kinds.items())),
        "seconds": round(time.perf_counter() - t0, 2),
        "reused": False,
    }
    meta_path.write_text(json.dumps(meta, indent=1))
    return meta


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", help="folder: writes out/data/*.parquet and out/corpus.json")
    ap.add_argument("--docs", type=int, default=200_000)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    meta = write_corpus(args.out, args.docs, args.files, args.seed, args.workers)
    print(json.dumps({k: v for k, v in meta.items() if k != "files"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
