"""How long indexing takes at the real datasets' sizes.

SIIM-ACR (the figure): writes header-only DICOM stand-ins in the Kaggle layout (SOPInstanceUID, PatientID,
PatientSex, PatientAge, ViewPosition, Rows = Columns = 1024, no pixel data; 2,000 by default, up to the
published 12,047) and the published train-rle.csv rows of those images (torchxrayvision's copy when that
package is installed, else a synthetic one with the published counts: 12,047 images, 2,669 positive, 624
with several rows), then times the indexing as it was before (every mask decoded to 1024 x 1024 and encoded
again, headers read one by one with pydicom) and as it is now, alternating, and checks that both give the
same index every time.

CheXpert (with `--chexpert-rows`): writes a train.csv in CheXpert's exact column layout with that many rows
(the published train set has 223,414; label values drawn with the published Cardiomegaly frequencies), then
times `index_chexpert` on it, and the whole `prepare --index-only`; also NIH ChestX-ray14 (112,120 rows) and
MIMIC-CXR-JPG (377,110 images, 227,835 studies) sized label files (`bench_chexpert`).

Run: `python benchmarks/bench_indexing.py [--siim-images 2000] [--chexpert-rows 223414] [--repeats 3] [--quick] [--json PATH]`.
"""
from __future__ import annotations

import os
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchlib, beside this file
import benchlib  # noqa: E402
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

# ---------------------------------------------------------------- SIIM-ACR at its real size
SIIM_IMAGES, SIIM_POSITIVE, SIIM_MULTI = 12_047, 2_669, 624
_SC = b"1.2.840.10008.5.1.4.1.1.7"       # Secondary Capture Image Storage, as SIIM's files declare
_LONG = {b"OB", b"OW", b"SQ", b"UN", b"UT"}


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    "One explicit-VR little-endian data element, value padded to even length as DICOM requires."
    if len(value) % 2: value += b"\0" if vr in (b"UI", b"OB") else b" "
    if vr in _LONG: return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def header_only_dicom(sop: str, patient_id: str, sex: str, age: str, view: str, rows: int = 1024, columns: int = 1024) -> bytes:
    "The bytes of a header-only DICOM file (Part 10 preamble and meta group; no pixel data)."
    meta = b"".join([_element(0x00020001, b"OB", b"\0\1"), _element(0x00020002, b"UI", _SC),
                     _element(0x00020003, b"UI", sop.encode()), _element(0x00020010, b"UI", b"1.2.840.10008.1.2.1")])
    data = b"".join([_element(0x00080016, b"UI", _SC), _element(0x00080018, b"UI", sop.encode()),
                     _element(0x00080060, b"CS", b"CR"), _element(0x00100020, b"LO", patient_id.encode()),
                     _element(0x00100040, b"CS", sex.encode()), _element(0x00101010, b"AS", age.encode()),
                     _element(0x00185101, b"CS", view.encode()), _element(0x0020000D, b"UI", f"{sop}.2".encode()),
                     _element(0x0020000E, b"UI", f"{sop}.3".encode()), _element(0x00280010, b"US", struct.pack("<H", rows)),
                     _element(0x00280011, b"US", struct.pack("<H", columns))])
    return b"\0" * 128 + b"DICM" + _element(0x00020000, b"UL", struct.pack("<I", len(meta))) + meta + data


def real_siim_rle() -> Path | None:
    "The published train-rle.csv as torchxrayvision ships it, when that package is installed (it is not imported)."
    import importlib.util
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations: return None
    p = Path(list(spec.submodule_search_locations)[0])/"data"/"siim-pneumothorax-train-rle.csv.gz"
    return p if p.exists() else None


