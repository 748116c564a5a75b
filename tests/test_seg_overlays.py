"""Segmentation pictures are drawn from the stored predictions: one overlay's mask, decoded from the
run's stored RLE, with the true mask rebuilt here from the dataset's index, gives the Dice of the
predictions table; and the figure draws exactly that mask. Uses the small study of report_study.py."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import f1_score

from cxr_study.data.rle import chexmask_rle_decode
from report_study import built_study


@pytest.fixture(scope="module")
def study(tiny_benchmark, tmp_path_factory):
    return built_study(tiny_benchmark, tmp_path_factory)


def true_mask(index_row, target, pre, size):
    """The index's mask through a recorded preprocessing contract, with PIL: squash, or the shortest edge to
    `resize_to` then a centre crop; bilinear, kept at 0.5; then to the scoring size."""
    full = chexmask_rle_decode(index_row[f"{target}_mask"], int(index_row[f"{target}_mask_height"]), int(index_row[f"{target}_mask_width"]))
    im, (h, w), s = Image.fromarray(full.astype(np.float32), mode="F"), full.shape, pre["size"]
    if pre["resize"] == "squash": im = im.resize((s, s), Image.BILINEAR)
    else:
        short = pre.get("resize_to") or s
        nh, nw = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
        off = (lambda m: m // 2) if pre.get("crop_offset") == "floor" else (lambda m: int(round(m / 2.0)))
        left, top = off(nw - s), off(nh - s)
        im = im.resize((nw, nh), Image.BILINEAR).crop((left, top, left + s, top + s))
    if size != s: im = im.resize((size, size), Image.BILINEAR)
    return np.asarray(im) >= 0.5


@pytest.mark.parametrize("encoder", ["prior", "resnet18", "resnet18@64"])
def test_an_overlay_is_the_stored_mask(study, tiny_benchmark, encoder):
    from cxr_study.reports.overlays import overlay_cases, plot_overlays
    from cxr_study.reports.report import load_study
    from cxr_study.reports.summary import ROLES
    cases = overlay_cases(load_study(study), "heart-seg", roles=tuple(ROLES))  # the ablation variant too: its 64-px geometry
    own = cases[cases.selection == "own"]
    r = own[(own.encoder == encoder) & (own.case == "median")].iloc[0]
    run = study / "runs" / encoder / "heart-seg" / "linear-probe"
    p = pd.read_parquet(run / "predictions.parquet").set_index("image_id").loc[r.image_id]
    size = int(p.mask_size)
    pred = chexmask_rle_decode(p.pred_mask, size, size)  # the stored RLE, decoded
    # the contract the run used: the prior squashes masks to their size; an encoder's feature cache records its own
    meta = json.loads((run / "run.json").read_text())
    pre = {"size": size, "resize": "squash"} if encoder == "prior" else \
        json.loads((study / "cache" / Path(meta["features"]).name / "meta.json").read_text())["key"]["preprocess"]
    if encoder == "resnet18@64": assert pre["size"] == size == 64
    ix = pd.read_parquet(tiny_benchmark / "index.parquet").set_index("image_id").loc[r.image_id]
    dice = f1_score(true_mask(ix, "heart", pre, size).ravel(), pred.ravel())  # Dice is the F1 score of the pixels
    assert dice == pytest.approx(p.dice, abs=1e-9) and dice == pytest.approx(r.dice, abs=1e-9)
    # the figure draws that mask, in the panel of its model and case
    fig = plot_overlays(load_study(study), own)
    models, cols = list(dict.fromkeys(own.model)), list(dict.fromkeys(own.case))
    ax = fig.axes[models.index(r.model) * len(cols) + cols.index("median")]
    np.testing.assert_array_equal(~np.ma.getmaskarray(ax.images[1].get_array()), pred)
    assert ax.get_title() == f"Dice {p.dice:.2f}"


def test_cases_cover_dice_and_size(study):
    cases = pd.read_csv(study / "report" / "tables" / "overlays_heart-seg_linear-probe.csv")
    drawn = ("prior", "raw-pixels", "resnet18", "vit-small-patch16-224")  # the page draws candidates and references, not ablation variants
    assert set(cases.encoder) == set(drawn)
    pred = pd.concat([pd.read_parquet(study / "runs" / e / "heart-seg" / "linear-probe" / "predictions.parquet") for e in drawn])
    own = cases[cases.selection == "own"]
    for e, g in pred.groupby("encoder"):  # each model's own worst and best are its lowest and highest Dice
        mine = own[own.encoder == e].set_index("case").dice
        assert mine["worst"] == pytest.approx(g.dice.min()) and mine["best"] == pytest.approx(g.dice.max())
        assert g.dice.min() <= mine["median"] <= g.dice.max()
    shared = cases[cases.selection == "shared"]
    assert (shared.groupby("case").image_id.nunique() == 1).all()  # one image per column, for every model
    mean = pred.groupby("image_id").dice.mean()
    per_case = shared.drop_duplicates("case").set_index("case").image_id
    assert mean[per_case["worst"]] == pytest.approx(mean.min()) and mean[per_case["best"]] == pytest.approx(mean.max())
    area = pred.groupby("image_id").gt_area_pct.first()
    q = [area[per_case[c]] for c in ("size Q1 (smallest)", "size Q2", "size Q3", "size Q4 (largest)")]
    assert q == sorted(q) and q[0] <= area.quantile(0.25) + 1e-9 and q[-1] >= area.quantile(0.75) - 1e-9
    figs = {f.name for f in (study / "report" / "figures").glob("overlays_*.png")}
    assert figs == {"overlays_heart-seg_linear-probe_shared.png", "overlays_heart-seg_linear-probe_own.png"}
