"""Statistics checked against independent references: brute-force enumeration, scipy, sklearn, the
patient-clustered bootstrap, and type-I error simulations (Monte Carlo SE stated with each)."""
import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import average_precision_score, roc_auc_score

from cxr_study.stats.folds import mannwhitney_folds
from cxr_study.stats.multiplicity import compare_encoders
from cxr_study.stats.paired import PairedResult, delong_test, paired_bootstrap_test, paired_permutation_test
from cxr_study.stats.tables import simulate_predictions


def mc_se(rate, reps):
    "Monte Carlo standard error of a rejection rate estimated from `reps` simulated studies."
    return np.sqrt(rate * (1 - rate) / reps)


# --- Mann-Whitney U on fold values: exact with ties -----------------------------------------------

def brute_force_mwu(x, y):
    "Exact permutation p-values of U by enumerating every split of the pooled values (U counted pair by pair)."
    z = np.r_[x, y]; nx = len(x)
    def twice_u(ix):  # 2U, an integer: 2 per pair won, 1 per tie
        xs, ys = z[list(ix)], np.delete(z, list(ix))
        return int(2 * (xs[:, None] > ys[None]).sum() + (xs[:, None] == ys[None]).sum())
    obs = twice_u(range(nx))
    null = np.array([twice_u(ix) for ix in itertools.combinations(range(z.size), nx)])
    greater, less = np.mean(null >= obs), np.mean(null <= obs)
    return {"greater": greater, "less": less, "two-sided": min(1.0, 2 * min(greater, less))}, obs / 2


def test_mannwhitney_tied_example_is_exact():
    "x all 1 vs five lower values: one split in C(10,5) = 252 is as extreme, so p = 2/252 (scipy 'auto' gave 0.0073)."
    x, y = [1, 1, 1, 1, 1], [0.5, 0.6, 0.5, 0.75, 0.4]
    r = mannwhitney_folds(x, y)
    assert r["p"] == pytest.approx(2 / 252, abs=1e-15) and r["statistic"] == 25.0
    assert r["method"].startswith("exact") and r["reason"] == ""
    assert set(r) >= {"statistic", "p", "n_x", "n_y", "method", "reason"}
    ref, _ = brute_force_mwu(x, y)
    assert ref["two-sided"] == pytest.approx(2 / 252, abs=1e-15)


@pytest.mark.parametrize("seed", range(12))
def test_mannwhitney_matches_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    nx, ny = int(rng.integers(2, 7)), int(rng.integers(2, 7))
    x = rng.integers(0, 4, nx) / 4 + 0.25 * rng.integers(0, 2)  # few distinct values: heavy ties
    y = rng.integers(0, 4, ny) / 4
    ref, u = brute_force_mwu(x, y)
    for alt in ("two-sided", "greater", "less"):
        r = mannwhitney_folds(x, y, alt)
        assert r["statistic"] == u
        assert r["p"] == pytest.approx(ref[alt], abs=1e-12), (alt, x, y, r, ref)


@pytest.mark.parametrize("seed", range(8))
def test_mannwhitney_untied_equals_scipy_exact(seed):
    rng = np.random.default_rng(100 + seed)
    x, y = rng.normal(size=int(rng.integers(3, 9))), rng.normal(0.5, 1, int(rng.integers(3, 9)))
    for alt in ("two-sided", "greater", "less"):
        assert mannwhitney_folds(x, y, alt)["p"] == pytest.approx(stats.mannwhitneyu(x, y, alternative=alt, method="exact").pvalue, abs=1e-12)


def test_mannwhitney_large_samples_fall_back_to_asymptotic():
    x, y = np.arange(15.0), np.arange(15.0) + 3.5  # C(30, 15) = 155 million splits
    r = mannwhitney_folds(x, y)
    assert r["method"].startswith("asymptotic") and r["reason"] == ""
    assert r["p"] == pytest.approx(stats.mannwhitneyu(x, y, method="asymptotic").pvalue, abs=1e-12)
    assert np.isnan(mannwhitney_folds([np.nan], [1.0])["p"])


# --- paired tests on the same images ----------------------------------------------------------------

