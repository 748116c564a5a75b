"""Label efficiency end to end: the subsets checked by exact enumeration, a small study whose label-efficiency
runs go through the study machinery (study file, expand_study, execute_run, run.json), their 100% point
against the main linear-probe run, curves that rise on a learnable task, and the report page."""
import itertools
import json
import math
from collections import Counter
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from conftest import prepare_synthetic

TASKS = ["cardiomegaly-cls", "pneumothorax-cls", "heart-seg"]
SWEEP = {"fractions": [0.1, 0.5, 1.0], "seeds": [0, 1]}


def expected_count(f, n):
    "Patients a stratum of n keeps at share f: the ceiling of f*n in exact arithmetic, at least 1, at most n."
    return min(n, max(1, math.ceil(Fraction(str(f)) * n)))


# ---------------------------------------------------------------- the subsets, by exact enumeration

def test_subsets_are_nested_patient_level_and_stratified():
    from cxr_study.study.label_efficiency import label_subsets
    # 12 patients with 1 to 3 images; strata by label, and patient p04 has a negative and a positive image (stratum: positive)
    pats = [f"p{i:02d}" for i in range(12)]
    groups, labels = [], []
    for i, p in enumerate(pats):
        for j in range(1 + i % 3):
            groups.append(p); labels.append(1 if i < 5 else 0)
    groups, labels = np.array(groups), np.array(labels, float)
    labels[np.flatnonzero(groups == "p04")[0]] = 0  # p04: one negative image, one positive
    stratum = {p: labels[groups == p].max() for p in pats}
    n_pos, n_neg = sum(v == 1 for v in stratum.values()), sum(v == 0 for v in stratum.values())
    assert (n_pos, n_neg) == (5, 7)
    fractions = [k / 100 for k in range(1, 101)]
    for seed in range(10):
        S = label_subsets(groups, labels, fractions, seed=seed)
        assert S.shape == (100, len(groups))
        assert (S[:-1] <= S[1:]).all(), "every smaller subset lies inside every larger one"
        assert S[-1].all(), "100% is the whole training fold"
        for f, row in zip(fractions, S):
            chosen = set(groups[row])
            for p in pats:  # a patient's images are drawn together
                assert len(set(row[groups == p])) == 1
            assert sum(stratum[p] == 1 for p in chosen) == expected_count(f, n_pos), (seed, f)
            assert sum(stratum[p] == 0 for p in chosen) == expected_count(f, n_neg), (seed, f)


def test_subset_draws_are_uniform_over_every_possible_subset():
    "4 patients, shares 25% and 50%: every (pair, member of the pair) of the 12 possible outcomes is equally likely."
    from cxr_study.study.label_efficiency import label_subsets
    groups = np.array(["a", "b", "c", "d"])
    outcomes = Counter()
    for seed in range(6000):
        S = label_subsets(groups, None, [0.25, 0.5], seed=seed)
        small, large = frozenset(groups[S[0]]), frozenset(groups[S[1]])
        assert len(small) == 1 and len(large) == 2 and small <= large
        outcomes[(large, small)] += 1
    every = [(frozenset(pair), frozenset([m])) for pair in itertools.combinations("abcd", 2) for m in pair]
    assert set(outcomes) == set(every)  # all 12 outcomes occur, and no other
    p = stats.chisquare([outcomes[o] for o in every]).pvalue
    assert p > 1e-3, p


def test_subset_arguments_are_checked():
    from cxr_study.core import CxrStudyError
    from cxr_study.study.label_efficiency import efficiency_settings, label_subsets
    with pytest.raises(CxrStudyError, match=r"in \(0, 1\]"): label_subsets(["a", "b"], None, [1.5])
    with pytest.raises(CxrStudyError, match="seeds: expected distinct non-negative integers"): efficiency_settings({"seeds": [1, 1]})
    with pytest.raises(CxrStudyError, match="knn_ks: expected positive integers"): efficiency_settings({"knn_ks": [0]})


