"""Contracts of every metric in the metric table, against outside references.

Parametrized over `METRIC_TABLE`, so a metric added to the table is checked the moment it is
registered: its results.csv value (`score_fold`) equals scikit-learn's function or the plain mean
over images; a mean-type metric's per-image values average to it; its weighted form with unit
weights gives the same value, and with integer weights the value on the table with rows repeated;
`bootstrap_ci` gives an interval around it; and a paired test of a model against itself finds no
difference. A metric without an outside reference in `REFERENCES` fails here until one is added.
About 5 s."""
import statistics

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (average_precision_score, balanced_accuracy_score, brier_score_loss, recall_score,
                             roc_auc_score)

from cxr_study.results import METRIC_TABLE, MetricCfg, get_metric, registered_metric, score_fold
from cxr_study.stats.bootstrap import bootstrap_ci, bootstrap_table, per_image_values, weighted_metric
from cxr_study.stats.folds import fold_metrics
from cxr_study.stats.paired import paired_bootstrap_test, paired_permutation_test

# the outside reference of each metric: a predictions table -> the metric (scikit-learn, or the plain mean over images)
REFERENCES = {
    "auroc": lambda f: roc_auc_score(f.y_true, f.y_score),
    "auprc": lambda f: average_precision_score(f.y_true, f.y_score),
    "sensitivity": lambda f: recall_score(f.y_true, f.y_score >= 0.5),
    "specificity": lambda f: recall_score(f.y_true, f.y_score >= 0.5, pos_label=0),
    "dice": lambda f: statistics.fmean(f.dice.dropna()),
    "iou": lambda f: statistics.fmean(f.iou.dropna()),
    "detection": lambda f: statistics.fmean(f.pred_area_pct[f.gt_area_pct > 0] > 0),  # images with a true mask
}