def test_paired_tests_estimate_and_test_on_the_same_images():
    """Model A lacks Dice on the images where B is poor: over each model's own images A leads by 0.14,
    on the images both have by 0.04. The estimates, the difference and the test must all use the latter."""
    a = np.array([np.nan, np.nan, np.nan, 0.70, 0.75, 0.80, 0.85, 0.90])
    b = np.array([0.40, 0.50, 0.60, 0.66, 0.71, 0.76, 0.81, 0.86])
    both = ~np.isnan(a) & ~np.isnan(b)
    own_diff = np.nanmean(a) - np.nanmean(b)
    common = a[both].mean() - b[both].mean()
    assert abs(own_diff - common) > 0.05  # the two answers differ
    for f in (paired_permutation_test, paired_bootstrap_test):
        r = f("dice", a, b, clusters=np.arange(8) // 2, seed=3)
        assert r.n == both.sum() == 5
        assert (r.estimate_a, r.estimate_b) == pytest.approx((a[both].mean(), b[both].mean()), abs=1e-12)
        assert r.diff == pytest.approx(common, abs=1e-12)
    # the permutation test is the one on the common images alone
    r1 = paired_permutation_test("dice", a, b, clusters=np.arange(8) // 2, n_perm=500, seed=4)
    r2 = paired_permutation_test("dice", a[both], b[both], clusters=(np.arange(8) // 2)[both], n_perm=500, seed=4)
    assert r1 == r2


@pytest.mark.parametrize("metric", ["auroc", "auprc"])
def test_paired_label_metrics_use_images_both_models_scored(metric):
    rng = np.random.default_rng(5)
    y = (rng.random(120) < 0.4).astype(float)
    a, b = rng.normal(y), rng.normal(0.5 * y)
    a[:15] = np.nan; b[10:25] = np.nan; y[30] = np.nan
    keep = ~(np.isnan(a) | np.isnan(b) | np.isnan(y))
    ref = roc_auc_score if metric == "auroc" else average_precision_score
    ea, eb = ref(y[keep], a[keep]), ref(y[keep], b[keep])
    for f in (paired_permutation_test, paired_bootstrap_test):
        r = f(metric, a, b, y, n_perm=200) if f is paired_permutation_test else f(metric, a, b, y, n_boot=200, warn=False)
        assert r.n == keep.sum()
        assert (r.estimate_a, r.estimate_b, r.diff) == pytest.approx((ea, eb, ea - eb), abs=1e-12)


def test_paired_result_old_constructor_still_works():
    r = PairedResult("dice", 0.5, 0.4, 0.1, np.nan, np.nan, 0.2, "permutation", 100, "")
    assert r.n == 0 and r.to_dict()["n"] == 0


# --- clustered DeLong (Obuchowski 1997) -------------------------------------------------------------

def obuchowski_brute_force(y, scores, clusters):
    """AUROCs and their covariance from Obuchowski (1997), written out over all positive x negative pairs
    and an explicit loop over clusters."""
    y = np.asarray(y); pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    M, N = pos.size, neg.size
    ids = list(dict.fromkeys(clusters))
    I = len(ids)
    theta, Xc, Yc = [], [], []
    for s in scores:
        psi = np.array([[1.0 if s[i] > s[j] else 0.5 if s[i] == s[j] else 0.0 for j in neg] for i in pos])
        theta.append(psi.sum() / (M * N))
        v10, v01 = dict(zip(pos, psi.sum(1) / N)), dict(zip(neg, psi.sum(0) / M))
        Xc.append([sum(v10[i] for i in pos if clusters[i] == c) for c in ids])
        Yc.append([sum(v01[j] for j in neg if clusters[j] == c) for c in ids])
    m = np.array([sum(clusters[i] == c for i in pos) for c in ids]); n = np.array([sum(clusters[j] == c for j in neg) for c in ids])
    I10, I01 = int((m > 0).sum()), int((n > 0).sum())
    k = len(scores); cov = np.zeros((k, k))
    for r in range(k):
        for t in range(k):
            dXr, dXt = np.array(Xc[r]) - m * theta[r], np.array(Xc[t]) - m * theta[t]
            dYr, dYt = np.array(Yc[r]) - n * theta[r], np.array(Yc[t]) - n * theta[t]
            S10 = I10 / ((I10 - 1) * M) * np.sum(dXr * dXt)
            S01 = I01 / ((I01 - 1) * N) * np.sum(dYr * dYt)
            S11_rt, S11_tr = I / (I - 1) * np.sum(dXr * dYt), I / (I - 1) * np.sum(dXt * dYr)
            cov[r, t] = S10 / M + S01 / N + (S11_rt + S11_tr) / (M * N)
    return np.array(theta), cov


def clustered_data(rng, n_patients=30, label_stick=0.85, noise=0.5):
    "Patients with 2-4 images; labels mostly shared within a patient; scores share a patient effect."
    k = rng.integers(2, 5, n_patients); pid = np.repeat(np.arange(n_patients), k)
    ypat = rng.random(n_patients) < 0.4
    y = np.where(rng.random(pid.size) < label_stick, ypat[pid], rng.random(pid.size) < 0.4).astype(int)
    a = y + rng.normal(size=n_patients)[pid] + rng.normal(0, noise, pid.size)
    b = 0.6 * a + 0.8 * y + rng.normal(size=n_patients)[pid] + rng.normal(0, noise, pid.size)
    return y, a, b, pid


@pytest.mark.parametrize("seed", range(6))
def test_clustered_delong_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    y, a, b, pid = clustered_data(rng, n_patients=int(rng.integers(8, 30)))
    if seed % 2: a, b = np.round(a, 0), np.round(b, 0)  # ties
    theta, cov = obuchowski_brute_force(y, [a, b], pid)
    r = delong_test(y, a, b, clusters=pid)
    assert (r.auc_a, r.auc_b) == pytest.approx(tuple(theta), abs=1e-12)
    assert r.se == pytest.approx(np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]), abs=1e-10)
    # a single AUROC: against a constant score (AUROC 1/2, all components equal) the difference's SE is A's own
    r1 = delong_test(y, a, np.zeros_like(a), clusters=pid)
    assert r1.se == pytest.approx(np.sqrt(cov[0, 0]), abs=1e-10)


@pytest.mark.parametrize("seed", range(10))
def test_clustered_delong_with_singletons_is_plain_delong(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(10, 400))
    y = (rng.random(n) < 0.3).astype(int); y[:2], y[2:4] = 1, 0
    a = rng.normal(y); b = 0.5 * a + rng.normal(0, 1, n)
    if seed % 2: a, b = np.round(a, 1), np.round(b)
    plain = delong_test(y, a, b)
    for cl in (None, np.arange(n), rng.permutation(n).astype(str)):
        r = delong_test(y, a, b, clusters=cl)
        for f in ("auc_a", "auc_b", "diff", "se", "z", "p", "lo", "hi"):
            assert getattr(r, f) == pytest.approx(getattr(plain, f), abs=1e-10), f


def test_clustered_auroc_variance_matches_cluster_bootstrap():
    """Obuchowski's variance of one AUROC against the variance of 4000 patient-clustered bootstrap
    replicates (computed here with numpy). The bootstrap variance has a relative Monte Carlo SE of
    about sqrt(2/4000) = 2.2 %; the allowed 10 % is ~4.5 SE. On the same data DeLong's image-level
    variance is more than 1.5 times smaller, so the check tells the two apart."""
    rng = np.random.default_rng(3)
    y, a, _, pid = clustered_data(rng, n_patients=100)
    const = np.zeros_like(a)
    var_cl = delong_test(y, a, const, clusters=pid).se ** 2
    var_plain = delong_test(y, a, const).se ** 2
    groups = [np.flatnonzero(pid == g) for g in range(100)]
    reps = []
    for _ in range(4000):
        idx = np.concatenate([groups[g] for g in rng.integers(0, 100, 100)])
        yy = y[idx]
        if yy.min() == yy.max(): continue
        r = stats.rankdata(a[idx]); m = yy.sum()
        reps.append((r[yy == 1].sum() - m * (m + 1) / 2) / (m * (yy.size - m)))
    var_boot = np.var(reps, ddof=1)
    assert abs(var_boot / var_cl - 1) < 0.10, (var_boot, var_cl)
    assert var_cl / var_plain > 1.5, (var_cl, var_plain)


def sim_equal_auroc(rng, n_patients=50):
    """~150 images from patients with 2-4 images; labels cluster by patient; both models share a patient
    effect and each has its own patient effect and image noise, with identical distributions: equal true AUROC."""
    k = rng.integers(2, 5, n_patients); pid = np.repeat(np.arange(n_patients), k)
    y = (rng.random(pid.size) < stats.norm.cdf(rng.normal(size=n_patients)[pid] - 0.3)).astype(int)
    shared = y + rng.normal(size=n_patients)[pid]
    a = shared + rng.normal(size=n_patients)[pid] + rng.normal(0, 0.5, pid.size)
    b = shared + rng.normal(size=n_patients)[pid] + rng.normal(0, 0.5, pid.size)
    return y, a, b, pid


def test_clustered_delong_type1_error():
    """1000 simulated null studies. MC SE of a 5 % rate = sqrt(.05 * .95 / 1000) = 0.69 points; the clustered
    test must lie within 5 % +- 3 SE (2.9 %-7.1 %); plain DeLong, ignoring the patients, must exceed 5 % + 5 SE."""
    R = 1000
    rng = np.random.default_rng(2024)
    p_plain, p_cl = np.empty(R), np.empty(R)
    for i in range(R):
        y, a, b, pid = sim_equal_auroc(rng)
        p_plain[i], p_cl[i] = delong_test(y, a, b).p, delong_test(y, a, b, clusters=pid).p
    se = mc_se(0.05, R)
    rate_plain, rate_cl = np.mean(p_plain < 0.05), np.mean(p_cl < 0.05)
    assert abs(rate_cl - 0.05) <= 3 * se, f"clustered DeLong rejects {rate_cl:.3f} (MC SE {se:.4f})"
    assert rate_plain > 0.05 + 5 * se, f"plain DeLong rejects only {rate_plain:.3f}"


def test_auprc_permutation_type1_error():
    """300 simulated null studies, 100 images from patients with 1-3 images, two exchangeable models (equal AUPRC),
    patients swapped as units, 200 swaps each. MC SE of a 5 % rate = sqrt(.05 * .95 / 300) = 1.26 points;
    the rejection rate must lie within 5 % +- 3 SE (1.2 %-8.8 %)."""
    R = 300
    rng = np.random.default_rng(7)
    p = np.empty(R)
    for i in range(R):
        pid = np.repeat(np.arange(60), rng.integers(1, 4, 60))[:100]
        y = (rng.random(pid.size) < 0.3).astype(float)
        shared = y + rng.normal(size=60)[pid]
        a = shared + rng.normal(size=60)[pid] + rng.normal(size=pid.size)
        b = shared + rng.normal(size=60)[pid] + rng.normal(size=pid.size)
        p[i] = paired_permutation_test("auprc", a, b, y, clusters=pid, n_perm=200, seed=int(rng.integers(1 << 31))).p
    se = mc_se(0.05, R)
    rate = np.mean(p < 0.05)
    assert abs(rate - 0.05) <= 3 * se, f"AUPRC permutation test rejects {rate:.3f} (MC SE {se:.4f})"


def test_compare_encoders_uses_patient_clusters():
    preds = simulate_predictions(n_patients=200, tasks=("pneumothorax-cls",))
    cmp = compare_encoders(preds)
    assert set(cmp.test) == {"clustered delong"}
    wide = preds.pivot_table(index=["image_id", "patient_id"], columns="encoder", values="y_score")
    y = preds.groupby("image_id").y_true.first().reindex(wide.index.get_level_values(0)).to_numpy(float)
    pids = wide.index.get_level_values(1).to_numpy()
    for _, row in cmp.iterrows():
        r = delong_test(y, wide[row.a], wide[row.b], clusters=pids)
        assert (row.p, row["diff"], row.lo, row.hi) == pytest.approx((r.p, r.diff, r.lo, r.hi), abs=1e-12)
        assert row.n == r.n_pos + r.n_neg
    pr = compare_encoders(preds, cls_metric="auprc", n_resamples=200)
    assert set(pr.test) == {"permutation"} and set(pr.metric) == {"auprc"}
    r = paired_permutation_test("auprc", wide["enc-a"].to_numpy(), wide["enc-b"].to_numpy(), y, pids, 200)
    row = pr.query("a == 'enc-a' and b == 'enc-b'").iloc[0]
    assert (row.p, row["diff"], row.n) == pytest.approx((r.p, r.diff, r.n), abs=1e-12)


def test_mannwhitney_folds_with_a_group_of_one_fold_equals_scipy_exact():
    "One fold in a group (a subgroup present in one test fold only) still gets the exact p-value."
    from scipy import stats
    from cxr_study.stats.folds import mannwhitney_folds
    for alt in ("two-sided", "greater", "less"):
        r = mannwhitney_folds([0.95], [0.5, 0.6, 0.7, 0.8], alternative=alt)
        assert r["p"] == pytest.approx(stats.mannwhitneyu([0.95], [0.5, 0.6, 0.7, 0.8], alternative=alt, method="exact").pvalue)
    assert mannwhitney_folds([0.95], [0.5, 0.6, 0.7, 0.8])["p"] == pytest.approx(2 / 5)
