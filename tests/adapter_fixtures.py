"""Tiny fixture trees that copy each public dataset's real layout: folder names, file names, CSV headers
(quirks included), label encodings, RLE conventions and DICOM tags. Images are 32x32 (CheXpert 32x40) so
that every test stays fast; each builder returns what the adapter is expected to produce."""
from __future__ import annotations

import argparse
import contextlib
import gzip
import io
from pathlib import Path

import numpy as np
from PIL import Image

from cxr_study.data.chexpert import CHEXPERT_COLUMNS, CHEXPERT_OBSERVATIONS
from cxr_study.cli import add_prepare_arguments, cmd_prepare
from cxr_study.data.readers import write_dicom
from cxr_study.data.rle import chexmask_rle_encode, siim_rle_encode

S = 32


def gradient(h=S, w=S, seed=0):
    "A non-constant 8-bit image (min-max scaling needs a range)."
    rng = np.random.default_rng(seed)
    return (np.add.outer(np.arange(h), np.arange(w)) * 3 % 256).astype(np.uint8) | rng.integers(0, 2, (h, w), dtype=np.uint8)


def save_img(path: Path, a: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path, **kw)
    return path


def regions():
    "Two separate, asymmetric pneumothorax regions (a transposition would be caught)."
    a = np.zeros((S, S), bool); a[2:5, 18:30] = True      # wide, top right
    b = np.zeros((S, S), bool); b[20:29, 1:3] = True      # tall, bottom left
    return a, b


# ---------------------------------------------------------------- SIIM-ACR, Kaggle DICOM layout
def jpeg_baseline(path: Path) -> Path:
    "Recompress a DICOM's pixel data as JPEG Baseline (1.2.840.10008.1.2.4.50), as the Kaggle SIIM files are."
    import io
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit
    ds = pydicom.dcmread(path)
    buf = io.BytesIO(); Image.fromarray(ds.pixel_array).save(buf, format="JPEG", quality=95)
    ds.PixelData = encapsulate([buf.getvalue()]); ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.save_as(path, enforce_file_format=True)
    return path


def siim_dicom(root: Path) -> dict:
    """dicom-images-train/<Study>/<Series>/<SOP>.dcm (CR, MONOCHROME2, 8-bit, JPEG Baseline, PatientAge a plain integer)
    and train-rle.csv with header 'ImageId, EncodedPixels'.
    1.2.276.0.7230010.3.1.4.1: positive, two RLE rows (union); ...4.2: negative '-1'; ...4.3: negative ' -1';
    ...4.4: no RLE row (label unknown)."""
    root.mkdir(parents=True, exist_ok=True)
    a, b = regions()
    base = "1.2.276.0.7230010.3.1"
    specs = [("4.1", "F", 38, "PA"), ("4.2", "M", 51, "AP"), ("4.3", "M", 64, "PA"), ("4.4", "F", 25, "PA")]
    for k, (s, sex, age, view) in enumerate(specs):
        sop = f"{base}.{s}"
        f = write_dicom(root/"dicom-images-train"/f"{base}.2.{s}"/f"{base}.3.{s}"/f"{sop}.dcm", gradient(seed=k),
                        patient_id=f"17d405a3-a0d2-4901-b33a-63906aa48d9{k}", sex=sex, age=age, view=view,
                        study_uid=f"{base}.2.{s}", series_uid=f"{base}.3.{s}", sop_uid=sop)
        if k != 3: jpeg_baseline(f)                                    # one left uncompressed: both must read
    (root/"train-rle.csv").write_text(
        "ImageId, EncodedPixels\n"
        f"{base}.4.1, {siim_rle_encode(a)}\n"
        f"{base}.4.2, -1\n"
        f"{base}.4.1, {siim_rle_encode(b)}\n"
        f"{base}.4.3,-1\n")
    return {"n": 4, "pneumothorax": {f"{base}.4.1": 1.0, f"{base}.4.2": 0.0, f"{base}.4.3": 0.0, f"{base}.4.4": np.nan},
            "mask": {f"{base}.4.1": a | b}, "tube_ids": [f"{base}.4.1", f"{base}.4.2", f"{base}.4.3"]}


