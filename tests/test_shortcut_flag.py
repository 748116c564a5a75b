"""The synthetic benchmark's planted chest-tube shortcut is caught by `shortcut_analysis`.

A small benchmark (300 images at 64 px, raw-pixel features, linear probe, all five folds) is built twice
with the same seed: with `shortcut=1` (tubes in 75 % of pneumothoraces, 11 % of the others) and with
`shortcut=0` (tubes in the same overall share of images, independent of the label).

- `shortcut=1`: in the smallest pneumothorax-size quartile, sensitivity with a tube is far above
  sensitivity without one (about 0.96 vs 0.08 here) and the analysis flags pneumothorax classification.
- `shortcut=0`: the two sensitivities are close (about 0.53 vs 0.60) and nothing is flagged.

The flag is a two-sided Fisher exact test at 5 % plus "sensitivity higher with a tube". At
`shortcut=0` the tube cannot tell pneumothorax from no pneumothorax, so "not flagged" is a null
hypothesis that can fail by chance. If detection in the smallest quartile were independent of the tube,
the exact chance of a flag for this seed's group sizes (17 with a tube, 20 without) is at most 2.1 %,
whatever the common sensitivity. The chance that the two-sided test rejects in either direction is at
most 4.0 %. The seed is fixed, so the test is deterministic. Across 21 generator seeds, the flag was
raised at `shortcut=1` every time (Fisher p < 0.02, difference 0.46 to 1.0) and never at `shortcut=0`.

At this size, neither raw pixels nor a randomly initialised CNN detects the synthetic pneumothorax itself
(AUROC about 0.5 within the tube and no-tube images). The probe's output still moves with the high-contrast
tube, by a random amount and in a random direction. So at `shortcut=0` the difference is noise around 0
that is wider than pure binomial noise: 3 of the 21 seeds gave a two-sided p < 0.05, all with lower
sensitivity when a tube was present. The untrained ResNet-18 reacts to the tube more strongly and is
flagged at `shortcut=0` for some seeds. That is why only raw pixels are tested here.
"""
import pytest

from cxr_study.cli import DEMO_PROBE
from cxr_study.data.synthetic import SyntheticCfg, make_synthetic_benchmark
from cxr_study.results import collect_results
from cxr_study.stats.subgroups import shortcut_analysis, shortcut_test
from cxr_study.study.executors import run_grid

SEED = 14  # generator seed, the same at both shortcut strengths
ENCODER, TASK = "raw-pixels", "pneumothorax-cls"


@pytest.fixture(scope="module")
def shortcut_rows(tmp_path_factory):
    "shortcut strength -> (the `shortcut_analysis` row of raw pixels on pneumothorax classification, ground truth, the `shortcut_test` row)."
    import pandas as pd
    from conftest import prepare_synthetic
    rows = {}
    for strength in (1.0, 0.0):
        d = tmp_path_factory.mktemp(f"shortcut{strength:g}")
        raw = make_synthetic_benchmark(d / "raw", SyntheticCfg(n_images=300, size=64, shortcut=strength, seed=SEED))
        data = prepare_synthetic(raw, d / "prepared")
        st = run_grid([ENCODER], [TASK], data, d / "out", executor="inline",
                      options={"probe": DEMO_PROBE}, show_progress=False)  # all five folds
        assert (st.status == "done").all(), st
        preds = collect_results(d / "out")[1]
        sc = shortcut_analysis(preds)
        st = shortcut_test(preds[preds.task == TASK])
        rows[strength] = (sc.set_index(["encoder", "task"]).loc[(ENCODER, TASK)], pd.read_csv(raw / "ground-truth.csv"),
                          st.set_index(["encoder", "task"]).loc[(ENCODER, TASK)])
    return rows


def test_tubes_are_planted_only_at_full_shortcut(shortcut_rows):
    tube_rate = {s: gt.groupby("pneumothorax").chest_tube.mean() for s, (_, gt, _) in shortcut_rows.items()}
    assert tube_rate[1.0][1] > 0.6 and tube_rate[1.0][0] < 0.2, tube_rate[1.0]
    assert abs(tube_rate[0.0][1] - tube_rate[0.0][0]) < 0.15, tube_rate[0.0]


def test_flagged_at_full_shortcut(shortcut_rows):
    r = shortcut_rows[1.0][0]
    assert r.measure == "sensitivity"
    assert r.n_tube >= 10 and r.n_no_tube >= 5, r     # enough small pneumothoraces on both sides
    assert r.flagged, r
    assert r.p_fisher < 0.01, r
    assert r["diff"] > 0.5, r                          # with-tube minus without-tube sensitivity


def test_not_flagged_without_shortcut(shortcut_rows):
    r = shortcut_rows[0.0][0]
    assert r.n_tube >= 10 and r.n_no_tube >= 10, r
    assert not r.flagged, r
    assert r.p_fisher >= 0.05, r                       # no significant difference in either direction
    assert abs(r["diff"]) < 0.3, r


def test_tube_effect_much_larger_with_the_shortcut(shortcut_rows):
    assert shortcut_rows[1.0][0]["diff"] - shortcut_rows[0.0][0]["diff"] > 0.5


def test_calibrated_test_flags_the_planted_shortcut(shortcut_rows):
    "The size-adjusted, patient-clustered test: sensitivity clearly higher with a tube, CI above 0, flagged."
    r = shortcut_rows[1.0][2]
    assert r.effect == "sensitivity difference" and r.n_tube >= 40, r
    assert r.flagged and r.lo > 0 and r.p < 1e-3, r


def test_calibrated_test_does_not_flag_without_the_shortcut(shortcut_rows):
    r = shortcut_rows[0.0][2]
    assert not r.flagged, r
    assert r.estimate - shortcut_rows[1.0][2].estimate < -0.2, r  # far below the planted shortcut's effect
