"""DeLong's fast midrank algorithm against the direct structural-components sum, on many random data sets."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxr_study.stats.paired import delong_test, delong_test_direct, paired_permutation_test, paired_bootstrap_test

FIELDS = ("auc_a", "auc_b", "diff", "se", "z", "p", "lo", "hi")


@pytest.mark.parametrize("seed", range(40))
def test_fast_delong_equals_direct(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(10, 600))
    y = (rng.random(n) < rng.uniform(0.1, 0.9)).astype(int)
    y[:2], y[2:4] = 1, 0  # both classes, at least two of each
    a = rng.normal(rng.uniform(0, 2) * y)
    rho = rng.uniform(-0.5, 0.9)
    b = rho * a + rng.normal(rng.uniform(0, 2) * y)
    if seed % 3 == 1: a, b = np.round(a, 1), np.round(b)  # ties within and across classes
    if seed % 3 == 2: a, b = rng.integers(0, 5, n).astype(float), rng.integers(0, 3, n).astype(float)  # ordinal ratings
    fast, direct = delong_test(y, a, b), delong_test_direct(y, a, b, chunk=int(rng.integers(1, 100)))
    for f in FIELDS:
        assert abs(getattr(fast, f) - getattr(direct, f)) <= 1e-8, (f, getattr(fast, f), getattr(direct, f))
    assert abs(fast.auc_a - roc_auc_score(y, a)) <= 1e-12
    assert abs(fast.auc_b - roc_auc_score(y, b)) <= 1e-12


def test_delong_nan_inputs_are_dropped_pairwise():
    rng = np.random.default_rng(0)
    y = (rng.random(100) < 0.5).astype(float)
    a, b = rng.normal(y), rng.normal(y)
    a2 = a.copy(); a2[5] = np.nan
    keep = np.arange(100) != 5
    assert delong_test(y, a2, b) == delong_test(y[keep], a[keep], b[keep])


@pytest.mark.parametrize("y", [[1, 1, 1, 1], [0, 0, 0], [1, 0, 0, 0], []])
def test_delong_degenerate_labels_give_nan_with_reason(y):
    n = len(y)
    r = delong_test(np.array(y, float), np.linspace(0, 1, n), np.linspace(1, 0, n))
    assert np.isnan(r.p) and np.isnan(r.se) and "at least 2 positives" in r.reason
    assert delong_test_direct(np.array(y, float), np.linspace(0, 1, n), np.linspace(1, 0, n)).reason == r.reason


def test_resampling_tests_never_crash_on_degenerate_groups():
    for metric, y in (("auroc", [1, 1, 1]), ("auprc", [0, 0, 0]), ("sensitivity", [0, 0, 0])):
        for f in (paired_bootstrap_test, paired_permutation_test):
            kw = {"warn": False} if f is paired_bootstrap_test else {}  # a degenerate group, not the bootstrap's AUPRC p under test
            r = f(metric, [0.1, 0.6, 0.9], [0.2, 0.4, 0.8], y_true=y, **kw)
            assert np.isnan(r.p) and r.reason, (metric, f.__name__, r)
    r = paired_bootstrap_test("dice", [np.nan] * 3, [0.2, 0.4, 0.8])
    assert np.isnan(r.p) and "empty masks" in r.reason
