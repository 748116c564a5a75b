"""Fuzzing the label tables of every dataset adapter (SIIM's train-rle.csv and chest-tube CSV, CheXpert,
MIMIC-CXR-JPG (gzipped), NIH ChestX-ray14 with a CheXmask CSV, an institutional CSV): one line of the real-format
fixture is mutated (bytes flipped, inserted or deleted, quotes, separators, line breaks, NULs, other encodings,
a field replaced or swapped, a line dropped, duplicated or cut), or the whole file is re-encoded (CRLF, a BOM).
Every input ends in an index or a `CxrStudyError` naming the file; never another exception. And never a silent
wrong label: every image whose lines the mutation did not touch keeps its labels and masks, or loses them
only with a problem reported; a re-encoded file gives the same index. Budgets are fixed and derandomized
(CXR_STUDY_FUZZ=N multiplies them); the counts of inputs tried are reported at the end of the session.
Inputs that once crashed an adapter are replayed from tests/fixtures/fuzz/."""
from __future__ import annotations

import gzip
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import adapter_fixtures as fx
from cxr_study.core import CxrStudyError
from cxr_study.data.prepare import index_dataset

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
FUZZ_DIR = Path(__file__).parent / "fixtures" / "fuzz"
SCALE = int(os.environ.get("CXR_STUDY_FUZZ", "1"))
TRIED = Counter()
COLUMNS = ["pneumothorax", "cardiomegaly", "chest_tube", "pneumothorax_mask", "heart_mask", "heart_mask_height", "heart_mask_width"]


def _siim(root):
    e = fx.siim_dicom(root); fx.siim_tubes(root, e["tube_ids"])
    return {"tubes": root / "chest_tubes.csv"}


def _nih(root):
    e = fx.nih(root)
    fx.chexmask_csv(root / "ChestX-Ray8.csv", "Image Index", [(e["heart_id"], 0.9, fx.heart_mask(32, 32)),
                                                              ("00000001_000.png", 0.8, fx.heart_mask(32, 32)), ("00000003_000.png", 0.5, fx.heart_mask(32, 32))])
    return {"chexmask": root / "ChestX-Ray8.csv"}


# adapter, fixture writer (returns index_dataset options), files to mutate -> how an image's lines are found in them
TARGETS = {
    "siim": ("siim", _siim, {"train-rle.csv": "image_id", "chest_tubes.csv": "image_id"}),
    "chexpert": ("chexpert", lambda r: fx.chexpert(r) and {}, {"train.csv": "image_id", "valid.csv": "image_id"}),
    "mimic": ("mimic", lambda r: fx.mimic(r) and {}, {"mimic-cxr-2.0.0-chexpert.csv.gz": "study_id", "mimic-cxr-2.0.0-metadata.csv.gz": "image_id"}),
    "nih": ("nih", _nih, {"Data_Entry_2017_v2020.csv": "image_id", "ChestX-Ray8.csv": "image_id"}),
    "csv": ("csv", lambda r: fx.generic(r) and {}, {"index.csv": "image_id"}),
}
OPTS = {"csv": {"label": ["cardiomegaly=label"], "mask_col": "heart", "mask_target": "heart", "workers": 1}, "siim": {"workers": 1},
        "siim-png": {"workers": 1}}


@pytest.fixture(scope="module", autouse=True)
def _report_counts(summary_line):
    yield
    for k, v in sorted(TRIED.items()): summary_line(f"fuzz {k}: {v} inputs tried")


def _index(name, root, extra):
    adapter = TARGETS[name][0]
    return index_dataset(adapter, root, **extra, **OPTS.get(adapter, {}))


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    "Each adapter's fixture tree and its index as written (the baseline)."
    out = {}
    for name, (_, write, _) in TARGETS.items():
        root = tmp_path_factory.mktemp(name)
        extra = write(root) or {}
        idx, problems = _index(name, root, extra)
        assert problems == [], (name, problems)
        out[name] = (root, extra, idx.set_index("image_id"))
    return out


def _read(p: Path) -> bytes:
    return gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()


def _write(p: Path, b: bytes):
    p.write_bytes(gzip.compress(b) if p.suffix == ".gz" else b)


TOKENS = [b'"', b",", b"\n", b"\r", b"\x00", b"\xff\xfe", b"\xe9", b" ", b"-1", b"1.0", b"0", b"nan", b"|", b"\\", b"../", b'""', b"\t", b";"]


