"""The ablations page of a built report: a common-resolution run (`resnet18@64`) paired with the default
run of the same encoder, their run parameters differing only by `input_size`, and the paired
difference recomputed from the run files with scikit-learn and numpy. Shares one small study with
test_calibration.py and test_seg_overlays.py (built once per test session)."""
import json

import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from report_study import built_study


@pytest.fixture(scope="module")
def study(tiny_benchmark, tmp_path_factory):
    return built_study(tiny_benchmark, tmp_path_factory)


def table(out, name):
    return pd.read_csv(out / "report" / "tables" / f"{name}.csv")


def preds(out, encoder, task):
    return pd.read_parquet(out / "runs" / encoder / task / "linear-probe" / "predictions.parquet")


def params(out, encoder, task):
    return json.loads((out / "runs" / encoder / task / "linear-probe" / "run.json").read_text())["params"]


def test_the_pair_differs_only_in_resolution(study):
    pairs = table(study, "ablation_pairs")
    cr = pairs[pairs.ablation == "common resolution"]
    assert sorted(cr.task) == ["cardiomegaly-cls", "heart-seg"]
    assert set(cr.encoder_variant) == {"resnet18@64"} and set(cr.encoder_default) == {"resnet18"}
    for task in cr.task:
        a, b = params(study, "resnet18@64", task), params(study, "resnet18", task)
        assert {k: v for k, v in a.items() if k != "input_size"} == b and a["input_size"] == 64  # the run files say so
    assert set(cr.differs) == {"input_size"} and cr.same_images.all()  # and so does the report


def test_the_report_shows_the_paired_difference(study):
    at = table(study, "ablations")
    cr = at[at.ablation == "common resolution"].set_index(["task", "metric"])
    assert set(cr.index) == {("cardiomegaly-cls", "auroc"), ("cardiomegaly-cls", "auprc"), ("heart-seg", "dice")}
    a, b = preds(study, "resnet18@64", "cardiomegaly-cls"), preds(study, "resnet18", "cardiomegaly-cls")
    m = a.merge(b, on=["fold", "image_id"], suffixes=("_a", "_b"))
    assert len(m) == len(a) == len(b) == cr.loc[("cardiomegaly-cls", "auroc"), "n"]
    want = roc_auc_score(m.y_true_a, m.y_score_a) - roc_auc_score(m.y_true_b, m.y_score_b)
    assert cr.loc[("cardiomegaly-cls", "auroc"), "diff"] == pytest.approx(want, abs=1e-12)
    a, b = preds(study, "resnet18@64", "heart-seg"), preds(study, "resnet18", "heart-seg")
    m = a.merge(b, on=["fold", "image_id"], suffixes=("_a", "_b"))
    r = cr.loc[("heart-seg", "dice")]
    assert r["diff"] == pytest.approx((m.dice_a - m.dice_b).mean(), abs=1e-12)
    assert r.lo <= r["diff"] <= r.hi and 0 <= r.p <= 1
    res = pd.read_csv(study / "runs" / "resnet18@64" / "heart-seg" / "linear-probe" / "results.csv")
    assert r.median_variant == pytest.approx(res.dice.median())
    held = table(study, "ablation_pairs")
    assert set(held.ablation) == {"common resolution"}  # nothing else is held, and the page says so:
    nb = json.loads((study / "report" / "ablations.ipynb").read_text())
    text = "".join("".join(o.get("data", {}).get("text/markdown", "")) for c in nb["cells"] for o in c.get("outputs", []))
    assert "**common resolution: held** (2 pairs of runs)" in text
    assert "**feature stride: not in this study**" in text and "**multi-scale probe: not in this study**" in text
    assert (study / "report" / "figures" / "ablation_common-resolution.png").exists()


def test_the_html_page_shows_it(study):
    html = study / "report" / "html" / "ablations.html"
    assert html.exists()
    page = html.read_text()
    assert "ResNet-18 @ 64 px (untrained)" in page and "input_size" in page