def siim_tubes(root: Path, ids: list[str]) -> Path:
    "The study's chest-tube CSV shape: ImageId, ChestTube."
    p = root/"chest_tubes.csv"
    p.write_text("ImageId,ChestTube\n" + "".join(f"{i},{v}\n" for i, v in zip(ids, ["present", "absent", "unknown"])))
    return p


# ---------------------------------------------------------------- SIIM-ACR PNG conversion
def siim_png(root: Path) -> dict:
    "train/<ImageId>.png and masks/<ImageId>.png (0/255, image orientation)."
    root.mkdir(parents=True, exist_ok=True)
    a, b = regions()
    for k, (i, m) in enumerate([("1.2.3.1", a | b), ("1.2.3.2", np.zeros((S, S), bool)), ("1.2.3.3", b)]):
        save_img(root/"train"/f"{i}.png", gradient(seed=k))
        save_img(root/"masks"/f"{i}.png", m.astype(np.uint8) * 255)
    return {"n": 3, "pneumothorax": {"1.2.3.1": 1.0, "1.2.3.2": 0.0, "1.2.3.3": 1.0}, "mask": {"1.2.3.1": a | b, "1.2.3.3": b}}


# ---------------------------------------------------------------- CheXpert-v1.0-small
def _chexpert_row(path, sex, age, fl, appa, **labels):
    obs = {o: "" for o in CHEXPERT_OBSERVATIONS}
    obs.update({k.replace("_", " "): v for k, v in labels.items()})
    return ",".join([path, sex, str(age), fl, appa, *obs.values()])


def chexpert(root: Path) -> dict:
    """CheXpert-v1.0-small/{train,valid}.csv (Path, Sex, Age, Frontal/Lateral, AP/PA, 14 observations with
    1.0/0.0/-1.0/blank) and the JPEGs at the paths (32 rows x 40 columns, like the small release's portrait)."""
    root.mkdir(parents=True, exist_ok=True)
    rel = "CheXpert-v1.0-small"
    rows = [("train/patient00001/study1/view1_frontal.jpg", "Female", 68, "Frontal", "AP", {"Cardiomegaly": "1.0", "Pneumothorax": "0.0"}),
            ("train/patient00001/study1/view2_lateral.jpg", "Female", 68, "Lateral", "", {"Cardiomegaly": "1.0"}),
            ("train/patient00002/study1/view1_frontal.jpg", "Male", 87, "Frontal", "PA", {"Cardiomegaly": "-1.0", "Pneumothorax": "1.0"}),
            ("train/patient00003/study2/view1_frontal.jpg", "Male", 41, "Frontal", "AP", {"Cardiomegaly": "0.0", "Support_Devices": "1.0"}),
            ("train/patient00004/study1/view1_frontal.jpg", "Unknown", 0, "Frontal", "PA", {"No_Finding": "1.0"})]
    valid = [("valid/patient64541/study1/view1_frontal.jpg", "Male", 73, "Frontal", "AP", {"Cardiomegaly": "1.0", "Pneumothorax": "0.0"})]
    header = ",".join(CHEXPERT_COLUMNS)
    for name, rs in (("train.csv", rows), ("valid.csv", valid)):
        (root/name).write_text("\n".join([header] + [_chexpert_row(f"{rel}/{p}", s, a, f, ap, **l) for p, s, a, f, ap, l in rs]) + "\n")
        for k, (p, *_ ) in enumerate(rs): save_img(root/p, gradient(32, 40, seed=k), quality=95)
    return {"n": 5, "cardiomegaly_zeros": {"train/patient00001/study1/view1_frontal.jpg": 1.0, "train/patient00002/study1/view1_frontal.jpg": 0.0,
                                           "train/patient00003/study2/view1_frontal.jpg": 0.0, "valid/patient64541/study1/view1_frontal.jpg": 1.0},
            "heart_id": "train/patient00001/study1/view1_frontal.jpg"}


