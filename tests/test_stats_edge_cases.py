"""Degenerate inputs never crash a statistic: they give NaN with a reason."""
import numpy as np
import pandas as pd
import pytest

from cxr_study.core import CxrStudyError
from cxr_study.results import METRIC_TABLE
from cxr_study.stats.bootstrap import bootstrap_ci, bootstrap_table, compute_metric
from cxr_study.stats.folds import fold_metrics, friedman_two_conditions, mannwhitney_folds, median_ci
from cxr_study.stats.multiplicity import benjamini_hochberg, holm
from cxr_study.stats.subgroups import shortcut_analysis, subgroup_gaps, subgroup_metrics
from cxr_study.stats.tables import simulate_predictions


@pytest.mark.parametrize("metric", ["auroc", "auprc"])
@pytest.mark.parametrize("label", [0, 1])
@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_single_class_gives_nan_with_reason(metric, label, method):
    r = bootstrap_ci(metric, np.linspace(0, 1, 30), np.full(30, label), clusters=np.arange(30) // 2, method=method, n_boot=50)
    assert np.isnan(r.estimate) and np.isnan(r.lo) and np.isnan(r.hi)
    assert r.reason.startswith("single class")


@pytest.mark.parametrize("metric", ["dice", "iou"])
def test_all_empty_masks_give_nan_with_reason(metric):
    r = bootstrap_ci(metric, np.full(10, np.nan), method="bca", n_boot=50)
    assert np.isnan(r.estimate) and "empty masks" in r.reason


def test_some_empty_masks_are_left_out_of_the_mean():
    v = np.array([0.5, np.nan, 0.7])
    assert compute_metric("dice", None, v) == (pytest.approx(0.6), "")


@pytest.mark.parametrize("metric", list(METRIC_TABLE))
def test_every_metric_on_empty_input(metric):
    y = np.array([], float)
    value, why = compute_metric(metric, y, y)
    assert np.isnan(value) and why


def test_rare_class_replicates_reported():
    # one positive patient among many: stratification keeps it, so every replicate is defined
    y = np.r_[1, np.zeros(40)]
    r = bootstrap_ci("auroc", np.linspace(0, 1, 41), y, clusters=np.arange(41), n_boot=100)
    assert r.n_valid == 100 and r.reason == ""


def test_tables_with_single_class_groups():
    preds = simulate_predictions(n_patients=80, tasks=("pneumothorax-cls", "pneumothorax-seg"))
    preds.loc[preds.task == "pneumothorax-seg", "dice"] = np.nan  # every mask empty
    pos = preds[(preds.task == "pneumothorax-cls") & (preds.y_true == 1)]
    assert fold_metrics(pos).auroc.isna().all()
    tab = bootstrap_table(preds[preds.task == "pneumothorax-seg"], "dice", n_boot=20)
    assert tab.estimate.isna().all() and tab.reason.str.contains("empty masks").all()
    sub = subgroup_metrics(pos, "auroc", ["chest_tube"], n_boot=20)
    assert (~sub.supported).all() and sub.reason.str.contains("n_neg=0").all()
    gaps = subgroup_gaps(sub)
    assert gaps.gap.isna().all() and (gaps.n_unsupported == gaps.n_groups).all()


def test_shortcut_analysis_without_tube_groups():
    preds = simulate_predictions({"enc": 1.0}, n_patients=100).assign(chest_tube=0.0)
    r = shortcut_analysis(preds).iloc[0]
    assert not r.flagged and np.isnan(r.p_fisher) and "no images with a tube" in r.reason


def test_fold_level_tests_on_empty_or_tied_input():
    assert np.isnan(median_ci([])["median"])
    assert np.isnan(mannwhitney_folds([np.nan], [0.5])["p"])
    assert np.isnan(friedman_two_conditions([0.5, 0.5], [0.5, 0.5])["p"])


def test_multiplicity_all_nan():
    assert np.isnan(holm([np.nan, np.nan])).all() and np.isnan(benjamini_hochberg([np.nan])).all()


def test_bad_user_input_raises_cxr_study_error():
    with pytest.raises(CxrStudyError, match="unknown metric"):
        bootstrap_ci("accuracy", np.ones(3))
    with pytest.raises(CxrStudyError, match="unknown metric"):
        compute_metric("accuracy", [0, 1], [0.1, 0.9])
