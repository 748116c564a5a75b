"""Registry preprocessing against the values each release publishes (tests/fixtures/release_preprocessing.json,
with the file each value comes from), not against the registry's own configuration."""
import json
from pathlib import Path

import pytest

from cxr_study.encoders.registry import get_encoder_cfg

RELEASES = json.loads((Path(__file__).parent / "fixtures" / "release_preprocessing.json").read_text())
PIL_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}  # PIL.Image.Resampling values


@pytest.mark.parametrize("name", sorted(RELEASES))
def test_preprocessing_matches_the_release(name):
    rel, p = RELEASES[name], get_encoder_cfg(name).preprocess
    assert p.size == rel["size"], rel["source"]
    assert p.interpolation == PIL_NAMES[rel["resample"]], rel["source"]
    assert list(p.mean) == pytest.approx(rel["image_mean"]) and list(p.std) == pytest.approx(rel["image_std"]), rel["source"]
