"""A label CSV of the size of CheXpert's train set (223,414 rows) indexes with vectorised pandas.
The time is reported by benchmarks/bench_indexing.py; this test only checks that it works at scale."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from cxr_study.data.chexpert import index_chexpert

_spec = importlib.util.spec_from_file_location("bench_indexing", Path(__file__).parents[1]/"benchmarks"/"bench_indexing.py")
bench = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(bench)


def test_chexpert_sized_csv_indexes(tmp_path):
    bench.make_chexpert_csv(tmp_path/"train.csv", bench.N_TRAIN)
    idx, problems = index_chexpert(tmp_path, frontal_only=False)
    assert problems == []
    assert len(idx) == bench.N_TRAIN and idx["image_id"].is_unique
    assert idx["patient_id"].nunique() == (bench.N_TRAIN + 4) // 5
    # U-Zeros: uncertain joins the negatives; blank stays unknown (published proportions)
    c = idx["cardiomegaly"]
    assert abs((c == 1).mean() - 27_000 / 223_414) < 0.01 and abs(c.isna().mean() - 177_211 / 223_414) < 0.01
    assert abs((c == 0).mean() - (11_116 + 8_087) / 223_414) < 0.01
