"""Heuristic quality scores (Gopher, C4, FineWeb rules), vectorised over a whole batch.

Every statistic is computed for all documents of a batch at once with `pyarrow.compute`
and numpy; there is no per-document Python loop. Words are whitespace-separated tokens.
When a word is compared with a stop word, or used in an n-gram, it is first lower-cased
and stripped of surrounding punctuation ("The," -> "the"). Lines are the non-blank lines
split on newlines, whitespace-trimmed; paragraphs are separated by blank lines.

Rules (name: the failing value; default threshold; source)
=========================  =============================================  ==========  ========
rule                       fails when                                      default     source
=========================  =============================================  ==========  ========
too_few_words              n_words < min_words                             50          Gopher
too_many_words             n_words > max_words                             100000      Gopher
mean_word_length           mean_word_length outside [min, max]             3 .. 10     Gopher
symbol_word_ratio          max(#, "..."/"…") count per word > max          0.1         Gopher
bullet_lines               frac_lines_bullet > max                         0.9         Gopher
ellipsis_lines             frac_lines_ellipsis > max                       0.3         Gopher
no_alpha_words             frac_words_no_alpha > max                       0.2         Gopher
stopwords                  stopword_count < min                            2           Gopher
dup_line_frac              dup_line_frac > max                             0.30        Gopher
dup_para_frac              dup_para_frac > max                             0.30        Gopher
dup_line_char_frac         dup_line_char_frac > max                        0.20        Gopher
dup_para_char_frac         dup_para_char_frac > max                        0.20        Gopher
top_{2,3,4}gram            top_{n}gram_char_frac > max                     .20 .18 .16 Gopher
dup_{5..10}gram            dup_{n}gram_char_frac > max                     .15 ... .10 Gopher
line_punct                 frac_lines_end_punct < min                      0.12        FineWeb
short_lines                short_line_frac > max (line <= 30 chars)        0.67        FineWeb
fineweb_dup_line_chars     dup_line_char_frac > max                        0.01        FineWeb
=========================  =============================================  ==========  ========

Gopher = Rae et al. 2021 (Scaling Language Models: Methods, Analysis & Insights from
Training Gopher), appendix A.1.1 and Table A1. C4 = Raffel et al. 2020 (terminal-punctuation
lines; `frac_lines_end_punct` is the document-level form FineWeb uses). FineWeb = Penedo
et al. 2024 (The FineWeb Datasets), section 3.3 custom filters.

By default `pass` uses every Gopher quality and repetition rule; set `rules` to choose.
A document without words always fails with reason "too_few_words".

Definitions (where the papers leave room, and how this differs from DataTrove):
- Duplicate lines/paragraphs count every occurrence after the first within the document;
  character fractions are over the characters of the trimmed non-blank lines/paragraphs.
- top_{n}gram_char_frac: characters of the words covered by occurrences of the most
  frequent n-gram (ties: the one seen first), over all word characters. An n-gram seen only
  once is not repetition, so a document without a repeated n-gram scores 0.
- dup_{n}gram_char_frac: characters of the words covered by every occurrence of an n-gram
  after its first one, over all word characters; overlapping occurrences count once.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator

from thresher.scorers.base import Scorer, ScorerParams
from thresher.scorers.stopwords import GOPHER_STOPWORDS, WORD_EDGE_PUNCTUATION

TOP_NGRAMS: tuple[int, ...] = (2, 3, 4)
DUP_NGRAMS: tuple[int, ...] = (5, 6, 7, 8, 9, 10)

# rule name -> checks (column suffix, "min" | "max", Params field holding the threshold)
RULES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "too_few_words": (("n_words", "min", "min_words"),),
    "too_many_words": (("n_words", "max", "max_words"),),
    "mean_word_length": (
        ("mean_word_length", "min", "min_mean_word_length"),
        ("mean_word_length", "max", "max_mean_word_length"),
    ),
    "symbol_word_ratio": (("symbol_to_word_ratio", "max", "max_symbol_word_ratio"),),
    "bullet_lines": (("frac_lines_bullet", "max", "max_bullet_lines"),),
    "ellipsis_lines": (("frac_lines_ellipsis", "max", "max_ellipsis_lines"),),
    "no_alpha_words": (("frac_words_no_alpha", "max", "max_no_alpha_words"),),
    "stopwords": (("stopword_count", "min", "min_stopwords"),),
    "dup_line_frac": (("dup_line_frac", "max", "max_dup_line_frac"),),
    "dup_para_frac": (("dup_para_frac", "max", "max_dup_para_frac"),),
    "dup_line_char_frac": (("dup_line_char_frac", "max", "max_dup_line_char_frac"),),
    "dup_para_char_frac": (("dup_para_char_frac", "max", "max_dup_para_char_frac"),),
    **{f"top_{n}gram": ((f"top_{n}gram_char_frac", "max", f"max_top_{n}gram_char_frac"),) for n in TOP_NGRAMS},
    **{f"dup_{n}gram": ((f"dup_{n}gram_char_frac", "max", f"max_dup_{n}gram_char_frac"),) for n in DUP_NGRAMS},
    "line_punct": (("frac_lines_end_punct", "min", "min_lines_end_punct"),),
    "short_lines": (("short_line_frac", "max", "max_short_lines"),),
    "fineweb_dup_line_chars": (("dup_line_char_frac", "max", "max_fineweb_dup_line_char_frac"),),
}
GOPHER_QUALITY_RULES: tuple[str, ...] = (
    "too_few_words",
    "too_many_words",
    "mean_word_length",
    "symbol_word_ratio",
    "bullet_lines",
    "ellipsis_lines",
    "no_alpha_words",
    "stopwords",
)
GOPHER_REPETITION_RULES: tuple[str, ...] = (
    "dup_line_frac",
    "dup_para_frac",
    "dup_line_char_frac",
    "dup_para_char_frac",
    *(f"top_{n}gram" for n in TOP_NGRAMS),
    *(f"dup_{n}gram" for n in DUP_NGRAMS),
)
DEFAULT_RULES: tuple[str, ...] = GOPHER_QUALITY_RULES + GOPHER_REPETITION_RULES

INT_COLUMNS: tuple[str, ...] = ("n_chars", "n_words", "n_lines", "stopword_count")
FLOAT_COLUMNS: tuple[str, ...] = (
    "mean_word_length",
    "symbol_to_word_ratio",
    "digit_ratio",
    "non_alnum_ratio",
    "frac_words_no_alpha",
    "frac_lines_bullet",
    "frac_lines_ellipsis",
    "frac_lines_end_punct",
    "short_line_frac",
    "dup_line_frac",
    "dup_line_char_frac",
    "dup_para_frac",
    "dup_para_char_frac",
    *(f"top_{n}gram_char_frac" for n in TOP_NGRAMS),
    *(f"dup_{n}gram_char_frac" for n in DUP_NGRAMS),
)

# Elements per dictionary-encode call: small hash tables stay in cache (~3x faster than one
# table for a whole batch). Chunks never split a document, so one huge document is one chunk.
_CHUNK = 16_384
_U64 = np.uint64


class HeuristicParams(ScorerParams):
    """Thresholds of every rule (see the module table) and the rules that decide `pass`."""

    min_words: int = Field(50, ge=0, description="too_few_words: fewest words a document may have")
    max_words: int = Field(100_000, ge=0, description="too_many_words: most words a document may have")
    min_mean_word_length: float = Field(3.0, ge=0, description="mean_word_length: lowest mean word length (characters)")
    max_mean_word_length: float = Field(10.0, ge=0,
                                        description="mean_word_length: highest mean word length (characters)")
    max_symbol_word_ratio: float = Field(0.1, ge=0,
                                         description="symbol_word_ratio: most # or ellipsis symbols per word")
    max_bullet_lines: float = Field(0.9, ge=0, le=1,
                                    description="bullet_lines: highest share of lines that start with a bullet")
    max_ellipsis_lines: float = Field(0.3, ge=0, le=1,
                                      description="ellipsis_lines: highest share of lines that end with an ellipsis")
    max_no_alpha_words: float = Field(0.2, ge=0, le=1,
                                      description="no_alpha_words: highest share of words without a letter")
    min_stopwords: int = Field(2, ge=0, description="stopwords: fewest stop words a document must have")
    max_dup_line_frac: float = Field(0.30, ge=0, le=1,
                                     description="dup_line_frac: highest share of lines that repeat an earlier line")
    max_dup_para_frac: float = Field(
        0.30, ge=0, le=1, description="dup_para_frac: highest share of paragraphs that repeat an earlier one")
    max_dup_line_char_frac: float = Field(
        0.20, ge=0, le=1, description="dup_line_char_frac: highest share of characters in repeated lines")
    max_dup_para_char_frac: float = Field(
        0.20, ge=0, le=1, description="dup_para_char_frac: highest share of characters in repeated paragraphs")
    max_top_2gram_char_frac: float = Field(
        0.20, ge=0, le=1, description="top_2gram: highest share of word characters in the most frequent 2-gram")
    max_top_3gram_char_frac: float = Field(
        0.18, ge=0, le=1, description="top_3gram: highest share of word characters in the most frequent 3-gram")
    max_top_4gram_char_frac: float = Field(
        0.16, ge=0, le=1, description="top_4gram: highest share of word characters in the most frequent 4-gram")
    max_dup_5gram_char_frac: float = Field(
        0.15, ge=0, le=1, description="dup_5gram: highest share of word characters in repeated 5-grams")
    max_dup_6gram_char_frac: float = Field(
        0.14, ge=0, le=1, description="dup_6gram: highest share of word characters in repeated 6-grams")
    max_dup_7gram_char_frac: float = Field(
        0.13, ge=0, le=1, description="dup_7gram: highest share of word characters in repeated 7-grams")
    max_dup_8gram_char_frac: float = Field(
        0.12, ge=0, le=1, description="dup_8gram: highest share of word characters in repeated 8-grams")
    max_dup_9gram_char_frac: float = Field(
        0.11, ge=0, le=1, description="dup_9gram: highest share of word characters in repeated 9-grams")
    max_dup_10gram_char_frac: float = Field(
        0.10, ge=0, le=1, description="dup_10gram: highest share of word characters in repeated 10-grams")
    min_lines_end_punct: float = Field(0.12, ge=0, le=1,
                                       description="line_punct (FineWeb): lowest share of lines ending in punctuation")
    max_short_lines: float = Field(
        0.67, ge=0, le=1, description="short_lines (FineWeb): highest share of short lines (see short_line_length)")
    short_line_length: int = Field(30, ge=0, description="a line of at most this many characters is short")
    max_fineweb_dup_line_char_frac: float = Field(
        0.01, ge=0, le=1, description="fineweb_dup_line_chars (FineWeb): highest share of characters in repeated lines")
    stopwords: list[str] = Field(default_factory=lambda: list(GOPHER_STOPWORDS),
                                 description="the stop words counted by the stopwords rule (default: Gopher's list)")
    bullet_chars: str = Field("•‣●◦▪-*", min_length=1, description="a line starting with one of these is a bullet")
    end_punct: str = Field(".!?\"'", min_length=1, description="a line ending with one of these ends in punctuation")
    rules: list[str] | None = Field(None, description="rules that decide `pass`; default: all Gopher rules")

    @field_validator("rules")
    @classmethod
    def _known_rules(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            unknown = [r for r in value if r not in RULES]
            if unknown:
                raise ValueError(f"unknown rule(s) {unknown}; known: {sorted(RULES)}")
        return value


class HeuristicScorer(Scorer):
    """Gopher quality and repetition statistics, C4/FineWeb line statistics, pass/reason."""

    name: ClassVar[str] = "heuristics"
    Params: ClassVar[type[ScorerParams]] = HeuristicParams

    def output_schema(self) -> pa.Schema:
        fields = [pa.field(self.col(c), pa.int64()) for c in INT_COLUMNS]
        fields += [pa.field(self.col(c), pa.float64()) for c in FLOAT_COLUMNS]
        fields += [pa.field(self.col("pass"), pa.bool_()), pa.field(self.col("reason"), pa.string())]
        return pa.schema(fields)

    def score(self, batch: pa.RecordBatch) -> dict[str, pa.Array]:
        text = batch.column("text")
        if isinstance(text, pa.ChunkedArray):
            text = text.combine_chunks()
        if pa.types.is_string_view(text.type):
            text = text.cast(pa.large_string())
        stats = compute_stats(text, self.params)  # type: ignore[arg-type]
        passed, reason = apply_rules(stats, self.params)  # type: ignore[arg-type]
        out: dict[str, pa.Array] = {self.col(c): pa.array(stats[c]) for c in INT_COLUMNS + FLOAT_COLUMNS}
        out[self.col("pass")] = pa.array(passed)
        out[self.col("reason")] = reason
        return out


# --------------------------------------------------------------------------------------
# batch statistics
# --------------------------------------------------------------------------------------
def compute_stats(text: pa.Array, params: HeuristicParams) -> dict[str, np.ndarray]:
    """All statistics for a string array: one numpy array (length = len(text)) per column."""
    n_docs = len(text)
    text = pc.fill_null(text, "")
    stats: dict[str, np.ndarray] = {"n_chars": _np(pc.utf8_length(text)).astype(np.int64)}
    stats.update(_word_stats(text, params, stats["n_chars"]))
    stats.update(_line_stats(text, params, n_docs))
    return stats


def apply_rules(stats: dict[str, np.ndarray], params: HeuristicParams) -> tuple[np.ndarray, pa.Array]:
    """`pass` (bool per document) and `reason` (first failing rule, null when passing)."""
    rules = list(DEFAULT_RULES if params.rules is None else params.rules)
    n_words = stats["n_words"]
    fails = [n_words == 0]  # a document without words always fails, as too_few_words
    for rule in rules:
        fail = np.zeros(len(n_words), dtype=bool)
        for column, op, field in RULES[rule]:
            value, threshold = stats[column], getattr(params, field)
            fail |= value < threshold if op == "min" else value > threshold
        fails.append(fail)
    matrix = np.vstack(fails)
    failed = matrix.any(axis=0)
    first = matrix.argmax(axis=0)
    names = pa.array(["too_few_words", *rules], type=pa.string())
    reason = pc.take(names, pa.array(first, type=pa.int32(), mask=~failed))
    return ~failed, reason


def _np(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A null-free Arrow array as numpy (zero-copy where Arrow allows)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return arr.to_numpy(zero_copy_only=False)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den as float64, 0 where den is 0."""
    num = num.astype(np.float64, copy=False)
    return np.divide(num, den, out=np.zeros(len(num), dtype=np.float64), where=den > 0)


