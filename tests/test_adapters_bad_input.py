"""Bad input is reported with its file and line, and the good rest is still indexed: unreadable
images, masks of the wrong size, duplicate ids with conflicting labels, missing columns."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import adapter_fixtures as fx
from cxr_study.data.index import read_index
from cxr_study.data.prepare import index_dataset, verify_index


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("CXR_STUDY_PROGRESS", "0")


prepare = fx.prepare


def problems_of(out: Path) -> pd.DataFrame:
    return pd.read_csv(out/"problems.csv")


def test_unreadable_images_all_reported_good_rest_cached(tmp_path):
    "Two broken files (truncated JPEG, junk PNG): both reported with reasons, the others cached."
    fx.chexpert(tmp_path/"cx")
    (tmp_path/"cx"/"train/patient00002/study1/view1_frontal.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tmp_path/"cx"/"valid/patient64541/study1/view1_frontal.jpg").unlink()
    rc, log = prepare("chexpert", "--root", tmp_path/"cx", "--out", tmp_path/"out", "--verify", "--image-size", 16, "--workers", 1)
    assert rc == 0, log
    pr = problems_of(tmp_path/"out")
    assert len(pr) == 2
    assert pr["where"].str.contains("patient00002/study1/view1_frontal.jpg").any()
    assert pr["reason"].str.contains("not a readable image").any() and pr["reason"].str.contains("not found").any()
    assert len(read_index(tmp_path/"out"/"index.parquet")) == 3
    assert "2 problem(s)" in log
    rc, _ = prepare("chexpert", "--root", tmp_path/"cx", "--out", tmp_path/"out2", "--index-only", "--verify", "--strict", "--workers", 1)
    assert rc == 1                                                      # --strict: problems make the exit code 1


def test_unreadable_dicom_header_and_pixels(tmp_path):
    fx.siim_dicom(tmp_path/"siim")
    junk = tmp_path/"siim"/"dicom-images-train"/"x"/"y"/"1.2.3.dcm"; junk.parent.mkdir(parents=True); junk.write_bytes(b"junk")
    f = sorted((tmp_path/"siim"/"dicom-images-train").rglob("*4.2.dcm"))[0]
    f.write_bytes(f.read_bytes()[:-100])                               # header fine, pixel data truncated
    idx, problems = index_dataset("siim", tmp_path/"siim")
    assert len(idx) == 4 and any("1.2.3.dcm" in w and "unreadable DICOM header" in r for w, r in problems)
    bad, pr = verify_index(idx)
    assert bad.sum() == 1 and "4.2.dcm" in pr[0][0]


def test_mask_of_wrong_size(tmp_path):
    "A PNG mask of another size than its image, and a CheXmask heart mask of another aspect ratio."
    fx.siim_png(tmp_path/"png")
    fx.save_img(tmp_path/"png"/"masks"/"1.2.3.3.png", np.zeros((16, 32), np.uint8))
    idx, problems = index_dataset("siim-png", tmp_path/"png", workers=1)
    assert len(idx) == 3 and len(problems) == 1
    assert problems[0][0].endswith("1.2.3.3.png") and "mask is 16x32 but its image" in problems[0][1]
    assert np.isnan(idx.set_index("image_id").loc["1.2.3.3", "pneumothorax"])
    e = fx.nih(tmp_path/"nih")
    cm = fx.chexmask_csv(tmp_path/"ChestX-Ray8.csv", "Image Index", [(e["heart_id"], 0.9, fx.heart_mask(32, 48)), ("00000001_000.png", 0.9, fx.heart_mask(64, 64))])
    rc, log = prepare("nih", "--root", tmp_path/"nih", "--out", tmp_path/"out", "--chexmask", cm, "--image-size", 16, "--workers", 1)
    assert rc == 0
    pr = problems_of(tmp_path/"out")
    assert len(pr) == 1 and "heart mask is 32x48 but its image is 32x32" in pr["reason"][0] and "00000002_000.png" in pr["where"][0]
    c = read_index(tmp_path/"out"/"index.parquet").set_index("image_id")
    assert np.isnan(c.loc["00000002_000.png", "heart_mask_height"]) and c.loc["00000001_000.png", "heart_mask_height"] == 16.0


def test_duplicate_ids_with_conflicting_labels(tmp_path):
    "CheXpert row repeated with another label, NIH image listed twice, tube CSV contradicting itself."
    fx.chexpert(tmp_path/"cx")
    lines = (tmp_path/"cx"/"train.csv").read_text().splitlines()
    lines.append(lines[3].replace(",-1.0,", ",1.0,", 1))                # patient00002 again, other labels (line 7)
    lines.append(lines[4])                                             # patient00003 again, same labels: harmless
    (tmp_path/"cx"/"train.csv").write_text("\n".join(lines) + "\n")
    idx, problems = index_dataset("chexpert", tmp_path/"cx")
    assert len(idx) == 4 and "train/patient00002/study1/view1_frontal.jpg" not in set(idx["image_id"])
    assert len(problems) == 1 and problems[0][0].endswith("train.csv:lines 4, 7") and "different labels" in problems[0][1]

    fx.nih(tmp_path/"nih")
    p = tmp_path/"nih"/"Data_Entry_2017_v2020.csv"
    p.write_text(p.read_text() + "00000002_000.png,Cardiomegaly,0,2,80,M,PA,2500,2048,0.171,0.171\n")
    idx, problems = index_dataset("nih", tmp_path/"nih")
    assert len(idx) == 3 and any(w.endswith("Data_Entry_2017_v2020.csv:lines 4, 6") for w, _ in problems)

    e = fx.siim_dicom(tmp_path/"siim")
    t = tmp_path/"tubes.csv"
    t.write_text(f"ImageId,ChestTube\n{e['tube_ids'][0]},present\n{e['tube_ids'][1]},absent\n{e['tube_ids'][0]},absent\n")
    idx, problems = index_dataset("siim", tmp_path/"siim", tubes=t)
    i = idx.set_index("image_id")
    assert np.isnan(i.loc[e["tube_ids"][0], "chest_tube"]) and i.loc[e["tube_ids"][1], "chest_tube"] == 0.0
    assert any(w.endswith("tubes.csv:lines 2, 4") for w, _ in problems)


@pytest.mark.parametrize("name,file,column", [
    ("chexpert", "train.csv", "Frontal/Lateral"),
    ("mimic", "mimic-cxr-2.0.0-metadata.csv.gz", "ViewPosition"),
    ("nih", "Data_Entry_2017_v2020.csv", "Finding Labels"),
    ("siim", "train-rle.csv", "EncodedPixels"),
    ("csv", "index.csv", "patient_id"),
])
def test_missing_columns_name_the_file_and_column(name, file, column, tmp_path):
    root = tmp_path/name
    fx.BUILDERS[name](root)
    df = pd.read_csv(root/file, dtype=str, keep_default_na=False)
    df.columns = [c.strip() for c in df.columns]
    df.drop(columns=[column]).to_csv(root/file, index=False)
    rc, log = prepare(name, "--root", root, "--out", tmp_path/"out", "--index-only", *fx.EXTRA_ARGS.get(name, []))
    assert rc == 2
    assert file in log and column in log and "missing column" in log


def test_missing_columns_in_annotation_files(tmp_path):
    e = fx.siim_dicom(tmp_path/"siim")
    (tmp_path/"t.csv").write_text("ImageId,Tube\n1,present\n")
    rc, log = prepare("siim", "--root", tmp_path/"siim", "--out", tmp_path/"out", "--index-only", "--tubes", tmp_path/"t.csv")
    assert rc == 2 and "t.csv" in log and "ChestTube" in log
    rc, log = prepare("siim", "--root", tmp_path/"siim", "--out", tmp_path/"out", "--index-only", "--tubes", tmp_path/"t.csv", "--tube-col", "Tube")
    assert rc == 0
    (tmp_path/"cm.csv").write_text("ImageID,Dice RCA (Mean),Heart,Height\n")
    rc, log = prepare("siim", "--root", tmp_path/"siim", "--out", tmp_path/"out", "--index-only", "--chexmask", tmp_path/"cm.csv")
    assert rc == 2 and "cm.csv" in log and "Width" in log


def test_bad_label_values_reported_with_lines(tmp_path):
    fx.chexpert(tmp_path/"cx")
    p = tmp_path/"cx"/"valid.csv"
    p.write_text(p.read_text().replace(",AP,,,1.0,", ",AP,,,yes,", 1))
    idx, problems = index_dataset("chexpert", tmp_path/"cx")
    assert len(idx) == 5
    assert len(problems) == 1 and problems[0][0].endswith("valid.csv:line 2") and "'yes'" in problems[0][1]


def test_siim_image_listed_as_negative_and_positive(tmp_path):
    "An RLE file listing one image both as -1 and with regions: that image reported and unlabelled, the rest indexed."
    e = fx.siim_dicom(tmp_path/"siim")
    p = tmp_path/"siim"/"train-rle.csv"
    p.write_text(p.read_text() + "1.2.276.0.7230010.3.1.4.1, -1\n")
    idx, problems = index_dataset("siim", tmp_path/"siim")
    i = idx.set_index("image_id")
    assert len(idx) == 4 and np.isnan(i.loc["1.2.276.0.7230010.3.1.4.1", "pneumothorax"])
    assert i.loc["1.2.276.0.7230010.3.1.4.2", "pneumothorax"] == 0.0
    assert len(problems) == 1 and problems[0][0].endswith("train-rle.csv:lines 2, 4, 6") and "both -1 and region rows" in problems[0][1]


def test_synthetic_annotations_damaged_lines_cost_only_their_own_labels(tmp_path):
    """The synthetic benchmark's label, chest-tube and CheXmask files go through the adapters' joins: a damaged
    line (an unreadable value, ids padded with spaces, a repeat that disagrees, a CheXmask row below the quality
    threshold) costs that image's label or mask only, and is reported with its line; every other label is kept."""
    root = tmp_path/"syn"
    fx.synthetic(root)
    truth = pd.read_csv(root/"ground-truth.csv", dtype={"image_id": str}).set_index("image_id")
    ids = list(truth.index)
    tubes = root/"chest-tube-labels.csv"
    rows = tubes.read_text().splitlines()
    rows[2] = f"{ids[1]},maybe"                                            # unreadable value (line 3)
    rows[3] = f"  {ids[2]}  ,{truth.loc[ids[2], 'chest_tube']}"           # id padded with spaces: still matched
    rows.append(f"{ids[4]},{1 - truth.loc[ids[4], 'chest_tube']}")        # ids[4] again, other value (line 10)
    tubes.write_text("\n".join(rows) + "\n")
    cm = pd.read_csv(root/"chexmask-synthetic.csv", dtype=str, keep_default_na=False)
    cm.loc[5, "Dice RCA (Mean)"] = "0.5"                                   # below 0.7: no heart mask for ids[5]
    cm.to_csv(root/"chexmask-synthetic.csv", index=False)
    labels = root/"cardiomegaly-labels.csv"
    lab = labels.read_text().splitlines()
    lab[7] = lab[7].replace(f",{truth.loc[ids[6], 'cardiomegaly']},", ",yes,", 1)   # 'yes' reads as 1
    labels.write_text("\n".join(lab) + "\n")
    idx, problems = index_dataset("synthetic", root)
    i = idx.set_index("image_id")
    assert np.isnan(i.loc[ids[1], "chest_tube"]) and np.isnan(i.loc[ids[4], "chest_tube"])
    keep = [k for k in ids if k not in (ids[1], ids[4])]
    assert i.loc[keep, "chest_tube"].tolist() == truth.loc[keep, "chest_tube"].astype(float).tolist()
    assert i.loc[ids[6], "cardiomegaly"] == 1.0
    others = [k for k in ids if k != ids[6]]
    assert i.loc[others, "cardiomegaly"].tolist() == truth.loc[others, "cardiomegaly"].astype(float).tolist()
    assert i["heart_mask"].isna().tolist() == [k == ids[5] for k in i.index]
    where = {w.rsplit(":", 1)[-1]: r for w, r in problems}
    assert len(problems) == 2, problems
    assert "maybe" in where["line 3"] and "different ChestTube" in where["lines 6, 10"]


def test_synthetic_tube_csv_with_a_lost_line_end_is_refused_with_its_line(tmp_path):
    "Two tube rows run together (a lost line end): refused, naming the line, rather than read shifted into other images' labels."
    root = tmp_path/"syn"
    fx.synthetic(root)
    tubes = root/"chest-tube-labels.csv"
    rows = tubes.read_text().splitlines()
    rows[2:4] = [rows[2] + rows[3]]
    tubes.write_text("\n".join(rows) + "\n")
    rc, log = prepare("synthetic", "--root", root, "--out", tmp_path/"out", "--index-only")
    assert rc == 2 and "chest-tube-labels.csv:line 3" in log and "more fields than the header" in log, log
