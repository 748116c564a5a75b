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
    "Two references and two candidate encoders on the four tasks over the five folds, then its report with the HTML site."
    from cxr_study.cli import DEMO_PROBE
    from cxr_study.reports.report import build_report
    from cxr_study.study.executors import run_grid
    out = tmp_path_factory.mktemp("study")
    st = run_grid(["prior", "raw-pixels", "resnet18", "vit-small-patch16-224"], TASKS, tiny_benchmark, out, executor="inline",
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
    for page in ["index", "cohorts", "comparisons", "shortcut", "published", "runs"]:
        nb = json.loads((rep / f"{page}.ipynb").read_text())
        assert not [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"], page
    for name in ["summary", "main_results", "paper_comparison", "paper_results", "paper_subgroups", "friedman", "nemenyi", "mean_ranks",
                 "rank_summary", "paired_vs_best", "above_floor", "all_pairs", "dice_model", "baseline_vs_best", "lp_vs_ft", "shortcut",
                 "subgroups", "runs", "encoders", "not_in_run", "study_facts", *[f"table1_{t}" for t in TASKS]]:
        assert (rep / "tables" / f"{name}.csv").exists(), name
    figs = sorted(p.name for p in (rep / "figures").glob("*.png"))
    assert "main_results.png" in figs and "paper_results.png" in figs and "forest_vs_best_linear-probe.png" in figs
    assert any(f.startswith("floor_") for f in figs) and any(f.startswith("subgroups_") for f in figs)
    assert not any(f.startswith("cd_") for f in figs)  # two candidates: no Friedman test, no critical-difference diagram
    sc = table(study, "shortcut")
    assert ("tube_effects.png" in figs) == bool(sc.estimate.notna().any())
    assert (sc.estimate.notna() | sc.reason.notna()).all(), "a missing estimate says why"
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


def test_friedman_runs_over_candidates_only_and_holm_equals_statsmodels(study):
    fr = table(study, "friedman")
    assert set(fr.models) == {"ResNet-18 (untrained), ViT-S/16 (untrained)"}  # the references never compete
    assert fr.p.isna().all() and fr.reason.str.contains("needs 3 candidates").all()
    for name, by in (("paired_vs_best", ["task", "protocol", "metric"]), ("above_floor", ["task", "protocol"])):
        t = table(study, name)
        assert len(t)
        for _, fam in t.groupby(by): assert fam.p_holm.to_numpy() == pytest.approx(multipletests(fam.p, method="holm")[1])
    ap = table(study, "all_pairs")
    for _, fam in ap.groupby(["task", "protocol"]): assert fam.p_bh.to_numpy() == pytest.approx(multipletests(fam.p, method="fdr_bh")[1])


LABELS = {"prior": "prior (reference)", "raw-pixels": "raw pixels (reference)", "resnet18": "ResNet-18 (untrained)",
          "vit-small-patch16-224": "ViT-S/16 (untrained)"}


def test_paired_auroc_rows_are_clustered_delong_on_the_run_files(study):
    from cxr_study.stats.paired import delong_test
    res, pred = runs(study)
    enc = {v: k for k, v in LABELS.items()}
    checked = 0
    for name, other in (("paired_vs_best", "best"), ("above_floor", "reference")):
        t = table(study, name)
        for _, r in t[t.metric == "auroc"].iterrows():
            p = pred[pred.task == r.task]
            a = p[p.encoder == enc[r.model]].set_index("image_id")
            b = p[p.encoder == enc[r[other]]].set_index("image_id").loc[a.index]
            d = delong_test(a.y_true.to_numpy(), a.y_score.to_numpy(), b.y_score.to_numpy(), clusters=a.patient_id.to_numpy())
            assert r.estimate_a == pytest.approx(roc_auc_score(a.y_true, a.y_score))
            assert r.p == pytest.approx(d.p) and r["diff"] == pytest.approx(d.diff); checked += 1
    assert checked == 2 + 2 * 2 * 2


def test_shortcut_rows_equal_direct_computation_and_a_statsmodels_gee(study):
    import statsmodels.api as sm
    import statsmodels.formula.api as smf
    res, pred = runs(study)
    sc = table(study, "shortcut")
    assert set(sc.encoder) == {"raw-pixels", "resnet18", "vit-small-patch16-224"}  # not the prior, which detects nothing
    checked = 0
    for _, r in sc[sc.task == "pneumothorax-cls"].iterrows():
        p = pred[(pred.encoder == r.encoder) & (pred.task == r.task) & (pred.y_true == 1) & pred.chest_tube.notna() & pred.ptx_size_pct.notna()]
        q = p[p.ptx_size_quartile == 1]
        for tube, col in ((1, "q_with_tube"), (0, "q_without_tube")):
            want = (q[q.chest_tube == tube].y_score >= 0.5).mean() if (q.chest_tube == tube).any() else np.nan
            assert r[col] == pytest.approx(want, nan_ok=True)
        if pd.isna(r.estimate): assert r.reason; continue
        g = p.assign(detected=(p.y_score >= 0.5).astype(float), log_size=np.log(p.ptx_size_pct))
        fit = smf.gee("detected ~ chest_tube + log_size + C(fold)", groups="patient_id", data=g, family=sm.families.Gaussian(),
                      cov_struct=sm.cov_struct.Independence()).fit()
        assert r.estimate == pytest.approx(fit.params["chest_tube"], abs=1e-8) and r.p == pytest.approx(fit.pvalues["chest_tube"], rel=1e-6)
        checked += 1
    assert checked
    tested = sc[sc.p.notna()]
    assert tested.p_holm.to_numpy() == pytest.approx(multipletests(tested.p, method="holm")[1])
    assert (sc.flagged == ((sc.p_holm < 0.05) & (sc.estimate > 0))).all()


def test_site_renders_in_chromium_with_every_image(study):
    html = study / "report" / "html"
    assert (html / "index.html").exists()
    assert browse_site(html) == []


def test_interrupted_rebuild_keeps_the_previous_report(study, monkeypatch):
    import cxr_study.reports.report as report
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
    from cxr_study.reports.report import build_report
    page = study / "report" / "index.ipynb"
    before = page.stat().st_mtime_ns
    build_report(study, html=True, n_boot=300, n_perm=300, show_progress=False)
    assert page.stat().st_mtime_ns == before
    build_report(study, html=True, n_boot=300, n_perm=300, show_progress=False, force=True)
    assert page.stat().st_mtime_ns != before
