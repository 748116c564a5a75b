"End-to-end runs of the command line: the demo, resuming, and clear errors on bad input."
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

CLI = str(Path(sys.executable).parent / "cxr-study")


def cxr_study(*args, cwd=None):
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "CXR_STUDY_PROGRESS": "0"})


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    r = cxr_study("demo", "--out", out, "--n-images", 80, "--size", 64, "--folds", 0, 1, "--encoders", "raw-pixels")
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r


def test_demo_writes_every_output(demo):
    out, r = demo
    res = pd.read_csv(out / "results.csv")
    # prior and raw pixels x four tasks x two folds, one row each
    assert len(res) == 2 * 4 * 2
    assert set(res.task) == {"pneumothorax-cls", "cardiomegaly-cls", "pneumothorax-seg", "heart-seg"}
    assert all(sorted(g) == [0, 1] for _, g in res.groupby(["encoder", "task"]).fold)
    pred = pd.read_parquet(out / "predictions.parquet")
    assert {"image_id", "patient_id", "chest_tube", "fold", "encoder", "task"} <= set(pred.columns)
    assert pred.groupby(["encoder", "task", "fold"]).image_id.apply(lambda s: s.is_unique).all()
    summary = (out / "summary.md").read_text()
    for col in ["Pneumothorax (cls) AUROC", "Cardiomegaly (cls) AUROC", "Pneumothorax (seg) Dice", "Heart (seg) Dice"]:
        assert col in summary
    assert "prior (reference)" in summary and "raw pixels (reference)" in summary
    assert (out / "figures" / "summary.png").stat().st_size > 1000
    # each run went through the papermill template and kept its executed notebook
    nbs = list((out / "runs").glob("*/*/*/experiment.ipynb"))
    assert len(nbs) == 8
    assert "Pneumothorax (cls) AUROC" in r.stdout


def test_demo_ends_with_the_report_and_its_site(demo):
    from site_browser import browse_site
    out, r = demo
    rep = out / "report"
    for name in ["friedman", "nemenyi", "paired_vs_best", "shortcut", "tube_models", "subgroups", "main_results"]:
        assert (rep / "tables" / f"{name}.csv").exists(), name
    assert (rep / "_quarto.yml").exists() and (rep / "html" / "index.html").exists()
    # the executed experiment notebooks are pages of the site, linked from the runs page
    assert len(list((rep / "html" / "runs").glob("*/*/*/experiment.html"))) == 8
    assert "report:" in r.stdout and "quarto render" in r.stdout
    assert browse_site(rep / "html") == []


def test_demo_resumes_without_recomputing(demo):
    out, _ = demo
    before = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/*/*/run.json")}
    r = cxr_study("demo", "--out", out, "--n-images", 80, "--size", 64, "--folds", 0, 1, "--encoders", "raw-pixels")
    assert r.returncode == 0, r.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_unknown_encoder_is_one_clear_line(tiny_benchmark, tmp_path):
    r = cxr_study("run", "--encoder", "resnet_18", "--task", "heart-seg", "--data", tiny_benchmark, "--out", tmp_path)
    assert r.returncode == 2
    assert r.stderr.startswith("error: unknown encoder 'resnet_18'. Did you mean resnet18")
    assert "Traceback" not in r.stderr


def _prepared_copy(tiny_raw, tmp_path):
    from conftest import prepare_synthetic
    raw = tmp_path / "raw"
    shutil.copytree(tiny_raw, raw)
    return raw, prepare_synthetic(raw, tmp_path / "prepared")


def test_missing_dicom_names_the_file_and_leaves_nothing_complete(tiny_raw, tmp_path):
    raw, data = _prepared_copy(tiny_raw, tmp_path)
    victim = next((raw / "dicom-images-train").rglob("*.dcm"))
    victim.unlink()
    r = cxr_study("run", "--encoder", "raw-pixels", "--task", "cardiomegaly-cls", "--data", data, "--out", tmp_path / "out")
    assert r.returncode == 2 and victim.name in r.stderr and "not found" in r.stderr
    assert not list((tmp_path / "out").rglob("run.json"))
    assert not list((tmp_path / "out").rglob("meta.json"))  # no feature-cache entry marked complete


def test_corrupt_dicom_names_the_file(tiny_raw, tmp_path):
    raw, data = _prepared_copy(tiny_raw, tmp_path)
    victim = next((raw / "dicom-images-train").rglob("*.dcm"))
    victim.write_bytes(victim.read_bytes()[:200])
    r = cxr_study("run", "--encoder", "raw-pixels", "--task", "cardiomegaly-cls", "--data", data, "--out", tmp_path / "out")
    assert r.returncode == 2 and victim.name in r.stderr
    assert not list((tmp_path / "out").rglob("run.json"))


def test_label_csv_without_expected_columns(tmp_path):
    raw = tmp_path / "syn"
    assert cxr_study("synthetic", "--out", raw, "--n-images", 12, "--size", 32).returncode == 0
    labels = raw / "cardiomegaly-labels.csv"
    labels.write_text(labels.read_text().replace("Cardiomegaly", "Cardio", 1))
    r = cxr_study("prepare", "synthetic", "--root", raw, "--out", tmp_path / "prep", "--index-only")
    assert r.returncode == 2
    assert "cardiomegaly-labels.csv" in r.stderr and "missing column(s) ['Cardiomegaly']" in r.stderr
    assert not (tmp_path / "prep" / "index.parquet").exists()


def test_rle_that_does_not_fit_is_reported_with_its_image(tmp_path):
    raw = tmp_path / "syn"
    assert cxr_study("synthetic", "--out", raw, "--n-images", 12, "--size", 32).returncode == 0
    rle = raw / "train-rle.csv"
    lines = rle.read_text().splitlines()
    image = lines[1].split(",")[0]
    lines[1] = f"{image}, 5000 10"
    rle.write_text("\n".join(lines) + "\n")
    r = cxr_study("prepare", "synthetic", "--root", raw, "--out", tmp_path / "prep", "--index-only")
    assert r.returncode == 0, r.stderr
    said = r.stdout + r.stderr
    assert f"image {image}" in said and "RLE does not fit its image" in said and "train-rle.csv" in said
    idx = pd.read_parquet(tmp_path / "prep" / "index.parquet").set_index("image_id")
    assert pd.isna(idx.loc[image, "pneumothorax"])  # left unknown, the rest indexed
    assert idx.drop(index=image).pneumothorax.notna().all()
