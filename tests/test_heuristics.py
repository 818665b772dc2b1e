"""Heuristic scorer: hand-computed values, a per-document reference, batch == single, rules."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pyarrow as pa
import pydantic
import pytest

import thresher.scorers.heuristics as H
from thresher.scorers.heuristics import HeuristicScorer
from thresher.scorers.registry import build_scorer, validate_scorer_spec
from thresher.scorers.stopwords import GOPHER_STOPWORDS, WORD_EDGE_PUNCTUATION

GOOD = (
    "The village library opened a new reading room this spring, and it has quickly become "
    "one of the busiest places in town.\n"
    "Volunteers spent the winter painting the walls, repairing old shelves and sorting donated "
    "books by subject so that visitors can find what they need without help.\n"
    "On weekday afternoons the room fills with students who come to study after school, while "
    "older residents gather in the mornings to read newspapers and talk about local events.\n"
    "The librarian says the project shows what a small community can achieve when people share "
    "their time, skills and ideas with each other."
)


def score(texts: list[str], **params) -> dict[str, list]:
    """Score texts with the default prefix removed from column names."""
    scorer = HeuristicScorer(HeuristicScorer.Params(**params))
    batch = pa.record_batch({"id": [str(i) for i in range(len(texts))], "text": pa.array(texts, pa.string())})
    out = scorer(batch)
    return {k.removeprefix("heuristics_"): v.to_pylist() for k, v in out.items()}


def one(text: str, **params) -> dict:
    return {k: v[0] for k, v in score([text], **params).items()}


# ---------------------------------------------------------------- hand-computed values
def test_word_level_values():
    s = one("Cats 123 #tag ... … The, and")
    assert s["n_words"] == 7
    assert s["n_chars"] == 28
    assert s["mean_word_length"] == pytest.approx((4 + 3 + 4 + 3 + 1 + 4 + 3) / 7)
    # 1 hash, 2 ellipses ("..." and "…") over 7 words: the larger ratio counts
    assert s["symbol_to_word_ratio"] == pytest.approx(2 / 7)
    # words without a letter: 123, ..., …
    assert s["frac_words_no_alpha"] == pytest.approx(3 / 7)
    # "The," and "and" are stop words after lower-casing and trimming punctuation
    assert s["stopword_count"] == 2
    assert s["digit_ratio"] == pytest.approx(3 / 28)
    # non-alphanumeric, non-space characters: # . . . … ,
    assert s["non_alnum_ratio"] == pytest.approx(6 / 28)


def test_repetition_single_word():
    s = one("a a a a a a a a a a")  # ten words, one character each
    assert s["top_2gram_char_frac"] == 1.0
    assert s["top_4gram_char_frac"] == 1.0
    # the 5-grams at positions 1..5 repeat the first: they cover words 1..9
    assert s["dup_5gram_char_frac"] == pytest.approx(0.9)
    assert s["dup_9gram_char_frac"] == pytest.approx(0.9)
    # only one 10-gram exists: nothing is repeated
    assert s["dup_10gram_char_frac"] == 0.0


def test_repetition_repeated_sentence():
    sentence = "one two three four five six seven eight nine ten"
    s = one(sentence + " " + sentence)
    # the second copy (half the characters) repeats every n-gram of the first
    for n in range(5, 11):
        assert s[f"dup_{n}gram_char_frac"] == pytest.approx(0.5)
    # every bigram occurs twice; the first-seen one ("one two") covers 2 x 6 characters
    total = 2 * len(sentence.replace(" ", ""))
    assert s["top_2gram_char_frac"] == pytest.approx(12 / total)
    # no repeated n-gram at all
    u = one("one two three four five six seven eight nine ten eleven")
    assert u["top_2gram_char_frac"] == 0.0 and u["dup_5gram_char_frac"] == 0.0


def test_lines_bullets_ellipsis_duplicates():
    text = "The cat sat on the mat.\n• item one\n  • item one  \n\n\nPara two...\n \nPara two…"
    s = one(text)
    assert s["n_lines"] == 5
    assert s["frac_lines_bullet"] == pytest.approx(2 / 5)
    assert s["frac_lines_ellipsis"] == pytest.approx(2 / 5)
    assert s["frac_lines_end_punct"] == pytest.approx(2 / 5)  # "mat." and "two..."; "…" is not in the set
    assert s["short_line_frac"] == pytest.approx(1.0)
    # the second "• item one" (after trimming) repeats the first
    assert s["dup_line_frac"] == pytest.approx(1 / 5)
    assert s["dup_line_char_frac"] == pytest.approx(10 / (23 + 10 + 10 + 11 + 9))
    # paragraphs: [cat + 2 bullets], "Para two...", "Para two…": all different
    assert s["dup_para_frac"] == 0.0
    p = one("alpha beta\n\nalpha beta\n\ngamma")
    assert p["dup_para_frac"] == pytest.approx(1 / 3)
    assert p["dup_para_char_frac"] == pytest.approx(10 / 25)


def test_short_line_length_param():
    text = "x" * 10 + "\n" + "y" * 40
    assert one(text)["short_line_frac"] == pytest.approx(0.5)
    assert one(text, short_line_length=5)["short_line_frac"] == 0.0
    assert one(text, short_line_length=40)["short_line_frac"] == 1.0


def test_empty_and_blank_documents():
    out = score(["", "   \n\n  ", GOOD])
    for i in (0, 1):
        assert out["n_words"][i] == 0 and out["n_lines"][i] == 0
        assert out["pass"][i] is False and out["reason"][i] == "too_few_words"
        for column in H.FLOAT_COLUMNS:
            assert out[column][i] == 0.0, column
    assert out["n_chars"][1] == 7
    # even without the word-count rule an empty document fails
    assert one("", rules=["stopwords"])["reason"] == "too_few_words"
    for column in H.FLOAT_COLUMNS:
        assert not any(np.isnan(out[column])), column


# ---------------------------------------------------------------- pass / reason
def test_good_document_passes():
    s = one(GOOD)
    assert s["n_words"] >= 50
    assert s["pass"] is True and s["reason"] is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("hello world " * 10, "too_few_words"),
        (" ".join(["supercalifragilistic"] * 30 + ["the", "of"] * 10), "mean_word_length"),
        (GOOD + " #a" * 20, "symbol_word_ratio"),
        ("\n".join(f"• point {i} of the list with some words" for i in range(20)), "bullet_lines"),
        (GOOD.replace(".\n", "...\n").replace("other.", "other..."), "ellipsis_lines"),
        (GOOD + " " + " ".join(str(i) for i in range(100, 140)), "no_alpha_words"),
        (GOOD.replace(" the ", " a ").replace("The ", "A ").replace(" and ", " or ")
         .replace(" to ", " for ").replace(" with ", " among ").replace(" that ", " so "), "stopwords"),
        (GOOD + "\n" + "\n".join(GOOD.split("\n")[:2] * 2), "dup_line_frac"),
        (" ".join(["the cat and the dog"] * 20), "top_2gram"),
    ],
)
def test_bad_documents_fail_with_reason(text, reason):
    s = one(text)
    assert s["pass"] is False
    assert s["reason"] == reason


def test_rules_param_chooses_rules_and_order():
    text = "hello world " * 10  # 20 words, repeated bigrams
    assert one(text)["reason"] == "too_few_words"
    assert one(text, rules=["top_2gram", "too_few_words"])["reason"] == "top_2gram"
    assert one(text, rules=["mean_word_length"])["pass"] is True
    # optional FineWeb rule: no line ends in punctuation
    assert one(GOOD.replace(".", ""), rules=["line_punct"])["reason"] == "line_punct"
    assert one(GOOD, min_words=500)["reason"] == "too_few_words"
    with pytest.raises(pydantic.ValidationError, match="no_such_rule"):
        HeuristicScorer.Params(rules=["no_such_rule"])


def test_build_scorer_and_bad_param():
    scorer = build_scorer({"type": "heuristics", "name": "h", "min_words": 10, "rules": ["too_few_words"]})
    assert isinstance(scorer, HeuristicScorer) and scorer.params.min_words == 10
    batch = pa.record_batch({"id": ["0"], "text": ["hello world " * 6]})
    out = scorer(batch)
    assert out["h_pass"].to_pylist() == [True] and out["h_n_words"].to_pylist() == [12]
    assert set(out) == set(scorer.output_schema().names)
    with pytest.raises(pydantic.ValidationError, match="min_wordz"):
        build_scorer({"type": "heuristics", "min_wordz": 10})
    with pytest.raises(ValueError, match=r"scorers\[0\]\.min_wordz: unknown key"):
        validate_scorer_spec({"type": "heuristics", "min_wordz": 10}, "scorers[0]")
    with pytest.raises(ValueError, match=r"max_ellipsis_lines"):
        validate_scorer_spec({"type": "heuristics", "max_ellipsis_lines": 2}, "scorers[0]")


# ---------------------------------------------------------------- reference and batching
def reference(text: str) -> dict[str, float]:
    """A plain per-document implementation of the module's definitions."""
    words = text.split()
    norm = [w.lower().strip(WORD_EDGE_PUNCTUATION) for w in words]
    total = sum(len(w) for w in words)
    out: dict[str, float] = {"n_words": len(words), "stopword_count": sum(w in GOPHER_STOPWORDS for w in norm)}
    out["frac_words_no_alpha"] = sum(not any(c.isalpha() for c in w) for w in words) / len(words) if words else 0.0

    def frac(covered: set[int]) -> float:
        return sum(len(words[i]) for i in covered) / total if total else 0.0

    for n in range(2, 11):
        grams = [tuple(norm[i : i + n]) for i in range(len(words) - n + 1)]
        if n <= 4:
            top = Counter(grams).most_common(1)
            covered = set()
            if top and top[0][1] >= 2:
                covered = {j for i, g in enumerate(grams) if g == top[0][0] for j in range(i, i + n)}
            out[f"top_{n}gram_char_frac"] = frac(covered)
        else:
            seen, covered = set(), set()
            for i, g in enumerate(grams):
                if g in seen:
                    covered.update(range(i, i + n))
                seen.add(g)
            out[f"dup_{n}gram_char_frac"] = frac(covered)
    for kind, pieces in (("line", text.split("\n")), ("para", re.split(r"\n[^\S\n]*\n", text))):
        pieces = [p.strip() for p in pieces if p.strip()]
        seen, dup, dup_chars = set(), 0, 0
        for p in pieces:
            if p in seen:
                dup, dup_chars = dup + 1, dup_chars + len(p)
            seen.add(p)
        chars = sum(len(p) for p in pieces)
        out[f"dup_{kind}_frac"] = dup / len(pieces) if pieces else 0.0
        out[f"dup_{kind}_char_frac"] = dup_chars / chars if chars else 0.0
    return out


