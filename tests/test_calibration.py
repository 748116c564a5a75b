"""Calibration metrics against independent computations: ECE by binning the probabilities directly
(a loop over bins written here), reliability bins against scikit-learn's `calibration_curve`, the
Brier score against `brier_score_loss`, the bootstrap CI's coverage in a simulation with a known
value, and the calibration page of a built report recomputed from the run files."""
import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from cxr_study.stats.calibration import brier_score, calibration_bins, calibration_ci, expected_calibration_error
from report_study import built_study


def direct_ece(y, p, n_bins, strategy):
    "ECE by a loop over bins: (lo, hi] for every bin, [0, hi] for the first; quantile edges at the percentiles."
    edges = np.linspace(0, 1, n_bins + 1) if strategy == "uniform" else np.percentile(p, np.linspace(0, 1, n_bins + 1) * 100)
    total = 0.0
    for b in range(n_bins):
        above = p > edges[b] if b > 0 else np.ones(len(p), bool)  # the first bin is closed on the left
        below = p <= edges[b + 1] if b < n_bins - 1 else np.ones(len(p), bool)  # the last bin takes everything above
        inside = above & below
        if inside.any(): total += inside.sum() / len(p) * abs(y[inside].mean() - p[inside].mean())
    return total


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_ece_equals_direct_binning_and_sklearn(strategy):
    rng = np.random.default_rng(11)
    for n, n_bins in ((50, 5), (400, 10), (1000, 15)):
        q = rng.beta(2, 3, n)
        y = (rng.random(n) < q ** 1.5).astype(int)  # miscalibrated: the true probability is q^1.5
        ece = expected_calibration_error(y, q, n_bins=n_bins, strategy=strategy)
        assert ece == pytest.approx(direct_ece(y, q, n_bins, strategy), abs=1e-12)
        frac, mean = calibration_curve(y, q, n_bins=n_bins, strategy=strategy)
        t = calibration_bins(y, q, n_bins=n_bins, strategy=strategy)
        nonempty = t[t.n > 0]
        assert nonempty.frac_pos.to_numpy() == pytest.approx(frac, abs=1e-12)
        assert nonempty.mean_pred.to_numpy() == pytest.approx(mean, abs=1e-12)
        assert ece == pytest.approx(np.sum(nonempty.n / n * np.abs(frac - mean)), abs=1e-12)
        assert brier_score(y, q) == pytest.approx(brier_score_loss(y, q), abs=1e-12)


def test_hand_computed_example():
    # bins [0, 0.5], (0.5, 1]: 0.1, 0.2, 0.5 (one positive) and 0.6, 0.9 (two positives)
    y, p = np.array([0, 1, 0, 1, 1]), np.array([0.1, 0.2, 0.5, 0.6, 0.9])
    assert expected_calibration_error(y, p, n_bins=2) == pytest.approx(3 / 5 * abs(1 / 3 - 0.8 / 3) + 2 / 5 * 0.25)
    assert brier_score(y, p) == pytest.approx((0.01 + 0.64 + 0.25 + 0.16 + 0.01) / 5)


def test_clustered_ci_covers_the_known_value():
    """A constant probability 0.7 for a prevalence of 0.5: the population ECE is 0.2 and the Brier score
    0.29. Two images per patient share the label, so only the patient-clustered interval has its
    nominal coverage (200 simulated studies: Monte Carlo SE of the coverage 1.5 points)."""
    rng = np.random.default_rng(5)
    pid = np.repeat(np.arange(150), 2)
    hits = {"ece": [], "brier": []}
    for rep in range(200):
        y = (rng.random(150) < 0.5).astype(int)[pid]
        p = np.full(300, 0.7)
        for m, truth in (("ece", 0.2), ("brier", 0.29)):
            ci = calibration_ci(m, y, p, clusters=pid, n_boot=300, seed=rep)
            hits[m].append(ci.lo <= truth <= ci.hi)
    for m in hits: assert 0.90 <= np.mean(hits[m]) <= 0.99, (m, np.mean(hits[m]))


@pytest.fixture(scope="module")
def study(tiny_benchmark, tmp_path_factory):
    return built_study(tiny_benchmark, tmp_path_factory)


def test_report_calibration_equals_the_run_files(study):
    cal = pd.read_csv(study / "report" / "tables" / "calibration.csv")
    rel = pd.read_csv(study / "report" / "tables" / "reliability.csv")
    # candidates and references; the ablation variant (resnet18@64) is on the ablations page only
    assert sorted(cal.encoder) == ["prior", "raw-pixels", "resnet18", "vit-small-patch16-224"] and set(cal.task) == {"cardiomegaly-cls"}
    for _, r in cal.iterrows():
        p = pd.read_parquet(study / "runs" / r.encoder / r.task / r.protocol / "predictions.parquet")
        y, s = p.y_true.to_numpy(int), p.y_score.to_numpy(float)
        assert r.n == len(p) and r.prevalence == pytest.approx(y.mean())
        assert r.ece_plugin == pytest.approx(direct_ece(y, s, 10, "uniform"), abs=1e-12)
        assert r.brier == pytest.approx(brier_score_loss(y, s), abs=1e-12)
        assert r.ece_lo <= r.ece <= r.ece_hi and r.ece <= r.ece_plugin + 1e-12 and r.brier_lo <= r.brier <= r.brier_hi
        b = rel[(rel.encoder == r.encoder) & (rel.n > 0)]
        frac, mean = calibration_curve(y, s, n_bins=10)
        assert b.frac_pos.to_numpy() == pytest.approx(frac) and b.mean_pred.to_numpy() == pytest.approx(mean)
    figs = {f.name for f in (study / "report" / "figures").glob("*.png")}
    assert {"reliability_cardiomegaly-cls_linear-probe.png", "roc_pr_cardiomegaly-cls_linear-probe.png"} <= figs


def test_roc_pr_legends_carry_sklearn_areas(study):
    from cxr_study.stats.figures import plot_roc_pr
    p = pd.concat([pd.read_parquet(study / "runs" / e / "cardiomegaly-cls" / "linear-probe" / "predictions.parquet")
                   for e in ("resnet18", "resnet18@64")])
    fig = plot_roc_pr(p, run_col="encoder")
    roc, pr = (ax.get_legend() for ax in fig.axes)
    for i, e in enumerate(("resnet18", "resnet18@64")):
        g = p[p.encoder == e]
        assert roc.get_texts()[i].get_text() == f"{e} (AUROC {roc_auc_score(g.y_true, g.y_score):.3f})"
        assert pr.get_texts()[i].get_text() == f"{e} (AUPRC {average_precision_score(g.y_true, g.y_score):.3f})"