def _seg_sum(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Sum of `values` over consecutive segments of lengths `counts` (empty segments give 0)."""
    out = np.zeros(len(counts), dtype=np.float64 if values.dtype.kind == "f" else np.int64)
    nonempty = counts > 0
    if values.size:
        starts = (np.cumsum(counts) - counts)[nonempty]
        out[nonempty] = np.add.reduceat(values, starts)
    return out


def _word_stats(text: pa.Array, params: HeuristicParams, n_chars: np.ndarray) -> dict[str, np.ndarray]:
    """Word-level statistics, stop words and n-gram repetition."""
    n_docs = len(n_chars)
    # Leading/trailing whitespace would give empty tokens; an empty document gives one.
    tokens = pc.utf8_split_whitespace(pc.utf8_trim_whitespace(text))
    counts = _np(pc.list_value_length(tokens)).astype(np.int64)
    enc = pc.dictionary_encode(pc.list_flatten(tokens))
    raw = _np(enc.indices).astype(np.int64)
    vocab = enc.dictionary
    vocab_len = _np(pc.utf8_length(vocab)).astype(np.int64)
    word_doc = np.repeat(np.arange(n_docs, dtype=np.int64), counts)
    if vocab_len.size and (vocab_len == 0).any():
        keep = vocab_len[raw] > 0
        raw, word_doc = raw[keep], word_doc[keep]
        counts = np.bincount(word_doc, minlength=n_docs).astype(np.int64)

    # features of each distinct token, then gathered per word and summed per document
    norm = pc.utf8_trim(pc.utf8_lower(vocab), characters=WORD_EDGE_PUNCTUATION)
    norm_enc = pc.dictionary_encode(norm)
    to_norm = _np(norm_enc.indices).astype(np.int64)
    n_norm = len(norm_enc.dictionary)
    stop_set = pa.array(sorted({w.lower() for w in params.stopwords}), type=pa.string())
    is_stop = _np(pc.is_in(norm, value_set=stop_set)).astype(np.int64)
    has_alpha, digits, non_alnum = _char_classes(vocab)
    hashes = _np(pc.count_substring(vocab, "#")).astype(np.int64)
    ellipses = _np(pc.count_substring(vocab, "...")).astype(np.int64) + _np(pc.count_substring(vocab, "…"))

    wlen = vocab_len[raw]
    word_chars = _seg_sum(wlen, counts)
    out: dict[str, np.ndarray] = {"n_words": counts}
    out["mean_word_length"] = _ratio(word_chars, counts)
    hash_ratio = _ratio(_seg_sum(hashes[raw], counts), counts)
    ellipsis_ratio = _ratio(_seg_sum(ellipses[raw], counts), counts)
    out["symbol_to_word_ratio"] = np.maximum(hash_ratio, ellipsis_ratio)
    out["frac_words_no_alpha"] = _ratio(counts - _seg_sum(has_alpha[raw], counts), counts)
    out["stopword_count"] = _seg_sum(is_stop[raw], counts)
    out["digit_ratio"] = _ratio(_seg_sum(digits[raw], counts), n_chars)
    out["non_alnum_ratio"] = _ratio(_seg_sum(non_alnum[raw], counts), n_chars)
    out.update(_ngram_stats(to_norm[raw], n_norm, wlen, word_doc, counts, word_chars))
    return out


def _line_stats(text: pa.Array, params: HeuristicParams, n_docs: int) -> dict[str, np.ndarray]:
    """Line statistics (bullets, ellipsis, punctuation, short lines) and line/paragraph duplication."""
    lines, line_doc, line_len = _pieces(pc.split_pattern(text, "\n"), n_docs)
    n_lines = np.bincount(line_doc, minlength=n_docs).astype(np.int64)
    first = pc.utf8_slice_codeunits(lines, 0, 1)
    last = pc.utf8_slice_codeunits(lines, -1)
    bullet = _np(pc.is_in(first, value_set=pa.array(list(params.bullet_chars), type=pa.string())))
    end_punct = _np(pc.is_in(last, value_set=pa.array(list(params.end_punct), type=pa.string())))
    ellipsis = _np(pc.or_(pc.ends_with(lines, "..."), pc.ends_with(lines, "…")))
    short = line_len <= params.short_line_length

    def per_doc(mask: np.ndarray) -> np.ndarray:
        return np.bincount(line_doc[mask], minlength=n_docs)

    out: dict[str, np.ndarray] = {"n_lines": n_lines}
    out["frac_lines_bullet"] = _ratio(per_doc(bullet), n_lines)
    out["frac_lines_ellipsis"] = _ratio(per_doc(ellipsis), n_lines)
    out["frac_lines_end_punct"] = _ratio(per_doc(end_punct), n_lines)
    out["short_line_frac"] = _ratio(per_doc(short), n_lines)
    out["dup_line_frac"], out["dup_line_char_frac"] = _dup_pieces(lines, line_doc, line_len, n_docs)

    paras, para_doc, para_len = _pieces(pc.split_pattern_regex(text, r"\n[^\S\n]*\n"), n_docs)
    out["dup_para_frac"], out["dup_para_char_frac"] = _dup_pieces(paras, para_doc, para_len, n_docs)
    return out


def _char_classes(vocab: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per distinct word: has a letter (0/1), number of digits, number of non-alphanumeric chars.

    ASCII words are classified byte by byte with lookup tables; the few words with
    non-ASCII characters use Unicode regular expressions.
    """
    vocab = vocab.cast(pa.large_string())
    offsets = np.frombuffer(vocab.buffers()[1], dtype=np.int64)[vocab.offset : vocab.offset + len(vocab) + 1]
    data_buf = vocab.buffers()[2]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    data = data[offsets[0] : offsets[-1]]
    offsets = offsets - offsets[0]

    def per_word(byte_flags: np.ndarray) -> np.ndarray:
        cum = np.concatenate([[0], np.cumsum(byte_flags, dtype=np.int64)])
        return cum[offsets[1:]] - cum[offsets[:-1]]

    alpha = _ASCII_ALPHA[data]
    digit = _ASCII_DIGIT[data]
    has_alpha = (per_word(alpha) > 0).astype(np.int64)
    digits = per_word(digit)
    non_alnum = (offsets[1:] - offsets[:-1]) - per_word(alpha | digit)
    wide = np.flatnonzero(per_word(data >= 0x80) > 0)
    if wide.size:
        sub = vocab.take(pa.array(wide))
        has_alpha[wide] = _np(pc.match_substring_regex(sub, r"\pL"))
        digits[wide] = _np(pc.utf8_length(pc.replace_substring_regex(sub, r"[^\p{Nd}]+", "")))
        non_alnum[wide] = _np(pc.utf8_length(pc.replace_substring_regex(sub, r"[\pL\pN\pM]+", "")))
    return has_alpha, digits, non_alnum


_ASCII_ALPHA = np.zeros(256, dtype=bool)
_ASCII_ALPHA[np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", dtype=np.uint8)] = True
_ASCII_DIGIT = np.zeros(256, dtype=bool)
_ASCII_DIGIT[np.frombuffer(b"0123456789", dtype=np.uint8)] = True


def _pieces(split: pa.Array, n_docs: int) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """Flatten split text into whitespace-trimmed non-blank pieces, their document and length."""
    counts = _np(pc.list_value_length(split)).astype(np.int64)
    pieces = pc.utf8_trim_whitespace(pc.list_flatten(split))
    length = _np(pc.utf8_length(pieces)).astype(np.int64)
    keep = length > 0
    doc = np.repeat(np.arange(n_docs, dtype=np.int64), counts)[keep]
    return pieces.filter(pa.array(keep)), doc, length[keep]


def _dup_pieces(pieces: pa.Array, doc: np.ndarray, length: np.ndarray, n_docs: int) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of pieces repeating an earlier piece of the same document, and of their characters."""
    n = np.bincount(doc, minlength=n_docs)
    chars = np.bincount(doc, weights=length, minlength=n_docs)
    if len(pieces) == 0:
        return np.zeros(n_docs), np.zeros(n_docs)
    codes = _np(pc.dictionary_encode(pieces).indices).astype(_U64)
    keys = (doc.astype(_U64) << _U64(32)) | codes
    gid, _ = _group_ids(keys, doc)
    dup = ~_first_seen(gid)
    dup_n = np.bincount(doc[dup], minlength=n_docs)
    dup_chars = np.bincount(doc[dup], weights=length[dup], minlength=n_docs)
    return _ratio(dup_n, n), _ratio(dup_chars, chars)


# --------------------------------------------------------------------------------------
# n-gram repetition
# --------------------------------------------------------------------------------------
def _ngram_stats(
    code: np.ndarray,
    n_codes: int,
    wlen: np.ndarray,
    word_doc: np.ndarray,
    counts: np.ndarray,
    word_chars: np.ndarray,
) -> dict[str, np.ndarray]:
    """top_{2,3,4}gram_char_frac and dup_{5..10}gram_char_frac for every document.

    Level n groups the n-grams of each document: level 2 keys a (document, word, word)
    triple exactly; level n+1 keys (group of the n-gram at i, word i+n). Only positions
    whose n-gram and next n-gram both repeat can start a repeated (n+1)-gram, so each level
    works on the (shrinking) set of such candidates.
    """
    n_docs = len(counts)
    n_words = len(code)
    out = {f"top_{n}gram_char_frac": np.zeros(n_docs) for n in TOP_NGRAMS}
    out.update({f"dup_{n}gram_char_frac": np.zeros(n_docs) for n in DUP_NGRAMS})
    if n_words < 2:
        return out
    doc_end = np.cumsum(counts)
    remaining = doc_end[word_doc] - np.arange(n_words)  # words from i to the end of its document
    cum_len = np.concatenate([[0], np.cumsum(wlen)])
    code = code.astype(_U64)

    pos = np.flatnonzero(remaining >= 2)
    if n_docs * n_codes * n_codes < 2**63:
        v = _U64(n_codes)
        keys = (word_doc[pos].astype(_U64) * v + code[pos]) * v + code[pos + 1]
    else:  # a vocabulary too large for exact keys: a 64-bit hash (collisions ~1e-11 per chunk)
        keys = _mix64(_mix64((code[pos] << _U64(32)) | code[pos + 1]) ^ word_doc[pos].astype(_U64))
    last = max(max(TOP_NGRAMS), max(DUP_NGRAMS))
    for n in range(2, last + 1):
        if pos.size == 0:
            break
        gid, n_groups = _group_ids(keys, word_doc[pos])
        cnt = np.bincount(gid, minlength=n_groups)[gid]
        if n in TOP_NGRAMS:
            covered = _coverage(_top_occurrences(pos, gid, cnt, word_doc, n_docs), n, cum_len, word_doc, n_docs)
            out[f"top_{n}gram_char_frac"] = _ratio(covered, word_chars)
        if n in DUP_NGRAMS:
            covered = _coverage(pos[~_first_seen(gid)], n, cum_len, word_doc, n_docs)
            out[f"dup_{n}gram_char_frac"] = _ratio(covered, word_chars)
        # candidates for n+1: repeated n-gram at i and at i+1, and n+1 words left in the document
        rep = cnt >= 2
        pos, gid = pos[rep], gid[rep]
        nxt = np.zeros(len(pos), dtype=bool)
        nxt[:-1] = pos[1:] == pos[:-1] + 1
        nxt &= remaining[pos] >= n + 1
        pos, gid = pos[nxt], gid[nxt]
        keys = (gid.astype(_U64) << _U64(32)) | code[pos + n]
    return out


def _top_occurrences(pos: np.ndarray, gid: np.ndarray, cnt: np.ndarray, word_doc: np.ndarray, n_docs: int) -> np.ndarray:
    """Start positions of every occurrence of each document's most frequent repeated n-gram."""
    rep = cnt >= 2
    pos, gid, cnt = pos[rep], gid[rep], cnt[rep]
    if pos.size == 0:
        return pos
    doc = word_doc[pos]
    starts = np.flatnonzero(np.concatenate([[True], doc[1:] != doc[:-1]]))
    best = np.zeros(n_docs, dtype=cnt.dtype)
    best[doc[starts]] = np.maximum.reduceat(cnt, starts)
    # ties: the group seen first in the document has the smallest id
    top = np.full(n_docs, -1, dtype=np.int64)
    cand = np.where(cnt == best[doc], gid, np.iinfo(np.int64).max)
    top[doc[starts]] = np.minimum.reduceat(cand, starts)
    return pos[gid == top[doc]]


def _coverage(starts: np.ndarray, n: int, cum_len: np.ndarray, word_doc: np.ndarray, n_docs: int) -> np.ndarray:
    """Characters per document of the words covered by n-word spans at sorted `starts` (union)."""
    if starts.size == 0:
        return np.zeros(n_docs)
    ends = starts + n
    reach = np.empty_like(ends)  # furthest end of any earlier span
    reach[0] = 0
    np.maximum.accumulate(ends[:-1], out=reach[1:])
    lo = np.minimum(np.maximum(starts, reach), ends)
    return np.bincount(word_doc[starts], weights=cum_len[ends] - cum_len[lo], minlength=n_docs)


def _group_ids(keys: np.ndarray, doc: np.ndarray) -> tuple[np.ndarray, int]:
    """Group id of each key, numbered in order of first appearance, and the number of groups.

    `doc` (non-decreasing) gives each key's document: the work is split into chunks of
    about `_CHUNK` keys at document boundaries, so every document stays in one chunk.
    """
    total = len(keys)
    if total > _CHUNK:
        change = np.flatnonzero(doc[1:] != doc[:-1]) + 1
        at = np.searchsorted(change, np.arange(_CHUNK, total, _CHUNK))
        bounds = np.unique(change[at[at < len(change)]])
        edges = [0, *bounds.tolist(), total]
    else:
        edges = [0, total]
    out = np.empty(total, dtype=np.int64)
    offset = 0
    for a, b in zip(edges[:-1], edges[1:]):
        ids, n_groups = _encode(keys[a:b])
        out[a:b] = ids
        out[a:b] += offset
        offset += n_groups
    return out, offset


def _encode(keys: np.ndarray) -> tuple[np.ndarray, int]:
    """Group ids of uint64 keys in order of first appearance, and the number of groups.

    A long run (one huge document) is spread over hash buckets of about `_CHUNK` keys
    (a stable radix sort on the bucket number), encoded bucket by bucket, then renumbered
    by first appearance: one big hash table would be ~5x slower.
    """
    if len(keys) <= 4 * _CHUNK:
        enc = pc.dictionary_encode(pa.array(keys, type=pa.uint64()))
        return _np(enc.indices), len(enc.dictionary)
    bits = min(16, int(np.ceil(np.log2(len(keys) / _CHUNK))))
    bucket = (_mix64(keys) >> _U64(64 - bits)).astype(np.uint16)
    order = np.argsort(bucket, kind="stable")
    edges = np.concatenate([[0], np.cumsum(np.bincount(bucket, minlength=1 << bits))])
    arr = pa.array(keys[order], type=pa.uint64())
    ids = np.empty(len(keys), dtype=np.int64)
    offset = 0
    for a, b in zip(edges[:-1].tolist(), edges[1:].tolist()):
        if b > a:
            enc = pc.dictionary_encode(arr.slice(a, b - a))
            ids[a:b] = _np(enc.indices)
            ids[a:b] += offset
            offset += len(enc.dictionary)
    # ids rise across buckets and by first appearance within one: first occurrences are
    # found in sorted order, then each group is renamed by the position of its first one
    first = np.empty(len(keys), dtype=bool)
    first[order] = _first_seen(ids)
    in_place = np.empty_like(ids)
    in_place[order] = ids
    rank = np.empty(offset, dtype=np.int64)
    rank[in_place[first]] = np.arange(offset)
    return rank[in_place], offset


def _first_seen(gid: np.ndarray) -> np.ndarray:
    """True where a group id (numbered by first appearance) appears for the first time."""
    first = np.empty(len(gid), dtype=bool)
    if len(gid):
        first[0] = True
        first[1:] = gid[1:] > np.maximum.accumulate(gid)[:-1]
    return first


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (a bijection on uint64 that spreads every input bit)."""
    x = x.astype(_U64, copy=True)
    x ^= x >> _U64(30)
    x *= _U64(0xBF58476D1CE4E5B9)
    x ^= x >> _U64(27)
    x *= _U64(0x94D049BB133111EB)
    x ^= x >> _U64(31)
    return x