def random_docs(n: int, seed: int) -> list[str]:
    """Short documents from a tiny vocabulary, so repetition of every kind is common."""
    rng = np.random.default_rng(seed)
    vocab = ["the", "The,", "cat", "sat", "on", "mat.", "-", "...", "a1", "42", "dog", "and"]
    seps = [" "] * 12 + ["\n", "\n\n", "  \n \n", "\t"]
    docs = []
    for _ in range(n):
        k = int(rng.integers(0, 60))
        parts = [vocab[i] if rng.random() > 0.3 else vocab[0] for i in rng.integers(0, len(vocab), k)]
        text = " " if rng.random() < 0.2 else ""
        for w in parts:
            text += w + seps[int(rng.integers(0, len(seps)))]
        docs.append(text)
    return docs


def test_matches_reference_on_random_documents():
    docs = random_docs(300, seed=1)
    out = score(docs)
    for i, doc in enumerate(docs):
        for key, expected in reference(doc).items():
            assert out[key][i] == pytest.approx(expected, abs=1e-12), (key, doc)


def test_batch_equals_single_documents(monkeypatch):
    # a small chunk size forces many chunks, so chunk edges are exercised too
    monkeypatch.setattr(H, "_CHUNK", 64)
    docs = random_docs(120, seed=2) + [GOOD, "", "a a a a a a"]
    together = score(docs)
    for i, doc in enumerate(docs):
        alone = one(doc)
        for key, values in together.items():
            assert values[i] == alone[key], (key, i)