def _blob_runs(rng, h: int = 1024) -> list[tuple[int, int]]:
    "Column-major (absolute start, length) runs of one smooth blob, a few % of a 1024 x 1024 image."
    c0, width = int(rng.integers(50, 800)), int(rng.integers(20, 160))
    top, height = int(rng.integers(50, 700)), int(rng.integers(40, 300))
    runs = []
    for c in range(c0, c0 + width):
        x = (c - c0) / width
        half = max(1, int(height * np.sqrt(max(1e-3, x * (1 - x)))))
        runs.append((c * h + top + height // 2 - half // 2, half))
    return runs


def _siim_rle(runs: list[tuple[int, int]]) -> str:
    "SIIM's relative RLE of sorted absolute runs."
    out, end = [], 0
    for s, l in runs: out += [s - end, l]; end = s + l
    return " ".join(map(str, out))


def make_siim_standins(root: Path, n: int = SIIM_IMAGES, rle_source: Path | None = None, seed: int = 0) -> dict:
    "dicom-images-train/<study>/<series>/<sop>.dcm header-only stand-ins plus train-rle.csv; returns what was written."
    root = Path(root); root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if rle_source is not None:
        df = pd.read_csv(rle_source, dtype=str, keep_default_na=False)
        ids = list(dict.fromkeys(df.iloc[:, 0].str.strip()))[:n]
        df[df.iloc[:, 0].str.strip().isin(set(ids))].to_csv(root/"train-rle.csv", index=False)
        source = f"the published train-rle.csv ({rle_source.name}, torchxrayvision's copy)"
    else:
        ids = [f"1.2.276.0.7230010.3.1.4.8323329.{k}.1517875{k % 1000:03d}.{k * 7919 % 1000000}" for k in range(n)]
        pos = set(rng.choice(n, min(n, round(n * SIIM_POSITIVE / SIIM_IMAGES)), replace=False).tolist())
        multi = set(sorted(pos)[: round(len(pos) * SIIM_MULTI / SIIM_POSITIVE)])
        lines = ["ImageId, EncodedPixels"]
        for k, i in enumerate(ids):
            if k not in pos: lines.append(f"{i}, -1"); continue
            blobs = [_blob_runs(rng) for _ in range(2 if k in multi else 1)]
            for b in blobs: lines.append(f"{i}, {_siim_rle(b)}")
        (root/"train-rle.csv").write_text("\n".join(lines) + "\n")
        source = "synthetic (the published counts; smooth blobs of a few % of the image)"
    for k, sop in enumerate(ids):
        d = root/"dicom-images-train"/f"{sop}.2"/f"{sop}.3"; d.mkdir(parents=True, exist_ok=True)
        (d/f"{sop}.dcm").write_bytes(header_only_dicom(sop, f"{k:08x}-0000-4000-8000-{k:012x}", "MF"[k % 2], str(18 + k % 70), ("PA", "AP")[k % 3 == 0]))
    return {"images": len(ids), "rle_source": source}


def index_siim_before(root: Path, rle_csv: str = "train-rle.csv", images_dir: str = "dicom-images-train"):
    "SIIM indexing as it was before: `Path.rglob`, pydicom header by header, every mask decoded to a full array and encoded again."
    import pydicom
    from cxr_study.data.index import empty_index, mask_area_pct, validate_index
    from cxr_study.data.rle import chexmask_rle_encode, read_siim_rle_rows, siim_mask
    from cxr_study.data.siim import _TAGS, _age_years
    root = Path(root)
    files = sorted((root/images_dir).rglob("*.dcm"))
    rows, problems = [], []
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=_TAGS)
            rows.append({"image_id": str(ds.SOPInstanceUID), "image_path": str(f.relative_to(root)),
                         "patient_id": str(ds.get("PatientID", "")) or np.nan, "sex": str(ds.get("PatientSex", "")).strip() or np.nan,
                         "age": _age_years(ds.get("PatientAge", "")), "view": str(ds.get("ViewPosition", "")).strip() or np.nan,
                         "rows": int(ds.Rows), "columns": int(ds.Columns)})
        except Exception as e:
            problems.append((str(f), f"unreadable DICOM header ({type(e).__name__}: {e})"))
    hdr = pd.DataFrame(rows, columns=["image_id", "image_path", "patient_id", "sex", "age", "view", "rows", "columns"])
    dup = hdr["image_id"].duplicated(keep=False)
    for p in hdr.loc[dup, "image_path"]: problems.append((p, "SOPInstanceUID shared with another file; both left out"))
    hdr = hdr[~dup].reset_index(drop=True)
    rle, pr = read_siim_rle_rows(root/rle_csv)
    problems += pr
    rle = rle.set_index("image_id")
    idx = empty_index(len(hdr))
    for c in ("image_id", "image_path", "patient_id", "sex", "age", "view"): idx[c] = hdr[c].values
    idx["pneumothorax_mask_height"], idx["pneumothorax_mask_width"] = hdr["rows"].astype(float).values, hdr["columns"].astype(float).values
    masks, labels = [], []
    for iid, h, w in zip(hdr["image_id"], hdr["rows"], hdr["columns"]):
        if iid not in rle.index: masks.append(np.nan); labels.append(np.nan); continue
        rles = rle.at[iid, "rles"]
        m = siim_mask(rles, h, w, where=f"{root/rle_csv} image {iid}")
        masks.append(chexmask_rle_encode(m)); labels.append(float(len(rles) > 0))
    idx["pneumothorax_mask"], idx["pneumothorax"] = masks, labels
    for iid in sorted(set(rle.index) - set(hdr["image_id"])):
        problems.append((str(root/rle_csv), f"image {iid} has RLE rows but no DICOM file"))
    pct = [mask_area_pct(r, h, w) for r, h, w in zip(idx["pneumothorax_mask"], idx["pneumothorax_mask_height"], idx["pneumothorax_mask_width"])]
    idx["ptx_size_pct"] = np.where(idx["pneumothorax"] == 1, pct, np.nan)
    return validate_index(idx, where=str(root)), problems


def same_index(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    "Same rows, columns and values (None and NaN both count as missing)."
    try: pd.testing.assert_frame_equal(a.reset_index(drop=True).fillna(np.nan), b.reset_index(drop=True).fillna(np.nan), check_dtype=False)
    except AssertionError: return False
    return True


def bench_siim(n: int = SIIM_IMAGES, before: bool = True, workers: int | None = None) -> dict:
    "Time SIIM indexing at `n` images, before and after, on the same stand-ins."
    import warnings
    from cxr_study.data.siim import index_siim
    src = real_siim_rle()
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter(); made = make_siim_standins(Path(d)/"siim", n, src); t_write = time.perf_counter() - t0
        out = {"images": made["images"], "rle_source": made["rle_source"], "write_standins_s": round(t_write, 2)}
        t0 = time.perf_counter(); idx, problems = index_siim(Path(d)/"siim", workers=workers); out["after_s"] = round(time.perf_counter() - t0, 2)
        out.update(positives=int((idx["pneumothorax"] == 1).sum()), problems=len(problems))
        if before:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")            # pydicom warns about SIIM's bare ages ('38' is not a valid AS)
                t0 = time.perf_counter(); old, _ = index_siim_before(Path(d)/"siim"); out["before_s"] = round(time.perf_counter() - t0, 2)
            out["speedup"] = round(out["before_s"] / max(out["after_s"], 1e-9), 1)
            out["identical"] = same_index(idx, old)
    return out


def bench_chexpert(n: int = N_TRAIN) -> dict:
    import argparse, contextlib, io
    from cxr_study.cli import add_prepare_arguments, cmd_prepare
    out = {}
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter(); make_chexpert_csv(Path(d) / "train.csv", n); out["write_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter(); idx, problems = index_chexpert(d); out["index_chexpert_s"] = round(time.perf_counter() - t0, 2)
        out.update(rows=n, frontal_images=len(idx), patients=int(idx["patient_id"].nunique()), problems=len(problems))
        p = argparse.ArgumentParser(); add_prepare_arguments(p)
        args = p.parse_args(["chexpert", "--root", d, "--out", str(Path(d) / "out"), "--index-only", "--all-views"])
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()): out["prepare_exit_code"] = cmd_prepare(args)
        out["prepare_index_only_all_views_s"] = round(time.perf_counter() - t0, 2)
    from cxr_study.data.mimic import index_mimic
    from cxr_study.data.nih import index_nih
    with tempfile.TemporaryDirectory() as d:
        make_nih_csv(Path(d) / "Data_Entry_2017_v2020.csv")
        t0 = time.perf_counter(); idx, _ = index_nih(d, check_files=False); out["index_nih_s"] = round(time.perf_counter() - t0, 2); out["nih_images"] = len(idx)
        make_mimic(Path(d))
        t0 = time.perf_counter(); idx, _ = index_mimic(d); out["index_mimic_s"] = round(time.perf_counter() - t0, 2); out["mimic_frontal_images"] = len(idx)
    return out


def run(repeats: int = 3, quick: bool = False, siim_images: int | None = None, workers: int | None = None,
        chexpert_rows: int = 0) -> dict:
    """SIIM indexing before and after on the same header-only stand-ins, `repeats` times, alternating which goes first;
    with `chexpert_rows`, also the time of `index_chexpert` on a train.csv of that many rows (a time, not a ratio)."""
    import warnings
    from cxr_study.data.siim import index_siim
    n = siim_images or (300 if quick else 2_000)
    src = real_siim_rle()
    before, after = [], []
    with tempfile.TemporaryDirectory() as d:
        made = make_siim_standins(Path(d)/"siim", n, src)
        def t_after():
            t0 = time.perf_counter(); idx, _ = index_siim(Path(d)/"siim", workers=workers); return time.perf_counter() - t0, idx
        def t_before():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pydicom warns about SIIM's bare ages ('38' is not a valid AS)
                t0 = time.perf_counter(); old, _ = index_siim_before(Path(d)/"siim"); return time.perf_counter() - t0, old
        for r in range(repeats):  # alternating which goes first, so drift in the machine's load reaches both
            if r % 2 == 0: (ta, idx), (tb, old) = t_after(), t_before()
            else: (tb, old), (ta, idx) = t_before(), t_after()
            if not same_index(idx, old): raise AssertionError("SIIM indexing before and after gave different indexes")
            before.append(tb); after.append(ta)
            print(f"  repeat {r + 1}: before {tb:.2f} s, after {ta:.2f} s", flush=True)
    figures = {"siim": benchlib.ratio_figure(
        f"SIIM-ACR indexing, {made['images']:,} header-only DICOMs with the published masks: before (pydicom per file, "
        "every mask decoded and encoded again) / now (header fast path in worker processes, masks run to run)",
        ("index_siim as before (s)", before), ("index_siim (s)", after))}
    notes = [f"SIIM labels: {made['rle_source']}; both indexes identical in every repeat"]
    if chexpert_rows:
        with tempfile.TemporaryDirectory() as d:
            make_chexpert_csv(Path(d)/"train.csv", chexpert_rows)
            secs = []
            for _ in range(repeats):
                t0 = time.perf_counter(); index_chexpert(d); secs.append(time.perf_counter() - t0)
        figures["chexpert"] = benchlib.value_figure(f"index_chexpert on a {chexpert_rows:,}-row train.csv in CheXpert's layout", secs, "s")
    return benchlib.result("Dataset indexing at the real datasets' sizes",
                           f"python benchmarks/bench_indexing.py --siim-images {n} --repeats {repeats}",
                           {"siim_images": n, "workers": workers or "one process per CPU core, up to 8"}, figures, notes)


if __name__ == "__main__":
    def options(ap):
        ap.add_argument("--siim-images", type=int, default=None, help=f"SIIM stand-ins (default 2,000; --quick 300; the published train set has {SIIM_IMAGES:,})")
        ap.add_argument("--workers", type=int, default=None, help="processes reading SIIM headers (default: one per CPU core, up to 8)")
        ap.add_argument("--chexpert-rows", type=int, default=0, help=f"also time index_chexpert on a train.csv of this many rows (the published one has {N_TRAIN:,})")
    benchlib.cli(run, __doc__, extra=options)
