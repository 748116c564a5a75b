"""The clustered bootstrap (`bootstrap_replicates`, computed from each patient's count in the resample) draws from the
same distribution as a naive loop that resamples patients and calls scikit-learn (AUROC, AUPRC) or takes the mean
(Dice) per replicate: standard deviations and 2.5/50/97.5 % quantiles within 4 Monte Carlo standard errors, and a
Kolmogorov-Smirnov test. The naive loop and the comparison are `benchmarks/bench_stats.py`'s. About 10 s."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]/"benchmarks"))
from bench_stats import dice_values, fast_bootstrap, make_data, naive_bootstrap, same_distribution  # noqa: E402

N_BOOT = 1500


@pytest.mark.parametrize("metric", ["auroc", "auprc", "dice"])
def test_same_distribution_as_a_naive_loop(metric):
    y, scores, pid = make_data(600, 1, seed=9)
    s = dice_values(scores) if metric == "dice" else scores
    fast = fast_bootstrap(y, s, pid, N_BOOT, metric, seed=4)[:, 0]
    slow = naive_bootstrap(y, s, pid, N_BOOT, seed=5, metric=metric)[:, 0]
    d = same_distribution(fast, slow)
    z = {k: v for k, v in d.items() if k.startswith("z_")}
    assert all(abs(v) < 4 for v in z.values()), (metric, d)
    assert d["ks_p"] > 1e-3, (metric, d)


def test_a_wrong_resampling_is_detected():
    "The check has power: resampling images instead of patients (ignoring the clusters) narrows the distribution, and it says so."
    rng = np.random.default_rng(2)
    n_pat = 300
    pid = np.repeat(np.arange(n_pat), 3)  # three images per patient, a strong patient effect
    y = np.repeat(rng.random(n_pat) < 0.5, 3).astype(int)
    s = y + np.repeat(rng.normal(0, 1.5, n_pat), 3) + rng.normal(0, 0.3, pid.size)
    fast = fast_bootstrap(y, s[:, None], pid, N_BOOT, "auroc", seed=4)[:, 0]
    images = naive_bootstrap(y, s[:, None], np.arange(pid.size), N_BOOT, seed=5, metric="auroc")[:, 0]  # each image its own patient
    d = same_distribution(fast, images)
    assert d["z_sd"] > 4 and d["ks_p"] < 1e-3, d
