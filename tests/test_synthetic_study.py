"""The synthetic benchmark proves data and plumbing right: on it, the best (untrained) encoder beats the
training-set prior on heart Dice and reaches a cardiomegaly AUROC well above chance."""
import pytest

from cxr_study.cli import DEMO_PROBE
from cxr_study.data.synthetic import SyntheticCfg, make_synthetic_benchmark
from cxr_study.reports.summary import summarise
from cxr_study.results import collect_results
from cxr_study.study.executors import run_grid


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from conftest import prepare_synthetic
    d = tmp_path_factory.mktemp("study")
    raw = make_synthetic_benchmark(d / "raw", SyntheticCfg(n_images=300, size=128, seed=5656))
    data = prepare_synthetic(raw, d / "prepared")
    st = run_grid(["prior", "raw-pixels", "resnet18"], ["cardiomegaly-cls", "heart-seg"], data, d / "out",
                  folds=[0, 1, 2], executor="inline", options={"probe": DEMO_PROBE}, show_progress=False)
    assert (st.status == "done").all(), st
    return summarise(collect_results(d / "out")[0]).set_index(["encoder", "task", "metric"])["median"]


def test_best_encoder_beats_the_prior_on_heart_dice(study):
    prior = study["prior", "heart-seg", "dice"]
    assert 0.6 < prior < 0.95                     # a fixed average heart already scores well
    best = max(study[e, "heart-seg", "dice"] for e in ("raw-pixels", "resnet18"))
    assert best > prior + 0.02, (best, prior)


def test_cardiomegaly_auroc_well_above_chance(study):
    assert study["prior", "cardiomegaly-cls", "auroc"] == 0.5
    assert max(study[e, "cardiomegaly-cls", "auroc"] for e in ("raw-pixels", "resnet18")) > 0.8