def predictions(seed:int=0, n:int=240) -> pd.DataFrame:
    "Fixed random predictions with every column a metric of the table reads: labels, tied scores, Dice with some empty masks, areas."
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(float)
    s = np.round(1 / (1 + np.exp(-(1.2 * y - 0.6 + rng.normal(size=n)))), 2)  # rounding makes ties
    dice = rng.beta(3, 2, n); dice[rng.random(n) < 0.05] = np.nan
    return pd.DataFrame({"encoder": "enc", "weights": "w", "task": "x-cls", "protocol": "linear-probe", "fold": np.arange(n) % 3,
                         "image_id": [f"i{i}" for i in range(n)], "patient_id": [f"p{p}" for p in rng.integers(0, n // 2, n)],
                         "y_true": y, "y_score": s, "dice": dice, "iou": dice / (2 - dice),
                         "gt_area_pct": np.where(rng.random(n) < 0.8, rng.exponential(2, n), 0.0),
                         "pred_area_pct": np.where(rng.random(n) < 0.7, rng.exponential(2, n), 0.0)})


P = predictions()


def reference(name:str):
    if name not in REFERENCES: pytest.fail(f"metric {name!r} has no outside reference: add one to REFERENCES in {__file__}")
    return REFERENCES[name]


def inputs(name:str, f:pd.DataFrame):
    m = get_metric(name)
    return m.inputs(m.select(f))


def check_pooled(name, ref):
    np.testing.assert_allclose(get_metric(name).score(P), ref(P), rtol=0, atol=1e-12)


def check_weighted(name, ref):
    y, v = inputs(name, P)
    np.testing.assert_allclose(weighted_metric(name, y, v, np.ones(v.size)), get_metric(name).score(P), rtol=0, atol=1e-12)
    w = np.random.default_rng(1).integers(0, 3, len(P))  # integer weights = rows repeated
    f = get_metric(name).select(P.loc[P.index.repeat(w)])
    sel = get_metric(name).select(P.assign(w=w)).w.to_numpy(float)
    np.testing.assert_allclose(weighted_metric(name, y, v, sel), ref(f), rtol=0, atol=1e-12)


def check_bootstrap(name, ref):
    y, v = inputs(name, P)
    cl = get_metric(name).select(P).patient_id.to_numpy()
    ci = bootstrap_ci(name, v, y, cl, n_boot=300, seed=3)
    assert ci.reason == "" and ci.lo <= ci.estimate <= ci.hi and ci.lo < ci.hi, ci
    np.testing.assert_allclose(ci.estimate, ref(P), rtol=0, atol=1e-12)


def check_paired_with_itself(name):
    m = get_metric(name)
    y, v = inputs(name, P)
    b = paired_bootstrap_test(name, v, v, y, n_boot=100)
    assert b.diff == 0 and b.lo == 0 and b.hi == 0, b
    if m.per_image is not None or m.permuted is not None:
        assert paired_permutation_test(name, v, v, y, n_perm=100).p == 1.0


@pytest.mark.parametrize("name", list(METRIC_TABLE))
def test_pooled_value_equals_the_outside_reference(name):
    check_pooled(name, reference(name))


@pytest.mark.parametrize("name", [k for k, m in METRIC_TABLE.items() if m.per_image is not None])
def test_per_image_values_average_to_the_pooled_value(name):
    y, v = inputs(name, P)
    per = per_image_values(name, y, v)
    np.testing.assert_allclose(statistics.fmean(per[~np.isnan(per)]), get_metric(name).score(P), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", list(METRIC_TABLE))
def test_weighted_form_with_unit_and_integer_weights(name):
    check_weighted(name, reference(name))


@pytest.mark.parametrize("name", list(METRIC_TABLE))
def test_bootstrap_interval_contains_the_estimate(name):
    check_bootstrap(name, reference(name))


@pytest.mark.parametrize("name", list(METRIC_TABLE))
def test_a_model_against_itself_differs_by_nothing(name):
    check_paired_with_itself(name)


@pytest.mark.parametrize("name", [k for k, m in METRIC_TABLE.items() if m.per_fold])
def test_score_fold_is_the_results_column(name):
    m = get_metric(name)
    kind = m.kind
    assert name in score_fold(P, kind) and score_fold(P, kind)[name] == m.score(P)


def _balanced_accuracy_w(y, s, W):
    hit = (s >= 0.5) == y
    return 0.5 * (W[:, y] @ hit[y] / W[:, y].sum(1) + W[:, ~y] @ hit[~y] / W[:, ~y].sum(1))


NEW = {  # registered inside the tests only: a mean over images and a metric with its own weighted form
    "brier": (MetricCfg("brier", "classification", "Brier score", per_image=lambda y, v, t: (v - y) ** 2, higher_is_better=False),
              lambda f: brier_score_loss(f.y_true, f.y_score)),
    "balanced_accuracy": (MetricCfg("balanced_accuracy", "classification", "balanced accuracy at 0.5", weighted=_balanced_accuracy_w,
                                    needs="both"),
                          lambda f: balanced_accuracy_score(f.y_true, f.y_score >= 0.5)),
}


@pytest.mark.parametrize("name", list(NEW))
def test_a_registered_metric_is_picked_up(name):
    cfg, ref = NEW[name]
    assert name not in METRIC_TABLE
    with registered_metric(cfg):
        assert list(score_fold(P, "classification"))[-1] == name
        np.testing.assert_allclose(score_fold(P, "classification")[name], ref(P), rtol=0, atol=1e-12)
        check_pooled(name, ref); check_weighted(name, ref); check_bootstrap(name, ref); check_paired_with_itself(name)
        fm = fold_metrics(P)
        for k, g in P.groupby("fold"): np.testing.assert_allclose(fm.loc[fm.fold == k, name].item(), ref(g), rtol=0, atol=1e-12)
        tab = bootstrap_table(P, name, n_boot=100)
        np.testing.assert_allclose(tab.estimate.item(), ref(P), rtol=0, atol=1e-12)
    assert name not in METRIC_TABLE