def test_hash_keys_match_exact_keys():
    docs = random_docs(50, seed=3)
    scorer = HeuristicScorer()
    stats = H.compute_stats(pa.array(docs), scorer.params)
    words = [d.split() for d in docs]
    flat = [w.lower().strip(WORD_EDGE_PUNCTUATION) for ws in words for w in ws]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(flat))}
    code = np.array([vocab[w] for w in flat], dtype=np.int64)
    wlen = np.array([len(w) for ws in words for w in ws], dtype=np.int64)
    counts = np.array([len(ws) for ws in words], dtype=np.int64)
    word_doc = np.repeat(np.arange(len(docs)), counts)
    chars = np.bincount(word_doc, weights=wlen, minlength=len(docs))
    # a huge declared vocabulary forces the 64-bit hash keys
    hashed = H._ngram_stats(code, 2**40, wlen, word_doc, counts, chars)
    for key, values in hashed.items():
        np.testing.assert_allclose(values, stats[key], rtol=0, atol=1e-12)


def test_large_document():
    unit = "one two three four five six seven eight nine ten\n"
    text = unit * (5_000_000 // len(unit))  # ~5 MB, 1M words
    out = score([text, GOOD])
    assert out["n_words"][0] == 10 * (5_000_000 // len(unit))
    assert out["dup_line_frac"][0] == pytest.approx(1 - 1 / out["n_lines"][0])
    # everything after the first copy repeats: 1 - 1/#copies of the characters
    copies = 5_000_000 // len(unit)
    assert out["dup_10gram_char_frac"][0] == pytest.approx(1 - 1 / copies)
    assert out["top_2gram_char_frac"][0] == pytest.approx(0.1 * 6 / 3.9)
    assert out["reason"][0] == "too_many_words"  # 1M words > 100k
    assert out["pass"][1] is True


def test_long_document_bucketed_grouping_matches_reference(monkeypatch):
    # with a tiny chunk, a 3000-word document is grouped through hash buckets
    monkeypatch.setattr(H, "_CHUNK", 16)
    doc = " ".join(random_docs(100, seed=4))
    assert len(doc.split()) > 4 * 16 * 20
    out = one(doc)
    for key, expected in reference(doc).items():
        assert out[key] == pytest.approx(expected, abs=1e-12), key


def test_zero_rows_and_large_string_input():
    scorer = HeuristicScorer()
    empty = scorer(pa.record_batch({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())}))
    assert all(len(v) == 0 for v in empty.values())
    big = scorer(pa.record_batch({"id": ["0", "1"], "text": pa.array([GOOD, "a a"], pa.large_string())}))
    assert big["heuristics_pass"].to_pylist() == [True, False]
    assert big["heuristics_n_words"].to_pylist() == [one(GOOD)["n_words"], 2]
