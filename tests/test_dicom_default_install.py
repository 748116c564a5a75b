"SIIM-ACR's DICOMs (JPEG Baseline) read with the default install, Pillow decoding them; pylibjpeg (GPL-3.0 libjpeg) is an extra."
import configparser
import json
import subprocess
import sys
import textwrap
from pathlib import Path

from adapter_fixtures import siim_dicom

ROOT = Path(__file__).resolve().parents[1]

# what a default install lacks: pylibjpeg and its plugins (and gdcm) cannot be imported
WITHOUT_EXTRA = textwrap.dedent("""
    import sys
    for m in ("pylibjpeg", "libjpeg", "openjpeg", "rle", "gdcm", "pyjpegls"): sys.modules[m] = None
""")


def _run(code: str) -> dict:
    r = subprocess.run([sys.executable, "-c", WITHOUT_EXTRA + textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_siim_jpeg_baseline_reads_with_pillow_alone(tmp_path):
    siim_dicom(tmp_path)
    files = sorted(str(p) for p in tmp_path.rglob("*.dcm"))
    out = _run(f"""
        import io, json
        import numpy as np, pydicom
        from PIL import Image
        from pydicom.encaps import generate_frames
        from pydicom.pixels import get_decoder
        from cxr_study.data.readers import read_dicom
        res = {{"plugins": list(get_decoder(pydicom.uid.JPEGBaseline8Bit).available_plugins), "files": []}}
        for f in {files!r}:
            ds = pydicom.dcmread(f)
            x = read_dicom(f)
            if ds.file_meta.TransferSyntaxUID.is_compressed:  # Pillow's own decode of the JPEG frame, min-max scaled
                ref = np.asarray(Image.open(io.BytesIO(next(generate_frames(ds.PixelData, number_of_frames=1)))), dtype=np.float64)
            else: ref = ds.pixel_array.astype(np.float64)
            ref = (ref - ref.min()) / (ref.max() - ref.min())
            res["files"].append([str(ds.file_meta.TransferSyntaxUID), float(np.abs(x - ref).max()), list(x.shape)])
        print(json.dumps(res))
    """)
    assert out["plugins"] == ["pillow"]  # pylibjpeg really is absent
    syntaxes = [s for s, _, _ in out["files"]]
    assert syntaxes.count("1.2.840.10008.1.2.4.50") == 3 and len(syntaxes) == 4  # SIIM's JPEG Baseline, and one uncompressed
    for _, err, shape in out["files"]:
        assert shape == [32, 32] and err < 1e-6


def test_a_syntax_pillow_cannot_decode_names_the_extra():
    out = _run("""
        import json
        from pydicom.data import get_testdata_file
        from cxr_study.core import CxrStudyError
        from cxr_study.data.readers import read_dicom
        try: read_dicom(get_testdata_file("MR_small_jpeg_ls_lossless.dcm")); msg = None
        except CxrStudyError as e: msg = str(e)
        print(json.dumps({"msg": msg}))
    """)
    assert out["msg"] and "JPEG-LS Lossless" in out["msg"] and 'pip install "cxr-study[dicom]"' in out["msg"], out


def test_gpl_decoder_is_an_extra_and_psutil_a_dev_dependency():
    cfg = configparser.ConfigParser(); cfg.read(ROOT / "settings.ini", encoding="utf-8")
    names = lambda key: {r.split(">")[0].split("=")[0].split("<")[0] for r in cfg["DEFAULT"][key].split()}
    assert not names("requirements") & {"pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "psutil"}
    assert {"pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg"} <= names("dicom_requirements")
    assert "psutil" in names("dev_requirements")