# ---------------------------------------------------------------- a small study with label efficiency

@pytest.fixture(scope="module")
def study(tiny_benchmark, tmp_path_factory):
    "Raw pixels and the prior on two classification tasks and one segmentation task, two test folds, with label efficiency."
    from cxr_study.cli import DEMO_PROBE
    from cxr_study.study.executors import run_study
    from cxr_study.study.studyfile import validate_study
    out = tmp_path_factory.mktemp("le-study")
    cfg = validate_study({"data": str(tiny_benchmark), "out": str(out), "encoders": ["prior", "raw-pixels"], "tasks": TASKS,
                          "folds": [0, 1], "executor": {"kind": "inline"},
                          "settings": {"linear-probe": {"probe": {**DEMO_PROBE, "max_epochs": 10, "loss_size": None}, "mask_size": 32}},
                          "label_efficiency": SWEEP})
    st = run_study(cfg, show_progress=False)
    assert set(st.status) == {"done"}, st
    return {"out": out, "cfg": cfg, "status": st}


def _read(folder):
    return pd.read_csv(folder / "results.csv"), pd.read_parquet(folder / "predictions.parquet")


def test_the_study_runs_label_efficiency_after_the_main_grid(study):
    out, st = study["out"], study["status"]
    le = st[st.protocol == "label-efficiency"]
    assert sorted(zip(le.encoder, le.task)) == sorted(("raw-pixels", t) for t in TASKS)  # the prior has no probe
    for t in TASKS:
        d = out / "label-efficiency" / "runs" / "raw-pixels" / t / "label-efficiency"
        assert all((d / f).is_file() for f in ("results.csv", "predictions.parquet", "run.json")) and not (d / "partial").exists()
        meta = json.loads((d / "run.json").read_text())
        assert meta["params"]["adapt"] == {**SWEEP, "probes": ["linear", "knn"], "knn_ks": [10, 20, 100, 200]}
    assert not list(out.glob("runs/*/*/label-efficiency")), "the main run store holds no label-efficiency run"
    assert not [p for p in out.rglob("*.tmp")]


def test_the_full_share_is_the_main_linear_probe_run(study):
    "Same folds, same seed: at 100% the linear probe's predictions and per-fold metrics are the main run's, exactly."
    out = study["out"]
    for t in TASKS:
        res, pred = _read(out / "label-efficiency" / "runs" / "raw-pixels" / t / "label-efficiency")
        mres, mpred = _read(out / "runs" / "raw-pixels" / t / "linear-probe")
        cols = ["y_true", "y_score"] if t.endswith("-cls") else ["dice", "iou", "gt_area_pct", "pred_area_pct"]
        full = pred[(pred.fraction == 1.0) & (pred.probe == "linear")]
        assert sorted(full.subset_seed.unique()) == SWEEP["seeds"]
        for _, g in full.groupby("subset_seed"):
            m = g.merge(mpred, on=["fold", "image_id"], suffixes=("", "_main"), validate="one_to_one")
            assert len(m) == len(mpred) == len(g)
            for c in cols: np.testing.assert_array_equal(m[c].to_numpy(), m[f"{c}_main"].to_numpy(), err_msg=f"{t} {c}")
        metric = "auroc" if t.endswith("-cls") else "dice"
        r = res[(res.fraction == 1.0) & (res.probe == "linear")].merge(mres[["fold", metric]], on="fold", suffixes=("", "_main"))
        np.testing.assert_array_equal(r[metric].to_numpy(), r[f"{metric}_main"].to_numpy())
        if t.endswith("-cls"):  # and the same C, chosen on the same validation fold
            np.testing.assert_array_equal(r.merge(mres[["fold", "C"]], on="fold", suffixes=("", "_main")).eval("C == C_main"), True)


