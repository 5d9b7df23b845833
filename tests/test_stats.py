"""Between-group statistics: hand-computed values."""
import math

import numpy as np
import pytest

from filterdb.analysis.stats import bootstrap_ci, cliffs_delta, mann_whitney_p, two_sample


def test_cliffs_delta_by_hand():
    assert cliffs_delta([3, 4], [1, 2, 3]) == pytest.approx(5 / 6)  # 5 pairs greater, 1 tie, 0 less
    assert cliffs_delta([1, 2, 3], [2, 2]) == 0.0
    assert cliffs_delta([1, 2], [5, 6]) == -1.0
    assert math.isnan(cliffs_delta([], [1.0]))


def test_mann_whitney_exact_p_value():
    # 3 vs 3 fully separated: 2 of the C(6, 3) = 20 orderings are as extreme (two-sided)
    assert mann_whitney_p([1, 2, 3], [4, 5, 6]) == pytest.approx(0.1)
    assert mann_whitney_p([1, 1], [1, 1, 1]) == 1.0
    assert math.isnan(mann_whitney_p([np.nan], [1.0]))


def test_bootstrap_is_seeded_and_brackets_the_difference():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 0.1, 20), rng.normal(0.0, 0.1, 25)
    lo, hi = bootstrap_ci(a, b, seed=3)
    assert (lo, hi) == bootstrap_ci(a, b, seed=3)
    assert lo < a.mean() - b.mean() < hi and 0.8 < lo and hi < 1.2
    assert bootstrap_ci([1, 1, 1], [0, 0]) == (1.0, 1.0)


def test_two_sample_drops_nan_and_counts_models():
    s = two_sample([1.0, np.nan, 3.0], [0.0, 1.0])
    assert (s.n_a, s.n_b, s.mean_a, s.mean_b, s.difference) == (2, 2, 2.0, 0.5, 1.5)
    assert s.cliffs_delta == pytest.approx(0.75)  # (1 vs 0: >, 1 vs 1: =, 3 > both) -> 3/4
