"""Property and fuzz tests of the readers of outside data that are not label tables: SIIM and CheXmask RLE,
DICOM, PNG/JPEG and study files. Every input ends in a correct result or a `CxrStudyError` that names the
file; never another exception, never an array of the wrong shape. The budgets are fixed and the runs
derandomized, so CI tries the same inputs every time (CXR_STUDY_FUZZ=N multiplies the budgets to hunt
locally); each test reports how many inputs it tried. Inputs that once crashed a reader are replayed from
tests/fixtures/fuzz/."""
from __future__ import annotations

import io
import json
import os
import struct
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from cxr_study.core import CxrStudyError
from cxr_study.data.adapters import image_size, read_mask_file
from cxr_study.data.readers import read_dicom, read_image, read_png, write_dicom
from cxr_study.data.rle import (chexmask_rle_decode, chexmask_rle_encode, siim_index_rle, siim_mask, siim_rle_decode,
                                siim_rle_encode)
from cxr_study.study.studyfile import StudyCfg, load_study, shipped_study

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom and PIL on damaged files
FUZZ_DIR = Path(__file__).parent / "fixtures" / "fuzz"
SCALE = int(os.environ.get("CXR_STUDY_FUZZ", "1"))
TRIED = Counter()


def budget(n):
    return settings(max_examples=n * SCALE, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])


@pytest.fixture(scope="module", autouse=True)
def _report_counts(summary_line):
    yield
    for k, v in sorted(TRIED.items()): summary_line(f"fuzz {k}: {v} inputs tried")


def named(e: BaseException, path: Path):
    "The error is a CxrStudyError whose message names the file."
    assert isinstance(e, CxrStudyError), f"{type(e).__name__}: {e}"
    assert str(path) in str(e) or path.name in str(e), str(e)


masks = st.tuples(st.integers(1, 24), st.integers(1, 24)).flatmap(lambda hw: hnp.arrays(bool, hw))


