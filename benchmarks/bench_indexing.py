"""How long indexing a CheXpert-sized label CSV takes.

Writes a train.csv in CheXpert's exact column layout with as many rows as the published train set
(223,414 by default; label values drawn with the published Cardiomegaly frequencies), then times
`index_chexpert` on it, then the whole `prepare --index-only`. Also times NIH ChestX-ray14 (112,120 rows)
and MIMIC-CXR-JPG (377,110 images, 227,835 studies) sized label files.
Run: `python benchmarks/bench_indexing.py [n_rows]`.
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

def make_nih_csv(path: Path, n: int = 112_120, seed: int = 0) -> Path:
    "Data_Entry_2017_v2020.csv with its split bracket headers."
    rng = np.random.default_rng(seed)
    pid = np.arange(n) // 4 + 1
    f = rng.choice(["No Finding", "Cardiomegaly", "Pneumothorax", "Effusion|Cardiomegaly", "Infiltration"], n, p=[0.54, 0.02, 0.05, 0.01, 0.38])
    df = pd.DataFrame({"Image Index": [f"{p:08d}_{k % 4:03d}.png" for k, p in enumerate(pid)], "Finding Labels": f,
                       "Follow-up #": np.arange(n) % 4, "Patient ID": pid, "Patient Age": rng.integers(1, 95, n),
                       "Patient Gender": rng.choice(["M", "F"], n), "View Position": rng.choice(["PA", "AP"], n),
                       "OriginalImage[Width": 2500, "Height]": 2048, "OriginalImagePixelSpacing[x": 0.143, "y]": 0.143})
    df.to_csv(path, index=False)
    return path

def make_mimic(root: Path, n_images: int = 377_110, n_studies: int = 227_835, seed: int = 0) -> Path:
    "mimic-cxr-2.0.0-{chexpert,metadata,split}.csv.gz at MIMIC's size."
    rng = np.random.default_rng(seed)
    study = 50_000_000 + np.arange(n_studies); subject = 10_000_000 + np.arange(n_studies) // 3
    lab = pd.DataFrame({"subject_id": subject, "study_id": study})
    for o in CHEXPERT_OBSERVATIONS: lab[o] = rng.choice(["1.0", "0.0", "-1.0", ""], n_studies, p=[0.1, 0.1, 0.05, 0.75])
    lab.to_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", index=False)
    k = rng.integers(0, n_studies, n_images)
    dicom = [f"{i:08x}-bde0afdd-112c0b34-7bc16630-4e384014" for i in range(n_images)]
    meta = pd.DataFrame({"dicom_id": dicom, "subject_id": subject[k], "study_id": study[k], "PerformedProcedureStepDescription": "CHEST (PA AND LAT)",
                         "ViewPosition": rng.choice(["PA", "AP", "LATERAL", "LL", ""], n_images, p=[0.25, 0.38, 0.22, 0.1, 0.05]),
                         "Rows": 3056, "Columns": 2544, "StudyDate": 21800506, "StudyTime": 213014.531})
    meta.to_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", index=False)
    meta[["dicom_id", "study_id", "subject_id"]].assign(split="train").to_csv(root / "mimic-cxr-2.0.0-split.csv.gz", index=False)
    return root

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
    from cxr_study.data.mimic import index_mimic
    from cxr_study.data.nih import index_nih
    with tempfile.TemporaryDirectory() as d:
        make_nih_csv(Path(d) / "Data_Entry_2017_v2020.csv")
        t0 = time.perf_counter(); idx, _ = index_nih(d, check_files=False); t = time.perf_counter() - t0
        print(f"index_nih: {t:.2f} s -> {len(idx):,} images")
        make_mimic(Path(d))
        t0 = time.perf_counter(); idx, _ = index_mimic(d); t = time.perf_counter() - t0
        print(f"index_mimic: {t:.2f} s -> {len(idx):,} frontal images")
    return t_index

if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else N_TRAIN)
