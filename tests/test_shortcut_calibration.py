"""`shortcut_test` against outcomes simulated with a known chest-tube effect, and against statsmodels and
scipy used directly.

The simulated studies follow the real design: patients with one or more images, patient-grouped test
folds, pneumothorax sizes log-normal, and tubes more common in larger pneumothoraces (so the raw
difference is confounded by size). The chance of detection (or the Dice) is linear in log size, in the
fold and in a patient effect, plus `delta` with a tube, and stays inside (0, 1), so the size- and
fold-adjusted difference in sensitivity that the test estimates is exactly `delta`. Expected rates are
the nominal ones (95 % coverage, 5 % level), checked within three binomial Monte Carlo standard errors.
"""
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cxr_study.results import RUN_KEYS
from cxr_study.stats.subgroups import shortcut_test

ALPHA = 0.05


def simulate(rng, delta=0.0, n_patients=250, kind="cls", runs=("enc-a",), confounded=True):
    "Per-image predictions of `runs` on one simulated study, with a tube effect of exactly `delta`."
    n_img = 1 + rng.poisson(0.3, n_patients)
    pid = np.repeat(np.arange(n_patients), n_img)
    n = pid.size
    fold = rng.permutation(np.arange(n_patients) % 5)[pid]
    log_size = np.clip(rng.normal(0.0, 0.9, n), -2.2, 2.2)
    tube = (rng.random(n) < (0.35 + 0.4 * (log_size > 0) if confounded else 0.55)).astype(float)
    q = 1 + np.searchsorted(np.quantile(log_size, [0.25, 0.5, 0.75]), log_size, side="right")
    base = pd.DataFrame({"fold": fold, "image_id": [f"img{i}" for i in range(n)], "patient_id": [f"pat{p}" for p in pid],
                         "chest_tube": tube, "ptx_size_pct": np.exp(log_size), "ptx_size_quartile": q.astype(float)})
    out = []
    for run in runs:  # each run: its own fold offsets, patient effects and outcome noise
        mean = 0.45 + 0.1 * log_size + rng.uniform(-0.05, 0.05, 5)[fold] + np.clip(rng.normal(0, 0.05, n_patients), -0.1, 0.1)[pid]
        assert (mean > 0.05).all() and (mean + max(delta, 0) < 0.98).all()  # linear: the adjusted effect is delta exactly
        if kind == "cls":
            hit = rng.random(n) < mean + delta * tube
            cols = {"task": "pneumothorax-cls", "y_true": 1, "y_score": np.where(hit, 0.8, 0.2)}
        else:
            cols = {"task": "pneumothorax-seg", "dice": mean + delta * tube + rng.normal(0, 0.15, n)}
        out.append(base.assign(encoder=run, weights="random-init", protocol="linear-probe", **cols))
    return pd.concat(out, ignore_index=True)


def mc_band(p, n):
    "Three binomial Monte Carlo standard errors around the expected rate `p` over `n` simulations."
    se = np.sqrt(p * (1 - p) / n)
    return p - 3 * se, p + 3 * se


@pytest.mark.parametrize("kind,delta", [("cls", 0.15), ("seg", 0.08)])
def test_known_effect_recovered_within_its_ci_at_the_stated_rate(kind, delta):
    rng, n_sim = np.random.default_rng(1), 150
    rows = pd.concat([shortcut_test(simulate(rng, delta, kind=kind)) for _ in range(n_sim)])
    covered = ((rows.lo <= delta) & (delta <= rows.hi)).mean()
    lo, hi = mc_band(0.95, n_sim)
    assert lo <= covered <= hi, covered
    assert abs(rows.estimate.mean() - delta) < 4 * rows.estimate.std() / np.sqrt(n_sim)  # unbiased despite the confounding
    assert rows.flagged.mean() > 0.5  # and the effect is found


def test_the_raw_difference_is_confounded_and_the_adjusted_one_is_not():
    "Tubes are more common in large pneumothoraces, which are detected more often: the raw difference is biased."
    rng, raw, adjusted = np.random.default_rng(2), [], []
    for _ in range(40):
        d = simulate(rng, 0.0, n_patients=400)
        hit = d.y_score >= 0.5
        raw.append(hit[d.chest_tube == 1].mean() - hit[d.chest_tube == 0].mean())
        adjusted.append(shortcut_test(d).estimate.iloc[0])
    se = lambda v: np.std(v) / np.sqrt(len(v))
    assert np.mean(raw) > 5 * se(raw), np.mean(raw)                       # confounded by size
    assert abs(np.mean(adjusted)) < 3 * se(adjusted), np.mean(adjusted)   # size-adjusted: no effect