def test_every_share_is_scored_on_the_same_test_images(study):
    out = study["out"]
    _, mpred = _read(out / "runs" / "raw-pixels" / "pneumothorax-cls" / "linear-probe")
    _, pred = _read(out / "label-efficiency" / "runs" / "raw-pixels" / "pneumothorax-cls" / "label-efficiency")
    want = sorted(zip(mpred.fold, mpred.image_id))
    for _, g in pred.groupby(["fraction", "subset_seed", "probe"]):
        assert sorted(zip(g.fold, g.image_id)) == want
    assert set(pred.probe) == {"linear", "knn"}


def test_training_subsets_have_the_stratified_patient_counts(study, tiny_benchmark):
    "Each run's training subset holds ceil(f*N) patients of each label stratum of the training fold, counted here from the index."
    from cxr_study.data.cohorts import make_cohort, split_masks
    from cxr_study.data.index import read_index
    out = study["out"]
    for t in ("pneumothorax-cls", "cardiomegaly-cls"):
        res, _ = _read(out / "label-efficiency" / "runs" / "raw-pixels" / t / "label-efficiency")
        cohort = make_cohort(read_index(Path(tiny_benchmark) / "index.parquet"), t).reset_index(drop=True)
        for k in (0, 1):
            train = cohort[split_masks(cohort.fold, k)["train"]]
            per_patient = train.groupby("patient_id").y.max()
            n = [(per_patient == v).sum() for v in (0, 1)]
            for f in SWEEP["fractions"]:
                rows = res[(res.fold == k) & (res.fraction == f)]
                assert set(rows.n_train_patients) == {sum(expected_count(f, m) for m in n)}, (t, k, f)
                if f == 1.0: assert set(rows.n_train) == {len(train)}
    assert (res.groupby(["fold", "subset_seed", "probe"]).n_train.apply(lambda s: s.is_monotonic_increasing)).all()


def test_complete_runs_are_skipped_and_kept(study):
    from cxr_study.study.executors import run_study
    from cxr_study.study.studyfile import expand_study
    specs = [s for s in expand_study(study["cfg"]) if s.protocol == "label-efficiency"]
    assert all(s.complete() for s in specs)
    stamps = {s.key: (s.path / "run.json").stat().st_mtime_ns for s in specs}
    st = run_study(study["cfg"], show_progress=False)
    assert set(st.status) == {"skipped (complete)"}
    assert stamps == {s.key: (s.path / "run.json").stat().st_mtime_ns for s in specs}


def test_the_plan_counts_no_extraction_for_label_efficiency(study):
    "The runs reuse the main linear probe's cached features: no forward passes of their own."
    from cxr_study.study.plan import plan_study
    from cxr_study.study.studyfile import validate_study
    raw = {"data": str(study["cfg"].data["heart-seg"]), "out": str(study["out"]) + "-plan", "encoders": ["raw-pixels"],
           "tasks": ["heart-seg"], "label_efficiency": {}}
    runs = plan_study(validate_study(raw))["runs"]
    assert list(runs.protocol) == ["linear-probe", "label-efficiency"]
    assert runs.passes.tolist()[0] > 0 and runs.passes.tolist()[1] == 0
    alone = plan_study(validate_study({**raw, "protocols": ["fine-tune"]}))["runs"]  # no linear probe: it extracts them itself
    assert alone[alone.protocol == "label-efficiency"].passes.iloc[0] > 0


