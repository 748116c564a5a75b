"""How long indexing a CheXpert-sized label CSV takes.

Writes a train.csv in CheXpert's exact column layout with as many rows as the published train set
(223,414 by default; label values drawn with the published Cardiomegaly frequencies), then times
`index_chexpert` on it. Run: `python benchmarks/bench_indexing.py [n_rows]`.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_study.data.chexpert import CHEXPERT_COLUMNS, CHEXPERT_OBSERVATIONS, index_chexpert

N_TRAIN = 223_414

def make_chexpert_csv(path: Path, n: int = N_TRAIN, seed: int = 0) -> Path:
    "Write a CheXpert-layout train.csv with `n` rows (about 5 images per patient, a third lateral)."
    rng = np.random.default_rng(seed)
    patient = np.arange(n) // 5 + 1
    study = (np.arange(n) % 5) // 2 + 1
    view = np.arange(n) % 2 + 1
    lateral = rng.random(n) < 0.15
    kind = np.where(lateral, "lateral", "frontal")
    paths = pd.Series([f"CheXpert-v1.0-small/train/patient{p:05d}/study{s}/view{v}_{k}.jpg"
                       for p, s, v, k in zip(patient, study, view, kind)])
    df = pd.DataFrame({"Path": paths,
                       "Sex": rng.choice(["Male", "Female", "Unknown"], n, p=[0.59, 0.409, 0.001]),
                       "Age": rng.integers(18, 91, n),
                       "Frontal/Lateral": np.where(lateral, "Lateral", "Frontal"),
                       "AP/PA": np.where(lateral, "", rng.choice(["AP", "PA"], n, p=[0.8, 0.2]))})
    # Cardiomegaly in the published train CSV: 27,000 1.0, 11,116 0.0, 8,087 -1.0, 177,211 blank
    freq = np.array([27_000, 11_116, 8_087, 177_211], float)
    for o in CHEXPERT_OBSERVATIONS:
        df[o] = rng.choice(["1.0", "0.0", "-1.0", ""], n, p=freq / freq.sum())
    df = df[list(CHEXPERT_COLUMNS)]
    df.to_csv(path, index=False)
    return path

def main(n: int = N_TRAIN) -> float:
    import argparse, contextlib, io, os
    from cxr_study.data.prepare import add_prepare_arguments, run_prepare
    os.environ.setdefault("CXR_STUDY_PROGRESS", "0")
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter(); make_chexpert_csv(Path(d) / "train.csv", n); t_write = time.perf_counter() - t0
        t0 = time.perf_counter(); idx, problems = index_chexpert(d); t_index = time.perf_counter() - t0
        p = argparse.ArgumentParser(); add_prepare_arguments(p)
        args = p.parse_args(["chexpert", "--root", d, "--out", str(Path(d) / "out"), "--index-only", "--all-views"])
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()): rc = run_prepare(args)
        t_prepare = time.perf_counter() - t0
    print(f"wrote {n:,} rows in {t_write:.1f} s")
    print(f"index_chexpert: {t_index:.2f} s -> {len(idx):,} frontal images, {idx['patient_id'].nunique():,} patients, {len(problems)} problems")
    print(f"prepare chexpert --index-only --all-views (index {n:,} rows + write parquet): {t_prepare:.2f} s, exit code {rc}")
    return t_index

if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else N_TRAIN)
