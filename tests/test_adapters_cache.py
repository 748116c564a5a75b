"""The preprocessed image cache: parallel, resumable, atomic, masks aligned."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import adapter_fixtures as fx
from cxr_study.data.index import index_mask
from cxr_study.data.prepare import build_image_cache, cache_name, index_dataset
from cxr_study.data.readers import read_png


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("CXR_STUDY_PROGRESS", "0")


def test_parallel_cache_is_resumable(tmp_path):
    e = fx.siim_dicom(tmp_path/"siim")
    idx, _ = index_dataset("siim", tmp_path/"siim")
    cached, problems = build_image_cache(idx, tmp_path/"out", image_size=16, workers=2)
    assert problems == [] and cached.attrs["cache"] == {"written": 4, "skipped": 0}
    files = sorted((tmp_path/"out"/"images_16").iterdir())
    assert len(files) == 4 and all(f.suffix == ".png" for f in files)
    # an interrupted run: one output missing, a temporary file left behind by a killed writer
    victim = tmp_path/"out"/cached["image_path"][1]
    victim.unlink()
    (victim.parent/f".{victim.name}.abc.tmp").write_bytes(b"partial")
    before = {f: f.stat().st_mtime_ns for f in (tmp_path/"out"/"images_16").glob("*.png")}
    again, problems = build_image_cache(idx, tmp_path/"out", image_size=16, workers=2)
    assert problems == [] and again.attrs["cache"] == {"written": 1, "skipped": 3}
    assert all(f.stat().st_mtime_ns == t for f, t in before.items())   # finished files untouched
    assert again["pneumothorax_mask"].tolist() == cached["pneumothorax_mask"].tolist()
    pos = "1.2.276.0.7230010.3.1.4.1"
    row = again.set_index("image_id", drop=False).loc[pos]
    x = read_png(tmp_path/"out"/row["image_path"])
    m = index_mask(row, "pneumothorax")
    assert x.shape == m.shape == (16, 16)
    assert np.array_equal(m, e["mask"][pos].reshape(16, 2, 16, 2).mean((1, 3)) >= 0.5)


def test_cache_names_follow_the_source(tmp_path):
    a, b = cache_name("train/patient00001/study1/view1_frontal.jpg", "/data/a.jpg", 1024), cache_name("train/patient00001/study1/view1_frontal.jpg", "/data/b.jpg", 1024)
    assert a != b and a.startswith("train_patient00001_study1_view1_frontal.jpg-") and "/" not in a
    assert cache_name("x", "/data/a.jpg", 512) != cache_name("x", "/data/a.jpg", 1024)


def test_cached_pixels_follow_the_source(tmp_path):
    "The cache holds the min-max scaled image, resized; 8-bit PNG as the study stored it."
    fx.nih(tmp_path/"nih")
    idx, _ = index_dataset("nih", tmp_path/"nih")
    cached, _ = build_image_cache(idx.iloc[:1], tmp_path/"out", image_size=None)
    src = read_png(idx["image_path"][0]); got = read_png(tmp_path/"out"/cached["image_path"][0])
    assert got.shape == src.shape and np.abs(got - src).max() <= 1 / 255 + 1e-6