def test_report_page_and_its_tables(study):
    "The report's label-efficiency page executes on the study; its check finds every 100% point equal to the main run."
    import nbformat
    from cxr_study.reports.report import REPORT_PAGES, _execute, _report_key, load_study, report_template
    assert ("efficiency", "Label efficiency") in REPORT_PAGES
    rep = study["out"] / "report-efficiency"
    for sub in ("tables", "figures"): (rep / sub).mkdir(parents=True, exist_ok=True)
    _execute(report_template("efficiency"), rep / "efficiency.ipynb", dict(study_dir="..", report_dir=".", n_boot=200, n_perm=200))
    nb = nbformat.read(rep / "efficiency.ipynb", as_version=4)
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert (rep / "figures" / "label_efficiency.png").stat().st_size > 10_000
    chk = pd.read_csv(rep / "tables" / "label_efficiency_vs_main.csv")
    assert sorted(chk.task) == sorted(TASKS) and chk.equal.all() and (chk.max_abs_diff == 0).all()
    curves = pd.read_csv(rep / "tables" / "label_efficiency.csv")
    assert len(curves) == 3 * (2 + 2 + 1)  # shares x (linear + kNN on the two classification tasks, linear on segmentation)
    # a report is rebuilt when label-efficiency runs change: they are part of what it is made from
    key = _report_key(load_study(study["out"]))
    assert sorted(key["label_efficiency"]) == sorted(f"raw-pixels/{t}/label-efficiency" for t in TASKS)


# ---------------------------------------------------------------- curves rise with data on a learnable task

@pytest.fixture(scope="module")
def learnable(tmp_path_factory):
    "A synthetic benchmark big enough for a curve: 240 radiographs, 150 in the cardiomegaly cohort."
    from cxr_study.data.synthetic import SyntheticCfg, make_synthetic_benchmark
    root = tmp_path_factory.mktemp("learnable")
    raw = make_synthetic_benchmark(root / "synthetic", SyntheticCfg(n_images=240, size=64, seed=7))
    return prepare_synthetic(raw, root / "prepared")


def test_curves_rise_with_data_on_a_learnable_task(learnable, tmp_path):
    """Cardiomegaly on the synthetic benchmark is learnable from raw pixels (the heart's width). Over shares and subset
    seeds, the pooled test AUROC rises with the share: Kendall's tau is positive at p < 0.01, and the full training fold
    beats the smallest share by more than the smallest share's spread over seeds."""
    from cxr_study.study.label_efficiency import efficiency_spec
    from cxr_study.study.runner import run_experiment
    fractions, seeds = [0.05, 0.25, 1.0], [0, 1, 2]
    r = run_experiment(efficiency_spec("raw-pixels", "cardiomegaly-cls", learnable, tmp_path,
                             adapt={"fractions": fractions, "seeds": seeds, "probes": ["linear"]}))
    P = r["predictions"]
    auc = {(f, s): roc_auc_score(g.y_true, g.y_score) for (f, s), g in P.groupby(["fraction", "subset_seed"])}
    assert len(auc) == 9 and P.groupby(["fraction", "subset_seed"]).size().nunique() == 1  # the same test images everywhere
    x, y = zip(*[(f, a) for (f, _), a in auc.items()])
    tau = stats.kendalltau(x, y)
    assert tau.statistic > 0 and tau.pvalue < 0.01, (tau, auc)
    small = [auc[(0.05, s)] for s in seeds]
    assert auc[(1.0, 0)] - np.mean(small) > max(small) - min(small), auc
    assert auc[(1.0, 0)] > 0.75, auc  # learnable indeed


def test_report_page_of_a_study_without_label_efficiency(tmp_path):
    "Every study's report has the page: without label-efficiency runs it says how to add them, and fails nothing."
    import nbformat
    from cxr_study.reports.report import _execute, report_template
    rep = tmp_path / "report"
    for sub in ("tables", "figures"): (rep / sub).mkdir(parents=True)
    _execute(report_template("efficiency"), rep / "efficiency.ipynb", dict(study_dir="..", report_dir=".", n_boot=100, n_perm=100))
    nb = nbformat.read(rep / "efficiency.ipynb", as_version=4)
    outs = [o for c in nb.cells for o in c.get("outputs", [])]
    assert not [o for o in outs if o.get("output_type") == "error"]
    assert any("no complete label-efficiency runs" in o.get("data", {}).get("text/markdown", "") for o in outs)
    assert not list((rep / "tables").iterdir())