def test_no_effect_holm_flag_rate_at_most_alpha():
    "Three runs per simulated study, none with a tube effect: a flag in any of them is a false flag of the family."
    rng, n_sim = np.random.default_rng(3), 200
    fam = [shortcut_test(simulate(rng, 0.0, runs=("enc-a", "enc-b", "enc-c"))) for _ in range(n_sim)]
    any_flag = np.mean([f.flagged.any() for f in fam])
    assert any_flag <= ALPHA + 3 * np.sqrt(ALPHA * (1 - ALPHA) / n_sim), any_flag
    per_run = pd.concat(fam)
    lo, hi = mc_band(ALPHA, len(per_run))  # the unadjusted two-sided p is uniform: rejects at the nominal rate
    assert lo <= (per_run.p < ALPHA).mean() <= hi, (per_run.p < ALPHA).mean()
    from statsmodels.stats.multitest import multipletests
    for f in fam[:20]:  # the adjustment is Holm's, as statsmodels computes it
        np.testing.assert_allclose(f.p_holm, multipletests(f.p, method="holm")[1], rtol=1e-12)


def _design(d):
    X = pd.DataFrame({"const": 1.0, "chest_tube": d.chest_tube, "log_size": np.log(d.ptx_size_pct)})
    return pd.concat([X, pd.get_dummies(d.fold, prefix="fold", drop_first=True, dtype=float)], axis=1)


@pytest.mark.parametrize("kind", ["cls", "seg"])
def test_agrees_with_statsmodels_ols_and_cluster_robust_errors(kind):
    "Independence GEE = least squares; its robust SE = the cluster-robust sandwich without small-sample factors."
    import statsmodels.api as sm
    d = simulate(np.random.default_rng(4), 0.1, kind=kind)
    r = shortcut_test(d).iloc[0]
    y = (d.y_score >= 0.5).astype(float) if kind == "cls" else d.dice
    ols = sm.OLS(y.to_numpy(), _design(d)).fit(cov_type="cluster", cov_kwds={"groups": pd.factorize(d.patient_id)[0],
                                                                           "use_correction": False, "df_correction": False})
    assert r.estimate == pytest.approx(ols.params["chest_tube"], rel=1e-8)
    assert r.p == pytest.approx(ols.pvalues["chest_tube"], rel=1e-6)
    lo, hi = ols.conf_int(0.05).loc["chest_tube"]
    assert (r.lo, r.hi) == (pytest.approx(lo, rel=1e-6), pytest.approx(hi, rel=1e-6))


def test_balanced_sizes_give_the_plain_difference_in_sensitivity():
    "Each size once with a tube and once without, one fold: the adjusted difference is the raw one, by arithmetic."
    rng = np.random.default_rng(5)
    size = np.exp(rng.normal(0, 1, 60))
    d = pd.DataFrame({"ptx_size_pct": np.r_[size, size], "chest_tube": np.r_[np.ones(60), np.zeros(60)],
                      "y_score": np.r_[rng.random(60) < 0.8, rng.random(60) < 0.5].astype(float), "y_true": 1, "fold": 0,
                      "patient_id": [f"p{i}" for i in range(120)], "ptx_size_quartile": 1.0,
                      "encoder": "e", "weights": "w", "task": "pneumothorax-cls", "protocol": "linear-probe"})
    r = shortcut_test(d).iloc[0]
    want = d[d.chest_tube == 1].y_score.mean() - d[d.chest_tube == 0].y_score.mean()
    assert r.estimate == pytest.approx(want, abs=1e-10)
    assert r.q_diff == pytest.approx(want, abs=1e-12)
    # one patient per image: the robust SE is White's HC0 of the two-group comparison
    import statsmodels.api as sm
    hc0 = sm.OLS(d.y_score, sm.add_constant(d[["chest_tube"]].assign(ls=np.log(d.ptx_size_pct)))).fit(cov_type="HC0")
    assert r.p == pytest.approx(hc0.pvalues["chest_tube"], rel=1e-6)


def test_study_test_is_the_exact_mann_whitney_of_the_fold_values():
    d = simulate(np.random.default_rng(6), 0.2, n_patients=400, kind="seg")
    r = shortcut_test(d).iloc[0]
    q = d[d.ptx_size_quartile == 1]
    per_fold = q.groupby(["fold", "chest_tube"]).dice.mean().unstack()
    want = stats.mannwhitneyu(per_fold[1.0], per_fold[0.0], method="exact").pvalue  # continuous values: no ties
    assert r.p_study == pytest.approx(want, rel=1e-10)
    assert r.flag_study == (want < ALPHA and r.q_diff > 0)
    assert r.q_n_tube == int((q.chest_tube == 1).sum()) and r.q_n_no_tube == int((q.chest_tube == 0).sum())


def test_missing_patient_ids_are_their_own_clusters_and_said():
    d = simulate(np.random.default_rng(7), 0.0)
    d.loc[d.index[:10], "patient_id"] = None
    r = shortcut_test(d).iloc[0]
    assert "10 images without a patient id, each its own cluster" in r.reason
    assert r.n_patients == d.patient_id.nunique() + 10 and np.isfinite(r.p)


def test_a_shortcut_direction_against_the_tube_is_not_flagged():
    d = simulate(np.random.default_rng(8), -0.3, n_patients=400)
    r = shortcut_test(d).iloc[0]
    assert r.p_holm < 1e-3 and r.estimate < 0 and not r.flagged
