"""benchmarks.stats.paired: the paired 95% interval and verdict every benchmark reports."""

import math

import pytest

from benchmarks.stats import paired


def test_interval_matches_the_t_formula_and_verdicts_follow_the_sign():
    # diffs -0.5, -0.4, -0.6: mean -0.5, sd 0.1, t(0.975, 2) = 4.302653
    p = paired([1.0, 2.0, 3.0], [1.5, 2.4, 3.6])
    assert p.mean == pytest.approx(-0.5)
    assert p.hi - p.mean == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-5)
    assert p.verdict == "helps"  # lower is better and the whole interval is below 0
    assert paired([1.0, 2.0, 3.0], [1.5, 2.4, 3.6], lower_is_better=False).verdict == "hurts"
    assert paired([1.0, 2.0, 3.0], [1.2, 1.9, 3.0]).verdict == "not resolved"  # diffs -0.2, +0.1, 0
    assert paired([0.5], [0.7]).verdict == "not resolved"  # one seed: no interval
    assert p.interval(2) == "-0.50 [-0.75, -0.25]"


def test_unpaired_lengths_are_an_error():
    with pytest.raises(ValueError, match="2 method results vs 3"):
        paired([1.0, 2.0], [1.0, 2.0, 3.0])
