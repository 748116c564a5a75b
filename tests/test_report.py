"""The study report end to end: a small study on the synthetic benchmark, its report built as a user
builds it, and the report's numbers recomputed from the run files with scipy, scikit-learn and
statsmodels."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score
from statsmodels.stats.multitest import multipletests

from site_browser import browse_site

TASKS = ["pneumothorax-cls", "cardiomegaly-cls", "pneumothorax-seg", "heart-seg"]


@pytest.fixture(scope="module")
def study(tiny_benchmark, tmp_path_factory):
    "Three models on the four tasks over the five folds, then its report with the HTML site."
    from cxr_study.cli import DEMO_PROBE
    from cxr_study.report import build_report
    from cxr_study.executors import run_grid
    out = tmp_path_factory.mktemp("study")
    st = run_grid(["prior", "raw-pixels", "resnet18"], TASKS, tiny_benchmark, out, executor="inline",
                  options={"probe": {**DEMO_PROBE, "max_epochs": 15}}, show_progress=False)
    assert set(st.status) == {"done"}, st
    build_report(out, html=True, n_boot=300, n_perm=300, show_progress=False)
    return out


def runs(out):
    "Every run's files, read directly (not through the report)."
    res = pd.concat([pd.read_csv(p) for p in sorted(out.glob("runs/*/*/*/results.csv"))], ignore_index=True)
    pred = pd.concat([pd.read_parquet(p) for p in sorted(out.glob("runs/*/*/*/predictions.parquet"))], ignore_index=True)
    return res, pred


def table(out, name):
    return pd.read_csv(out / "report" / "tables" / f"{name}.csv")


def test_report_pages_tables_and_figures_are_written(study):
    rep = study / "report"
    for page in ["index", "cohorts", "comparisons", "shortcut", "runs"]:
        nb = json.loads((rep / f"{page}.ipynb").read_text())
        assert not [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"], page
    for name in ["summary", "main_results", "paper_comparison", "friedman", "nemenyi", "mean_ranks", "paired_vs_best", "lp_vs_ft",
                 "shortcut", "tube_models", "subgroups", "runs", *[f"table1_{t}" for t in TASKS]]:
        assert (rep / "tables" / f"{name}.csv").exists(), name
    figs = sorted(p.name for p in (rep / "figures").glob("*.png"))
    assert "main_results.png" in figs and any(f.startswith("cd_") for f in figs) and any(f.startswith("forest_") for f in figs)
    assert any(f.startswith("subgroups_") for f in figs)
    tm = table(study, "tube_models")
    assert ("tube_effects.png" in figs) == bool(tm.estimate.notna().any())
    assert (tm.estimate.notna() | tm.reason.notna()).all(), "a missing estimate says why"
    import yaml
    cfg = yaml.safe_load((rep / "_quarto.yml").read_text())
    assert cfg["project"]["type"] == "website"
    assert not list(study.glob(".report-*")), "no staging folder is left behind"


def test_main_results_equal_the_run_files(study):
    res, pred = runs(study)
    main = table(study, "main_results")
    for (enc, task), g in res.groupby(["encoder", "task"]):
        m = "auroc" if task.endswith("-cls") else "dice"
        row = main[(main.encoder == enc) & (main.task == task) & (main.metric == m)].iloc[0]
        assert row["median"] == pytest.approx(g[m].median()) and row.fold_min == pytest.approx(g[m].min())
        assert row.fold_max == pytest.approx(g[m].max()) and row.n_folds == 5
        p = pred[(pred.encoder == enc) & (pred.task == task)]
        pooled = roc_auc_score(p.y_true, p.y_score) if m == "auroc" else p.dice.mean()
        assert row.pooled == pytest.approx(pooled)
        assert row.ci_lo <= row.pooled + 1e-12 and row.pooled <= row.ci_hi + 1e-12


def test_friedman_and_holm_equal_scipy_and_statsmodels(study):
    res, pred = runs(study)
    fr = table(study, "friedman")
    for task in TASKS:
        m = "auroc" if task.endswith("-cls") else "dice"
        v = res[res.task == task].pivot_table(index="fold", columns="encoder", values=m)
        assert fr[fr.task == task].p.item() == pytest.approx(stats.friedmanchisquare(*v.to_numpy().T).pvalue)
    pvb = table(study, "paired_vs_best")
    for _, fam in pvb.groupby(["task", "protocol", "metric"]):
        assert fam.p_holm.to_numpy() == pytest.approx(multipletests(fam.p, method="holm")[1])


def test_paired_auroc_rows_are_clustered_delong_on_the_run_files(study):
    from cxr_study.stats.paired import delong_test
    res, pred = runs(study)
    pvb = table(study, "paired_vs_best")
    labels = {"prior": "prior (reference)", "raw-pixels": "raw pixels (reference)", "resnet18": "ResNet-18 (untrained)"}
    enc = {v: k for k, v in labels.items()}
    for _, r in pvb[pvb.metric == "auroc"].iterrows():
        p = pred[pred.task == r.task]
        a = p[p.encoder == enc[r.model]].set_index("image_id")
        b = p[p.encoder == enc[r.best]].set_index("image_id").loc[a.index]
        d = delong_test(a.y_true.to_numpy(), a.y_score.to_numpy(), b.y_score.to_numpy(), clusters=a.patient_id.to_numpy())
        assert r.estimate_a == pytest.approx(roc_auc_score(a.y_true, a.y_score))
        assert r.p == pytest.approx(d.p) and r["diff"] == pytest.approx(d.diff)


def test_shortcut_fisher_p_equals_scipy_on_the_run_files(study):
    res, pred = runs(study)
    sc = table(study, "shortcut")
    cls = sc[sc.task == "pneumothorax-cls"]
    assert len(cls) and (cls.n_tube + cls.n_no_tube > 0).all(), "classification predictions carry size quartiles"
    checked = 0
    for _, r in cls.iterrows():
        p = pred[(pred.encoder == r.encoder) & (pred.task == r.task) & (pred.ptx_size_quartile == 1) & (pred.y_true == 1)]
        det = p.y_score >= 0.5
        t, n = det[p.chest_tube == 1], det[p.chest_tube == 0]
        if len(t) and len(n):
            want = stats.fisher_exact([[t.sum(), len(t) - t.sum()], [n.sum(), len(n) - n.sum()]])[1]
            assert r.p_fisher == pytest.approx(want); checked += 1
        else: assert np.isnan(r.p_fisher)
    assert checked, "no run had images both with and without a tube in the smallest quartile"


def test_site_renders_in_chromium_with_every_image(study):
    html = study / "report" / "html"
    assert (html / "index.html").exists()
    assert browse_site(html) == []


def test_interrupted_rebuild_keeps_the_previous_report(study, monkeypatch):
    import cxr_study.report as report
    before = sorted(p.relative_to(study) for p in (study / "report").rglob("*"))
    calls = []
    def boom(template, out, params):
        calls.append(template)
        if len(calls) == 2: raise KeyboardInterrupt
        return real(template, out, params)
    real = report._execute
    monkeypatch.setattr(report, "_execute", boom)
    with pytest.raises(KeyboardInterrupt): report.build_report(study, n_boot=50, n_perm=50, show_progress=False)
    assert sorted(p.relative_to(study) for p in (study / "report").rglob("*")) == before
    assert not list(study.glob(".report-*"))


def test_report_command_on_a_folder_without_runs_is_one_clear_line(tmp_path):
    from cxr_study.cli import main
    assert main(["report", "--out", str(tmp_path)]) == 2


def test_an_up_to_date_report_is_not_rebuilt(study):
    from cxr_study.report import build_report
    page = study / "report" / "index.ipynb"
    before = page.stat().st_mtime_ns
    build_report(study, html=True, n_boot=300, n_perm=300, show_progress=False)
    assert page.stat().st_mtime_ns == before
    build_report(study, html=True, n_boot=300, n_perm=300, show_progress=False, force=True)
    assert page.stat().st_mtime_ns != before