@st.composite
def mutations(draw, data: bytes):
    """One line changed, or the whole file re-encoded: (new bytes, indices of the original lines touched, the new text of
    the lines touched, kind: None, "same" for a re-encoding that must give the same index, "gzip" for a damaged stream)."""
    lines = data.splitlines(keepends=True)
    k = draw(st.integers(0, len(lines) - 1))
    line = lines[k]
    op = draw(st.sampled_from(["flip", "insert", "delete", "token", "field", "swap", "drop", "dup", "cut", "noeol", "crlf", "bom", "gzipbyte"]))
    pos = draw(st.integers(0, max(0, len(line) - 1)))
    if op == "flip": new = line[:pos] + bytes([line[pos] ^ (1 << draw(st.integers(0, 7)))]) + line[pos + 1:]
    elif op == "insert": new = line[:pos] + draw(st.binary(min_size=1, max_size=6)) + line[pos:]
    elif op == "delete": new = line[:pos] + line[pos + draw(st.integers(1, 12)):]
    elif op == "token": new = line[:pos] + draw(st.sampled_from(TOKENS)) + line[pos:]
    elif op in ("field", "swap"):
        f = line.rstrip(b"\r\n").split(b",")
        i, j = draw(st.integers(0, len(f) - 1)), draw(st.integers(0, len(f) - 1))
        if op == "field": f[i] = draw(st.one_of(st.sampled_from([b"", b"1", b"0", b"-1", b"1.0", b"-1.0", b"2", b"yes", b"unknown", b"NaN", b" 1"]),
                                                st.text(max_size=8).map(lambda s: s.encode())))
        else: f[i], f[j] = f[j], f[i]
        new = b",".join(f) + line[len(line.rstrip(b"\r\n")):]
    elif op == "drop": new = b""
    elif op == "dup": new = line + line
    elif op == "cut": return data[: sum(map(len, lines[:k])) + pos], set(range(k, len(lines))), line[:pos], None
    elif op == "noeol": return data.rstrip(b"\r\n"), {len(lines) - 1}, lines[-1].rstrip(b"\r\n"), None  # no line end at the end
    elif op == "crlf": return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"), set(), b"", "same"
    elif op == "bom": return b"\xef\xbb\xbf" + data, set(), b"", "same"
    else: return data, set(range(len(lines))), b"", "gzip"  # a damaged compressed stream (made when written)
    return b"".join(lines[:k]) + new + b"".join(lines[k + 1:]), {k}, new, None


def _named(e: BaseException, *paths: Path):
    assert isinstance(e, CxrStudyError), f"{type(e).__name__}: {e}"
    assert any(str(p) in str(e) for p in paths), str(e)


def _same(a, b) -> bool:
    return (pd.isna(a) and pd.isna(b)) or a == b


def check_mutated(name, datasets, fname, mutated: bytes, touched: set, new_text: bytes, kind):
    "Run the adapter on the mutated file; check the outcome against the baseline. Returns the kind of outcome."
    root, extra, base = datasets[name]
    target = root / fname
    original = target.read_bytes()
    lines = _read(target).splitlines(keepends=True)
    try:
        _write(target, mutated)
        if kind == "gzip":  # one byte of the compressed stream changed, past the gzip header
            b = bytearray(target.read_bytes()); b[len(b) // 2] ^= 0x5A; target.write_bytes(bytes(b))
        try: idx, problems = _index(name, root, extra)
        except Exception as e:
            _named(e, target, root); return "error"
    finally: target.write_bytes(original)
    for w, why in problems: assert str(root) in w, (w, why)  # every problem names its file (and line)
    idx = idx.set_index("image_id")
    for c in ("pneumothorax", "cardiomegaly", "chest_tube"):
        assert idx[c].dropna().isin([0.0, 1.0]).all(), (c, idx[c].unique())
    if kind == "same":  # the same table, re-encoded
        assert problems == [], problems
        pd.testing.assert_frame_equal(idx[COLUMNS].sort_index(), base[COLUMNS].sort_index())
        return "same"
    if 0 in touched: return "index (header changed)"  # no row is untouched
    hit = b"".join(lines[i] for i in touched if i < len(lines)) + b"\n" + new_text  # old and new text of the lines touched
    key = TARGETS[name][2][fname]
    for image_id, row in base.iterrows():
        k = str(row["study_id"] if key == "study_id" else image_id)
        if k.encode() in hit: continue  # a touched image: any valid outcome goes
        if image_id not in idx.index:
            assert problems, f"{image_id} left out without a problem reported"; continue
        for c in COLUMNS:
            if not _same(idx.at[image_id, c], row[c]):
                assert pd.isna(idx.at[image_id, c]) and problems, f"{image_id} {c}: {row[c]!r} became {idx.at[image_id, c]!r}"
    return "index"


@pytest.mark.parametrize("name", list(TARGETS))
def test_fuzz_label_tables(name, datasets, tmp_path):
    "Mutated label tables of one adapter: an index whose untouched images keep their labels, or an error naming the file."
    root = datasets[name][0]
    files = sorted(TARGETS[name][2])
    outcomes = Counter()

    @settings(max_examples=50 * SCALE, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
    @given(st.data())
    def run(data):
        fname = data.draw(st.sampled_from(files))
        mutated, touched, new_text, kind = data.draw(mutations(_read(root / fname)))
        if kind == "gzip" and not fname.endswith(".gz"): kind = None
        outcomes[check_mutated(name, datasets, fname, mutated, touched, new_text, kind)] += 1

    run()
    TRIED[f"label tables ({name}: {', '.join(files)})"] += sum(outcomes.values())
    print(name, dict(outcomes))


def _regressions():
    return sorted(FUZZ_DIR.glob("*.labels.json")) if FUZZ_DIR.is_dir() else []


@pytest.mark.parametrize("case", _regressions(), ids=lambda p: p.name)
def test_label_inputs_that_crashed(case, datasets):
    "Each label-table input kept from a fuzzing run that crashed an adapter: now an index or a named error."
    c = json.loads(case.read_text())
    mutated = bytes.fromhex(c["bytes_hex"])
    check_mutated(c["adapter"], datasets, c["file"], mutated, set(c["touched"]), bytes.fromhex(c.get("new_hex", "")), c.get("kind"))
