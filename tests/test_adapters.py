"""Every registered dataset adapter against a fixture tree in its real layout, through the same
`prepare` entry point the command line uses: index, verify, cache, with the expected index."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import adapter_fixtures as fx
from cxr_study.data.index import INDEX_COLUMNS, index_mask, read_index, resolve_image_path
from cxr_study.cli import add_prepare_arguments, cmd_prepare
from cxr_study.data.prepare import ADAPTERS, index_dataset
from cxr_study.data.readers import read_image


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("CXR_STUDY_PROGRESS", "0")


def parse(*argv):
    p = argparse.ArgumentParser(prog="cxr-study prepare")
    add_prepare_arguments(p)
    return p.parse_args([str(a) for a in argv])


def prepare(*argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        rc = cmd_prepare(parse(*argv))
    return rc, out.getvalue()


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_every_adapter_prepares_its_fixture(name, tmp_path):
    "Contract over the registry: index + verify + cache a fixture tree; the cache and masks line up."
    if name == "synthetic": pytest.importorskip("cxr_study.data.synthetic")
    assert name in fx.BUILDERS, f"adapter {name!r} is registered but has no fixture tree in tests/adapter_fixtures.py"
    root = tmp_path/name
    expect = fx.BUILDERS[name](root)
    rc, log = prepare(name, "--root", root, "--out", tmp_path/"out", "--verify", "--image-size", 16, "--workers", 1, *fx.EXTRA_ARGS.get(name, []))
    assert rc == 0, log
    idx = read_index(tmp_path/"out"/"index.parquet")
    assert list(idx.columns[:len(INDEX_COLUMNS)]) == list(INDEX_COLUMNS)
    assert len(idx) == expect["n"]
    assert idx["image_id"].is_unique and idx["patient_id"].notna().all()
    src = read_index(tmp_path/"out"/"source_index.parquet")
    assert all(Path(p).is_absolute() and Path(p).exists() for p in src["image_path"])
    for _, row in idx.iterrows():
        x = read_image(resolve_image_path(tmp_path/"out"/"index.parquet", row["image_path"]))
        assert x.shape == (16, 16)
        for t in ("pneumothorax", "heart"):
            m = index_mask(row, t)
            if m is not None: assert m.shape == x.shape
    for col in ("pneumothorax", "cardiomegaly"):
        for iid, v in expect.get(col, {}).items():
            got = idx.set_index("image_id").loc[iid, col]
            assert (np.isnan(v) and np.isnan(got)) or got == v, (col, iid, got, v)
    meta = json.loads((tmp_path/"out"/"prepare.json").read_text())
    assert meta["images"] == expect["n"] and meta["dataset"] == name
    assert "positive" in log and "no problems" in log, log


def test_siim_dicom_layout(tmp_path):
    "Several RLE rows merge into one mask, in the image's orientation; -1 and ' -1' are negatives; DICOM tags read."
    e = fx.siim_dicom(tmp_path)
    idx, problems = index_dataset("siim", tmp_path)
    assert problems == []
    i = idx.set_index("image_id", drop=False)
    pos = "1.2.276.0.7230010.3.1.4.1"
    assert np.array_equal(index_mask(i.loc[pos], "pneumothorax"), e["mask"][pos])
    assert i.loc[pos, ["sex", "age", "view"]].tolist() == ["F", 38, "PA"]
    assert i.loc["1.2.276.0.7230010.3.1.4.2", "view"] == "AP"
    assert i["pneumothorax"].tolist()[:3] == [1.0, 0.0, 0.0] and np.isnan(i["pneumothorax"].iloc[3])
    assert i.loc[pos, "ptx_size_pct"] == pytest.approx(100 * e["mask"][pos].sum() / 32**2)
    assert i.loc[pos, "ptx_size_quartile"] in (1.0, 2.0, 3.0, 4.0)


def test_siim_with_chest_tubes_and_cache_alignment(tmp_path):
    e = fx.siim_dicom(tmp_path/"siim")
    tubes = fx.siim_tubes(tmp_path, e["tube_ids"])
    rc, log = prepare("siim", "--root", tmp_path/"siim", "--out", tmp_path/"out", "--tubes", tubes, "--image-size", 16, "--workers", 1)
    assert rc == 0, log
    idx = read_index(tmp_path/"out"/"index.parquet").set_index("image_id", drop=False)
    assert idx["chest_tube"].tolist()[:2] == [1.0, 0.0] and idx["chest_tube"].iloc[2:].isna().all()
    pos = "1.2.276.0.7230010.3.1.4.1"
    assert np.array_equal(index_mask(idx.loc[pos], "pneumothorax"), e["mask"][pos].reshape(16, 2, 16, 2).mean((1, 3)) >= 0.5)


def test_siim_png_layout(tmp_path):
    e = fx.siim_png(tmp_path)
    idx, problems = index_dataset("siim-png", tmp_path, workers=1)
    assert problems == []
    i = idx.set_index("image_id", drop=False)
    for iid, m in e["mask"].items(): assert np.array_equal(index_mask(i.loc[iid], "pneumothorax"), m)
    assert i["pneumothorax"].to_dict() == e["pneumothorax"]


def test_chexpert_with_chexmask(tmp_path):
    "CheXmask's CheXpert CSV names images by Path (train/patient.../view1_frontal.jpg) at the original resolution."
    e = fx.chexpert(tmp_path/"CheXpert-v1.0-small")
    heart = fx.heart_mask(64, 80)                                      # original resolution: 2x the small image, same aspect
    cm = fx.chexmask_csv(tmp_path/"CheXpert.csv", "Path", [(e["heart_id"], 0.83, heart), ("train/patient00002/study1/view1_frontal.jpg", 0.41, heart)])
    idx, problems = index_dataset("chexpert", tmp_path/"CheXpert-v1.0-small", chexmask=cm)
    assert problems == []
    i = idx.set_index("image_id", drop=False)
    assert {k: i.loc[k, "cardiomegaly"] for k in e["cardiomegaly_zeros"]} == e["cardiomegaly_zeros"]
    assert np.isnan(i.loc["train/patient00004/study1/view1_frontal.jpg", "cardiomegaly"])   # blank: not mentioned
    assert i.loc[e["heart_id"], ["heart_mask_height", "heart_mask_width"]].tolist() == [64.0, 80.0]
    assert np.array_equal(index_mask(i.loc[e["heart_id"]], "heart"), heart)   # decodes at the listed size
    assert i["heart_mask"].notna().sum() == 1                                # 0.41 < 0.7
    assert i.loc[e["heart_id"], "patient_id"] == "patient00001" and i.loc[e["heart_id"], "study_id"] == "patient00001/study1"
    rc, log = prepare("chexpert", "--root", tmp_path/"CheXpert-v1.0-small", "--out", tmp_path/"out", "--chexmask", cm,
                      "--image-size", 0, "--verify", "--workers", 1, "--uncertain", "ignore")
    assert rc == 0, log
    c = read_index(tmp_path/"out"/"index.parquet").set_index("image_id", drop=False)
    assert np.isnan(c.loc["train/patient00002/study1/view1_frontal.jpg", "cardiomegaly"])   # -1 ignored
    assert np.array_equal(index_mask(c.loc[e["heart_id"]], "heart"), heart[::2, ::2])       # resized to the 32x40 image
    assert len(idx[idx.view == "LATERAL"]) == 0


def test_mimic_with_chexmask(tmp_path):
    e = fx.mimic(tmp_path)
    cm = fx.chexmask_csv(tmp_path/"MIMIC-CXR-JPG.csv", "dicom_id", [(e["heart_id"], 0.9, fx.heart_mask(32, 32))])
    idx, problems = index_dataset("mimic", tmp_path, chexmask=cm)
    assert problems == []
    i = idx.set_index("image_id", drop=False)
    for col in ("cardiomegaly", "pneumothorax"):
        for k, v in e[col].items(): assert (np.isnan(v) and np.isnan(i.loc[k, col])) or i.loc[k, col] == v
    assert i.loc[e["heart_id"], "heart_mask"] == fx.chexmask_rle_encode(fx.heart_mask(32, 32))
    assert Path(i.loc[e["heart_id"], "image_path"]).parts[-4:-1] == ("p10", "p10000032", "s50414267")
    assert i["split"].tolist() == ["train", "train", "test"]
    assert len(index_dataset("mimic", tmp_path, labeler="negbio", all_views=True)[0]) == 4
    fx._gz(tmp_path/"patients.csv.gz", "subject_id,gender,anchor_age,anchor_year,anchor_year_group,dod\n10000032,F,52,2180,2014 - 2016,\n10000764,M,76,2178,2011 - 2013,\n")
    i = index_dataset("mimic", tmp_path, mimic_patients=tmp_path/"patients.csv.gz")[0].set_index("image_id")
    assert i["sex"].tolist() == ["F", "F", "M"] and i["age"].tolist() == [52.0, 52.0, 78.0]


def test_nih_with_chexmask(tmp_path):
    e = fx.nih(tmp_path)
    cm = fx.chexmask_csv(tmp_path/"ChestX-Ray8.csv", "Image Index", [(e["heart_id"], 0.88, fx.heart_mask(32, 32))])
    idx, problems = index_dataset("nih", tmp_path, chexmask=cm)
    assert problems == []
    i = idx.set_index("image_id", drop=False)
    assert i["cardiomegaly"].to_dict() == e["cardiomegaly"]
    assert i.loc["00000003_000.png", "pneumothorax"] == 1.0 and i["pneumothorax"].sum() == 1
    assert i.loc["00000001_001.png", ["original_width", "original_height", "follow_up"]].tolist() == [2894.0, 2729.0, 1.0]
    assert i.loc["00000003_000.png", ["sex", "age", "view", "split"]].tolist() == ["F", 74.0, "AP", "test"]
    assert i.loc[e["heart_id"], "heart_mask"] == fx.chexmask_rle_encode(fx.heart_mask(32, 32))


def test_prepare_help_lists_every_adapter():
    p = argparse.ArgumentParser(prog="cxr-study prepare")
    add_prepare_arguments(p)
    h = p.format_help()
    for name in ADAPTERS: assert name in h
    for opt in ("--uncertain", "--min-dice-rca", "--tubes", "--workers", "--verify", "--image-size"): assert opt in h


def test_cmd_prepare_tolerates_extra_cli_attributes(tmp_path, monkeypatch):
    "The CLI may add its own attributes (a handler, a subcommand name): prepare ignores them; prepare.json records the prepare options."
    monkeypatch.setenv("CXR_STUDY_PROGRESS", "0")
    fx.nih(tmp_path/"nih")
    args = parse("nih", "--root", tmp_path/"nih", "--out", tmp_path/"out", "--index-only", "--min-dice-rca", 0.8)
    args.handler, args.subcommand = cmd_prepare, "prepare"
    with contextlib.redirect_stdout(io.StringIO()): assert cmd_prepare(args) == 0
    opts = json.loads((tmp_path/"out"/"prepare.json").read_text())["options"]
    assert "subcommand" not in opts and "handler" not in opts
    assert opts["min_dice_rca"] == 0.8 and opts["uncertain"] == "zeros" and opts["tube_col"] == "ChestTube"   # given, and the flags' defaults
