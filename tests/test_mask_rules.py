"""The two mask rules. `"study"` must be what the study did: the mask as an 8-bit image through the model's own
Hugging Face processor (its resize, crop and rescale, no normalisation), kept above 0.66. The reference here is the
processor itself, built from the release's preprocessing values, not the project's configuration."""
import json
from pathlib import Path

import numpy as np
import pytest

from cxr_study.data.preprocess import load_masks, preprocess_mask
from cxr_study.encoders.registry import get_encoder_cfg

transformers = pytest.importorskip("transformers")
FIX = json.loads((Path(__file__).parent/"fixtures"/"release_preprocessing.json").read_text())

def _masks(seed=0, n=6):
    "Masks of the shapes that matter: a pneumothorax-like thin crescent, a heart-like blob, on non-square images."
    rng = np.random.default_rng(seed)
    for _ in range(n):
        h, w = rng.integers(300, 700, 2)
        yy, xx = np.mgrid[:h, :w]
        cy, cx, r = h * rng.uniform(0.3, 0.7), w * rng.uniform(0.3, 0.7), min(h, w) * rng.uniform(0.1, 0.3)
        d = np.hypot(yy - cy, xx - cx)
        yield (d < r) & (d > r - rng.uniform(2, 12)) if rng.random() < 0.5 else d < r

def _pil(name):
    "The PIL processor: transformers 4's only one, the one the study ran (transformers 5 names it `<name>Pil`)."
    return getattr(transformers, name + "Pil", None) or getattr(transformers, name)

def _processor_rule(processor, m):
    rgb = np.repeat((m.astype(np.uint8) * 255)[..., None], 3, axis=2)
    x = processor(images=rgb, do_normalize=False, return_tensors="np")["pixel_values"][0, 0]
    return x > 0.66

def test_study_rule_is_medsiglips_processor():
    # google/medsiglip-448 preprocessor_config.json: SiglipImageProcessor, 448 x 448, resample 3 (bicubic)
    f = FIX["medsiglip"]
    proc = _pil("SiglipImageProcessor")(size={"height": f["size"], "width": f["size"]}, resample=f["resample"])
    pcfg = get_encoder_cfg("medsiglip").preprocess
    for m in _masks():
        np.testing.assert_array_equal(preprocess_mask(m, pcfg, rule="study"), _processor_rule(proc, m))

def test_study_rule_is_dinov2s_processor():
    # facebook/dinov2-base preprocessor_config.json: BitImageProcessor, shortest edge 256, centre crop 224 x 224,
    # resample 3 (bicubic); transformers' centre crop puts an odd margin's extra pixel at the far side
    proc = _pil("BitImageProcessor")(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                                          do_center_crop=True, resample=3, do_convert_rgb=True)
    pcfg = get_encoder_cfg("dinov2").preprocess
    for m in _masks(seed=1):
        np.testing.assert_array_equal(preprocess_mask(m, pcfg, rule="study"), _processor_rule(proc, m))

def test_default_rule_keeps_area_and_study_rule_shrinks_thin_structures():
    "Exact enumeration of areas: a 40-pixel band keeps its area (to the pixel grid) by default, and loses its rim by the study's rule."
    pcfg = get_encoder_cfg("medsiglip").preprocess
    scale = (pcfg.size / 1024) ** 2
    for x0 in range(500, 540, 7):
        band = np.zeros((1024, 1024), bool); band[200:800, x0:x0 + 40] = True
        true = 600 * 40 * scale
        assert abs(preprocess_mask(band, pcfg).sum() / true - 1) < 0.05
        assert preprocess_mask(band, pcfg, rule="study").sum() / true < 0.97

def test_run_records_its_rule(tmp_path):
    from cxr_study.study.runner import RunSpec
    params = lambda **o: RunSpec.of("resnet18", "heart-seg", data_dir=tmp_path, folds=[0], seed=1, **o).params()
    assert params()["mask_resize"] == "bilinear"
    assert params(mask_resize="study")["mask_resize"] == "study"
    assert params() != params(mask_resize="study")

def test_study_file_takes_the_rule_and_names_a_wrong_one():
    from cxr_study.core import CxrStudyError
    from cxr_study.study.studyfile import expand_study, load_study, shipped_study
    s = load_study(shipped_study("demo"), {"settings.linear-probe.mask_resize": "study"})
    assert {r.params()["mask_resize"] for r in expand_study(s)} == {"study"}
    assert {r.params()["mask_resize"] for r in expand_study(load_study(shipped_study("demo")))} == {"bilinear"}
    with pytest.raises(CxrStudyError, match="mask_resize: expected one of bilinear, study"):
        load_study(shipped_study("demo"), {"settings.linear-probe.mask_resize": "nearest"})