def chexmask_csv(path: Path, id_col: str, rows: list[tuple[str, float, np.ndarray]]) -> Path:
    "A CheXmask per-dataset CSV in the released column order; heart RLE absolute 1-based row-major."
    lines = [f"{id_col},Dice RCA (Mean),Dice RCA (Max),Landmarks,Left Lung,Right Lung,Heart,Height,Width"]
    for i, dice, heart in rows:
        h, w = heart.shape
        lung = np.zeros_like(heart); lung[h // 4: h // 2, w // 8: w // 3] = True
        lines.append(f'{i},{dice},{min(1.0, dice + 0.05)},"{w // 2},{h // 3},{w // 3},{h // 2}",{chexmask_rle_encode(lung)},'
                     f'{chexmask_rle_encode(lung[:, ::-1])},{chexmask_rle_encode(heart)},{h},{w}')
    path.write_text("\n".join(lines) + "\n")
    return path


def heart_mask(h, w):
    m = np.zeros((h, w), bool); m[h // 2: h * 3 // 4, w // 3: w * 2 // 3] = True
    return m


# ---------------------------------------------------------------- MIMIC-CXR-JPG 2.0.0
MIMIC_META = ("dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,StudyTime,"
              "ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,PatientOrientationCodeSequence_CodeMeaning")


def _gz(path: Path, text: str):
    with gzip.open(path, "wt") as f: f.write(text)


def mimic(root: Path) -> dict:
    "mimic-cxr-2.0.0-{chexpert,negbio,metadata,split}.csv.gz and files/p10/p10000032/s50414267/<dicom_id>.jpg."
    root.mkdir(parents=True, exist_ok=True)
    obs = ",".join(CHEXPERT_OBSERVATIONS)
    def lab(subj, study, **v):
        o = {k: "" for k in CHEXPERT_OBSERVATIONS}; o.update(v)
        return f"{subj},{study}," + ",".join(o.values())
    studies = [lab(10000032, 50414267, Cardiomegaly="1.0"), lab(10000032, 53189527, Cardiomegaly="-1.0", Pneumothorax="0.0"),
               lab(10000764, 57375967, Pneumothorax="1.0")]
    _gz(root/"mimic-cxr-2.0.0-chexpert.csv.gz", "\n".join([f"subject_id,study_id,{obs}", *studies]) + "\n")
    _gz(root/"mimic-cxr-2.0.0-negbio.csv.gz", "\n".join([f"subject_id,study_id,{obs}", *studies]) + "\n")
    imgs = [("02aa804e-bde0afdd-112c0b34-7bc16630-4e384014", 10000032, 50414267, "PA", "postero-anterior"),
            ("174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962", 10000032, 50414267, "LATERAL", "lateral"),
            ("2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab", 10000032, 53189527, "AP", "antero-posterior"),
            ("fffabebf-74fd3a1f-673b6b41-96ec0ac9-2ab69818", 10000764, 57375967, "AP", "antero-posterior")]
    meta = [MIMIC_META] + [f"{d},{s},{st},CHEST (PA AND LAT),{v},{S},{S},21800506,213014.531,CHEST (PA AND LAT),{m},Erect" for d, s, st, v, m in imgs]
    _gz(root/"mimic-cxr-2.0.0-metadata.csv.gz", "\n".join(meta) + "\n")
    _gz(root/"mimic-cxr-2.0.0-split.csv.gz", "dicom_id,study_id,subject_id,split\n" + "".join(f"{d},{st},{s},{'test' if k == 3 else 'train'}\n" for k, (d, s, st, *_ ) in enumerate(imgs)))
    for k, (d, s, st, *_ ) in enumerate(imgs):
        save_img(root/"files"/f"p{str(s)[:2]}"/f"p{s}"/f"s{st}"/f"{d}.jpg", gradient(seed=k), quality=95)
    return {"n": 3, "cardiomegaly": {imgs[0][0]: 1.0, imgs[2][0]: 0.0, imgs[3][0]: np.nan},
            "pneumothorax": {imgs[0][0]: np.nan, imgs[2][0]: 0.0, imgs[3][0]: 1.0}, "heart_id": imgs[0][0]}


# ---------------------------------------------------------------- NIH ChestX-ray14
NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")


def nih(root: Path) -> dict:
    "Data_Entry_2017_v2020.csv (split bracket headers), train_val_list.txt, test_list.txt, images_00N/images/*.png."
    root.mkdir(parents=True, exist_ok=True)
    rows = [("00000001_000.png", "Cardiomegaly", 0, 1, 57, "M", "PA", 2682, 2749, 0.143),
            ("00000001_001.png", "Cardiomegaly|Emphysema", 1, 1, 58, "M", "PA", 2894, 2729, 0.143),
            ("00000002_000.png", "No Finding", 0, 2, 80, "M", "PA", 2500, 2048, 0.171),
            ("00000003_000.png", "Hernia|Pneumothorax", 0, 3, 74, "F", "AP", 2500, 2048, 0.168)]
    (root/"Data_Entry_2017_v2020.csv").write_text(
        "\n".join([NIH_HEADER] + [f"{i},{f},{u},{p},{a},{s},{v},{w},{h},{px},{px}" for i, f, u, p, a, s, v, w, h, px in rows]) + "\n")
    (root/"train_val_list.txt").write_text("00000001_000.png\n00000001_001.png\n00000002_000.png\n")
    (root/"test_list.txt").write_text("00000003_000.png\n")
    for k, r in enumerate(rows): save_img(root/f"images_00{1 + k // 2}"/"images"/r[0], gradient(seed=k))
    return {"n": 4, "cardiomegaly": {"00000001_000.png": 1.0, "00000001_001.png": 1.0, "00000002_000.png": 0.0, "00000003_000.png": 0.0},
            "pneumothorax": {"00000003_000.png": 1.0}, "heart_id": "00000002_000.png"}


# ---------------------------------------------------------------- institutional CSV
def generic(root: Path) -> dict:
    "index.csv with image_path, patient_id, label (cardiomegaly by default) and a heart mask column."
    root.mkdir(parents=True, exist_ok=True)
    for k in range(3): save_img(root/"images"/f"img{k}.png", gradient(seed=k))
    save_img(root/"masks"/"img0.png", heart_mask(S, S).astype(np.uint8) * 255)
    (root/"index.csv").write_text("image_path,patient_id,label,heart\nimages/img0.png,A1,1,masks/img0.png\n"
                                  "images/img1.png,A1,0,\nimages/img2.png,A2,unknown,\n")
    return {"n": 3, "cardiomegaly": {"images/img0.png": 1.0, "images/img1.png": 0.0, "images/img2.png": np.nan}}


def synthetic(root: Path) -> dict:
    "The synthetic benchmark, written by its own writer (SIIM layout + CheXmask, label and tube CSVs), 8 images."
    from cxr_study.data.synthetic import SyntheticCfg, make_synthetic_benchmark
    make_synthetic_benchmark(root, SyntheticCfg(n_images=8, size=32))
    return {"n": 8}


BUILDERS = {"siim": siim_dicom, "siim-png": siim_png, "chexpert": chexpert, "mimic": mimic, "nih": nih, "csv": generic, "synthetic": synthetic}
EXTRA_ARGS = {"csv": ["--label", "cardiomegaly=label", "--mask-col", "heart", "--mask-target", "heart"]}


def prepare(*argv) -> tuple[int, str]:
    "Run `cxr-study prepare` with these arguments; its exit code and everything it printed."
    p = argparse.ArgumentParser(prog="cxr-study prepare"); add_prepare_arguments(p)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        rc = cmd_prepare(p.parse_args([str(a) for a in argv]))
    return rc, out.getvalue()