# ---------------------------------------------------------------- RLE
@budget(300)
@given(masks)
def test_siim_rle_round_trip(m):
    "SIIM's relative column-major RLE: decode(encode(m)) is m, for any mask and shape; the index RLE of its regions is CheXmask's."
    TRIED["SIIM RLE round trip"] += 1
    h, w = m.shape
    np.testing.assert_array_equal(siim_rle_decode(siim_rle_encode(m), h, w), m)
    # split into two region masks (as SIIM's CSV lists an image's regions), their union is the mask
    a = m.copy(); a[:, : w // 2] = False
    regions = [r for r in (siim_rle_encode(a), siim_rle_encode(m & ~a)) if r != "-1"]
    np.testing.assert_array_equal(siim_mask(regions, h, w), m)
    assert siim_index_rle(regions, h, w) == chexmask_rle_encode(m)


@budget(300)
@given(masks)
def test_chexmask_rle_round_trip(m):
    "CheXmask's absolute 1-based row-major RLE: decode(encode(m)) is m, for any mask and shape."
    TRIED["CheXmask RLE round trip"] += 1
    h, w = m.shape
    np.testing.assert_array_equal(chexmask_rle_decode(chexmask_rle_encode(m), h, w), m)


def _reference_decode(rle: str, h: int, w: int, siim: bool):
    "A plain-Python decoder of the published conventions (the oracle): the mask, or None when the string is not valid."
    tok = rle.split()
    if not tok or rle.strip() == "-1": return np.zeros((h, w), bool)
    try: v = [int(t) for t in tok]
    except ValueError: return None
    if len(v) % 2: return None
    flat, pos = np.zeros(h * w, bool), 0
    for s, n in zip(v[::2], v[1::2]):
        if s < 0 or n < 0 or (not siim and s < 1): return None
        start = pos + s if siim else s - 1
        if start + n > h * w: return None
        flat[start:start + n] = True
        pos = start + n
    return flat.reshape(w, h).T if siim else flat.reshape(h, w)


rle_text = st.one_of(
    st.lists(st.integers(-3, 700), max_size=12).map(lambda v: " ".join(map(str, v))),
    st.text(alphabet="0123456789 -+.eE\t\nx", max_size=40),
    st.lists(st.sampled_from(["1", "0", "-1", "5", "99999999999999999999", "1e3", "0x10", "٣", " ", "nan"]), max_size=8).map(" ".join))


@budget(400)
@given(rle_text, st.integers(1, 20), st.integers(1, 20), st.booleans())
def test_rle_decoders_on_any_string(rle, h, w, siim):
    "Any string: the mask of the (independently decoded) convention with the asked shape, or a CxrStudyError; never another exception."
    TRIED["RLE strings"] += 1
    expect = _reference_decode(rle, h, w, siim)
    try: got = siim_rle_decode(rle, h, w, where="f.csv") if siim else chexmask_rle_decode(rle, h, w, where="f.csv")
    except CxrStudyError as e:
        assert "f.csv" in str(e)
        assert expect is None, (rle, str(e))
        return
    assert expect is not None, (rle, "accepted an invalid RLE")
    assert got.shape == (h, w) and got.dtype == bool
    np.testing.assert_array_equal(got, expect)


# ---------------------------------------------------------------- PNG / JPEG
modes = st.sampled_from(["L", "I;16", "RGB", "RGBA", "LA", "P", "1"])  # the modes PNG files come in


@budget(120)
@given(st.integers(1, 40), st.integers(1, 40), modes, st.sampled_from(["png", "jpeg"]), st.integers(0, 2**32 - 1))
def test_png_jpeg_reader_shape_and_range(tmp_path_factory, h, w, mode, fmt, seed):
    "Any size, bit depth and colour mode: (H, W) float32 in [0, 1]; 8-bit gray PNG values are exact."
    TRIED["PNG/JPEG writes"] += 1
    if fmt == "jpeg": assume(mode in ("L", "RGB"))
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 65536 if mode in ("I;16", "I") else 256, (h, w, 3) if mode in ("RGB",) else (h, w)).astype(np.uint16 if mode in ("I;16", "I") else np.uint8)
    im = Image.fromarray(a.astype(np.int32) if mode == "I" else a)  # uint8 -> L (RGB with 3 channels), uint16 -> I;16, int32 -> I
    if mode not in ("RGB", "I;16", "I", "L"): im = im.convert(mode)
    assert im.mode == mode
    p = tmp_path_factory.mktemp("img") / f"x.{fmt}"
    im.save(p)
    x = read_png(p, minmax=False)
    assert x.shape == (h, w) and x.dtype == np.float32 and 0 <= x.min() <= x.max() <= 1
    if mode == "L" and fmt == "png": np.testing.assert_array_equal(np.rint(x * 255).astype(np.uint8), a)
    assert image_size(p) == (h, w)
    assert read_mask_file(p).shape == (h, w)


def _mutations(data: bytes):
    "Byte-level mutations of a file: flip, overwrite, insert, delete, truncate, duplicate a span."
    n = len(data)
    pos = st.integers(0, max(0, n - 1))
    return st.one_of(
        st.tuples(st.just("flip"), pos, st.integers(0, 7)).map(lambda t: data[:t[1]] + bytes([data[t[1]] ^ (1 << t[2])]) + data[t[1] + 1:]),
        st.tuples(st.just("set"), pos, st.binary(min_size=1, max_size=8)).map(lambda t: data[:t[1]] + t[2] + data[t[1] + len(t[2]):]),
        st.tuples(st.just("ins"), pos, st.binary(min_size=1, max_size=16)).map(lambda t: data[:t[1]] + t[2] + data[t[1]:]),
        st.tuples(st.just("del"), pos, st.integers(1, 64)).map(lambda t: data[:t[1]] + data[t[1] + t[2]:]),
        st.tuples(st.just("cut"), pos).map(lambda t: data[:t[1]]),
        st.tuples(st.just("dup"), pos, st.integers(1, 64)).map(lambda t: data[:t[1] + t[2]] + data[t[1]:]),
        # header fields: the first bytes hold sizes, bit depths and chunk lengths
        st.tuples(st.just("head"), st.integers(0, min(n, 400) - 1), st.binary(min_size=1, max_size=4)).map(
            lambda t: data[:t[1]] + t[2] + data[t[1] + len(t[2]):]))


