"""Table 1 on a prepared dataset, with folds, as a dataframe and rendered."""
from __future__ import annotations

import numpy as np
import pytest

import adapter_fixtures as fx
from cxr_study.data.prepare import index_dataset
from cxr_study.data.table1 import cohort_table1, render_table1


def test_table1_on_a_prepared_siim_index(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_STUDY_PROGRESS", "0")
    e = fx.siim_dicom(tmp_path/"siim")
    idx, _ = index_dataset("siim", tmp_path/"siim", tubes=fx.siim_tubes(tmp_path, e["tube_ids"]))
    idx["fold"] = [0, 1, 0, 1]
    t = cohort_table1(idx, by="fold", edges=(0.37, 0.78, 1.66))
    assert list(t.columns) == ["0", "1", "All"]
    assert t.loc[("Images", "n"), "All"] == "4" and t.loc[("Sex", "female"), "All"] == "2 (50.0%)"
    assert t.loc[("View", "AP"), "All"] == "1 (25.0%)"
    assert t.loc[("Pneumothorax", "positive"), "All"] == "1 (25.0%)"
    assert t.loc[("Chest tube", "present"), "All"] == "1 (25.0%)"
    sec = "Chest tube present, by pneumothorax size"
    assert t.loc[(sec, "negative"), "All"] == "0/1 (0%)"              # one negative with a known (absent) tube
    assert t.loc[(sec, "Q4 (> 1.66%)"), "All"] == "1/1 (100%)"       # the positive covers > 1.66 % of its image
    md = render_table1(t)
    assert md.count("\n") == len(t) + 2 and "| Chest tube present, by pneumothorax size | negative |" in md
    assert "<table" in render_table1(t, fmt="html")