def _png_chunks(data: bytes) -> list:
    "(offset, type, length) of each chunk of a PNG."
    out, pos = [], 8
    while pos + 8 <= len(data):
        n = struct.unpack(">I", data[pos:pos + 4])[0]
        out.append((pos, data[pos + 4:pos + 8], n)); pos += 12 + n
    return out


def _aware(data: bytes, name: str):
    """Mutations that get past the format's checksums: a PNG chunk's data changed (IHDR's size, depth and colour type
    above all) with its CRC made right again; a JPEG frame header's size and components changed."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        chunks = _png_chunks(data)
        def png(t):
            k, off, new = t
            pos, typ, n = chunks[k % len(chunks)]
            body = bytearray(data[pos + 8:pos + 8 + n])
            if body: body[off % len(body): off % len(body) + len(new)] = new
            body = bytes(body[:n]) if typ == b"IHDR" else bytes(body)
            crc = struct.pack(">I", zlib.crc32(typ + body))
            return data[:pos] + struct.pack(">I", len(body)) + typ + body + crc + data[pos + 12 + n:]
        return st.tuples(st.integers(0, 50), st.integers(0, 20), st.one_of(
            st.binary(min_size=1, max_size=4), st.sampled_from([b"\x00\x01\x11\x70", b"\xff\xff\xff\xff", b"\x00\x00\x00\x00",
                                                                 b"\x10", b"\x01", b"\x03", b"\x04"]))).map(png)
    if data[:2] == b"\xff\xd8" and b"\xff\xc0" in data:
        sof = data.index(b"\xff\xc0")
        return st.tuples(st.integers(4, 12), st.binary(min_size=1, max_size=4)).map(
            lambda t: data[:sof + t[0]] + t[1] + data[sof + t[0] + len(t[1]):])
    return _mutations(data)


def _image_fixtures(d: Path) -> dict:
    "Real-format images: 8-bit gray PNG, 16-bit PNG, RGB PNG, JPEG (as CheXpert and MIMIC ship them), a 0/255 mask PNG."
    rng = np.random.default_rng(0)
    out = {}
    a = rng.integers(0, 256, (24, 20), dtype=np.uint8)
    for name, im, kw in [("gray.png", Image.fromarray(a), {}), ("deep.png", Image.fromarray(a.astype(np.uint16) * 257), {}),
                         ("rgb.png", Image.fromarray(np.stack([a] * 3, -1)), {}), ("view1.jpg", Image.fromarray(a), {"quality": 95}),
                         ("mask.png", Image.fromarray((a > 128).astype(np.uint8) * 255), {})]:
        im.save(d / name, **kw)
        out[name] = (d / name).read_bytes()
    return out


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    return d, _image_fixtures(d)


def _check_image_file(p: Path):
    "Each image reader on one file: a result of the header's size, or a CxrStudyError naming the file."
    try:
        with Image.open(p) as im: want = im.size[::-1]
    except Exception: want = None
    for reader in (read_png, read_image, read_mask_file, image_size):
        try: out = reader(p)
        except Exception as e:
            named(e, p); continue
        shape = out if reader is image_size else out.shape
        assert want is not None and tuple(shape) == tuple(want), (reader.__name__, shape, want)
        if reader is not image_size and reader is not read_mask_file:
            assert out.dtype == np.float32 and np.isfinite(out).all() and 0 <= out.min() <= out.max() <= 1


@budget(300)
@given(st.data())
def test_fuzz_png_jpeg_files(image_files, data):
    "Mutated PNG and JPEG files (bit flips, cuts, inserted bytes, damaged headers and chunk lengths)."
    TRIED["PNG/JPEG mutated files"] += 1
    d, files = image_files
    name = data.draw(st.sampled_from(sorted(files)))
    p = d / f"m-{name}"
    p.write_bytes(data.draw(st.one_of(_mutations(files[name]), _aware(files[name], name))))
    _check_image_file(p)


# ---------------------------------------------------------------- DICOM
dicom_cases = st.fixed_dictionaries({
    "h": st.integers(1, 24), "w": st.integers(1, 24), "dtype": st.sampled_from([np.uint8, np.uint16]),
    "photometric": st.sampled_from(["MONOCHROME2", "MONOCHROME1"]), "bits": st.sampled_from([None, 8, 10, 12, 15]),
    "rescale": st.sampled_from([None, (1.0, 0.0), (2.0, -1024.0)]), "window": st.sampled_from([None, (128.0, 200.0)]),
    "seed": st.integers(0, 2**32 - 1)})


@budget(100)
@given(dicom_cases)
def test_dicom_reader_shape_range_and_inversion(tmp_path_factory, c):
    "Any size, depth, Modality LUT, window and photometric: (Rows, Columns) in [0, 1]; MONOCHROME1 reads as 1 - MONOCHROME2."
    TRIED["DICOM writes"] += 1
    bits = c["bits"] if c["bits"] and (c["dtype"] == np.uint16 or c["bits"] <= 8) else None
    top = 2 ** (bits or np.dtype(c["dtype"]).itemsize * 8)
    px = np.random.default_rng(c["seed"]).integers(0, top, (c["h"], c["w"])).astype(c["dtype"])
    d = tmp_path_factory.mktemp("dcm")
    kw = dict(bits_stored=bits, rescale=c["rescale"], window=c["window"])
    f1 = write_dicom(d / "m1.dcm", px, photometric=c["photometric"], **kw)
    f2 = write_dicom(d / "m2.dcm", px, photometric="MONOCHROME2", **kw)
    for minmax in (True, False):
        x1, x2 = read_dicom(f1, minmax=minmax), read_dicom(f2, minmax=minmax)
        assert x1.shape == (c["h"], c["w"]) and x1.dtype == np.float32 and 0 <= x1.min() <= x1.max() <= 1
        if c["photometric"] == "MONOCHROME1": np.testing.assert_allclose(x1, 1 - x2, atol=1e-6)
        else: np.testing.assert_array_equal(x1, x2)
    if c["window"] is None and c["rescale"] is None and bits is None:  # plain stored values over the dtype's range
        np.testing.assert_allclose(read_dicom(f2, minmax=False), px / (top - 1), atol=1e-6)


@pytest.fixture(scope="module")
def dicom_files(tmp_path_factory):
    "Real-format DICOMs: the SIIM Kaggle kind (CR, 8-bit, JPEG Baseline) and plain explicit-VR 8- and 16-bit files."
    import adapter_fixtures as fx
    d = tmp_path_factory.mktemp("dicoms")
    a = fx.gradient(16, 12)
    out = {}
    for name, kw in [("plain8.dcm", {}), ("mono1.dcm", {"photometric": "MONOCHROME1"})]:
        out[name] = write_dicom(d / name, a, patient_id="p1", sex="F", age=38, view="PA", **kw).read_bytes()
    out["deep.dcm"] = write_dicom(d / "deep.dcm", a.astype(np.uint16) * 200, bits_stored=12, rescale=(1.0, -100.0), window=(900.0, 1800.0)).read_bytes()
    out["jpeg.dcm"] = fx.jpeg_baseline(write_dicom(d / "jpeg.dcm", a, patient_id="p2", age=51, view="AP")).read_bytes()
    return d, out


def _check_dicom_file(p: Path):
    import pydicom
    from cxr_study.data.siim import _fast_header
    try: ds = pydicom.dcmread(p, stop_before_pixels=True); want = (int(ds.Rows), int(ds.Columns))
    except Exception: ds, want = None, None
    try: x = read_dicom(p)
    except Exception as e: named(e, p)
    else:
        assert want is not None and x.shape == want, (x.shape, want)
        assert x.dtype == np.float32 and np.isfinite(x).all() and 0 <= x.min() <= x.max() <= 1
    try: hw = image_size(p)
    except Exception as e: named(e, p)
    else: assert want is not None and hw == want
    # SIIM's fast header parser reads exactly what pydicom reads, or hands the file to pydicom (None)
    fast = _fast_header(p)
    if fast is not None:
        assert ds is not None, "the fast parser read a header pydicom cannot"
        ref = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SOPInstanceUID", "PatientID", "PatientSex", "PatientAge", "ViewPosition", "Rows", "Columns"])
        assert fast[0] == str(ref.SOPInstanceUID) and fast[5:] == (int(ref.Rows), int(ref.Columns)), (fast, ref)
        pid = str(ref.get("PatientID", "")) or None
        assert (fast[1] if isinstance(fast[1], str) else None) == pid, (fast[1], pid)


@budget(300)
@given(st.data())
def test_fuzz_dicom_files(dicom_files, data):
    "Mutated DICOMs (preamble, meta group, tags, lengths, pixel data): the read image has the header's size, or the error names the file."
    TRIED["DICOM mutated files"] += 1
    d, files = dicom_files
    name = data.draw(st.sampled_from(sorted(files)))
    p = d / f"m-{name}"
    p.write_bytes(data.draw(_mutations(files[name])))
    _check_dicom_file(p)


# ---------------------------------------------------------------- study files
def _study_text(tmp: Path) -> bytes:
    return shipped_study("demo").read_bytes()


yaml_tokens = st.sampled_from([b"\n", b": ", b"- ", b"[", b"]", b"{", b"}", b"'", b'"', b"!!python/object:os.system", b"&a", b"*a",
                               b"\t", b"\xff", b"\x00", b"~", b"yes", b"1e9", b"-1", b"24:00:00", b"?", b"%YAML 1.1\n", b"\xef\xbb\xbf"])


@budget(250)
@given(st.data())
def test_fuzz_study_files(tmp_path_factory, data):
    "Mutated study files (bytes and YAML tokens): a validated study, or a CxrStudyError naming the file; no YAML tag is executed."
    TRIED["study files"] += 1
    text = _study_text(tmp_path_factory.getbasetemp())
    m = data.draw(st.one_of(_mutations(text), st.tuples(st.integers(0, len(text)), st.lists(yaml_tokens, min_size=1, max_size=4)).map(
        lambda t: text[:t[0]] + b"".join(t[1]) + text[t[0]:])))
    p = tmp_path_factory.mktemp("yaml") / "study.yaml"
    p.write_bytes(m)
    try: cfg = load_study(p)
    except Exception as e: named(e, p); return
    assert isinstance(cfg, StudyCfg) and cfg.encoders and cfg.tasks and all(0 <= k < 5 for k in cfg.folds)


# ---------------------------------------------------------------- inputs that once crashed a reader
REGRESSIONS = sorted(FUZZ_DIR.glob("*.*")) if FUZZ_DIR.is_dir() else []


@pytest.mark.parametrize("path", [p for p in REGRESSIONS if p.suffix in (".png", ".jpg", ".dcm", ".yaml", ".rle")], ids=lambda p: p.name)
def test_crashing_inputs_found_by_fuzzing(path, tmp_path):
    "Each input kept from a fuzzing run that crashed a reader: now a result or a named error."
    p = tmp_path / path.name
    p.write_bytes(path.read_bytes())
    if path.suffix in (".png", ".jpg"): _check_image_file(p)
    elif path.suffix == ".dcm": _check_dicom_file(p)
    elif path.suffix == ".yaml":
        try: load_study(p)
        except Exception as e: named(e, p)
    else:
        case = json.loads(p.read_text())
        try: siim_rle_decode(case["rle"], case["h"], case["w"], where="f.csv")
        except Exception as e: named(e, Path("f.csv"))
        try: chexmask_rle_decode(case["rle"], case["h"], case["w"], where="f.csv")
        except Exception as e: named(e, Path("f.csv"))
