"""Registry preprocessing against the values each release publishes (tests/fixtures/release_preprocessing.json,
with the file each value comes from), not against the registry's own configuration.

Every registry entry must have a fixture entry (a new encoder without one fails here). Each entry is checked
twice: its `PreprocessCfg` fields against the fixture's numbers, and `preprocess_image` against the release's
own pipeline rebuilt from the fixture's numbers with the library the release uses (a transformers image
processor, open_clip's transform, the release's torchvision or PIL code, timm's eval transform). The small timm
encoders are also checked against timm's live `pretrained_cfg` / `resolve_data_config`. Runtime: about 35 s on a busy 2-core machine."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxr_study.data.preprocess import preprocess_image
from cxr_study.encoders.registry import cfg_at_size, get_encoder_cfg, list_encoders

RELEASES = {k: v for k, v in json.loads((Path(__file__).parent / "fixtures" / "release_preprocessing.json").read_text()).items()
            if not k.startswith("_")}
PIL_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}  # PIL.Image.Resampling values


@pytest.fixture(scope="module")
def xray():
    "A non-square 8-bit image with sharp detail and odd crop margins."
    return ((np.arange(259 * 301) * 7) % 251).reshape(259, 301).astype(np.uint8)


def release_pipeline(rel: dict):
    "The release's own preprocessing, built from the fixture's numbers (never from the registry) with the release's library."
    size, mean, std = rel["size"], rel["image_mean"], rel["image_std"]
    lib = rel["library"]
    if lib == "transformers":
        import transformers
        kw = dict(image_mean=mean, image_std=std, resample=rel["resample"], rescale_factor=rel["rescale_factor"], do_convert_rgb=True)
        if rel["resize"] == "shortest-crop":
            kw.update(size={"shortest_edge": rel["shortest_edge"]}, crop_size={"height": size, "width": size}, do_center_crop=True)
        else: kw.update(size={"height": size, "width": size})
        proc = getattr(transformers, rel["processor"] + "Pil")(**kw)  # the PIL backend, as the releases' processors were written
        return lambda im: proc(images=im, return_tensors="pt")["pixel_values"][0]
    if lib == "open_clip":  # only what open_clip_config.json sets; the rest is open_clip's own default
        from open_clip.transform import image_transform
        return image_transform(size, is_train=False, mean=mean, std=std)
    if lib == "torchvision":  # MedImageInsight's build_transforms(is_train=False) with TEST.CENTER_CROP false
        import torchvision.transforms as T
        return T.Compose([T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(), T.Normalize(mean, std)])
    if lib == "pil":  # Ark+'s release code: PIL resize with its default filter, / 255, normalise
        def ark(im):
            a = np.array(im.resize((size, size))) / 255.0
            return torch.from_numpy(((a - mean) / std).transpose(2, 0, 1).astype("float32"))
        return ark
    if lib == "pil-gray":  # the project's own control: PIL squash resize of the gray image, / 255, normalise, one channel
        def gray(im):
            a = np.asarray(im.convert("L").resize((size, size), resample=rel["resample"]), np.float32) / 255.0
            return torch.from_numpy(((a - mean[0]) / std[0])[None].astype("float32"))
        return gray
    if lib == "timm":
        import timm
        from timm.data import create_transform, resolve_data_config
        return create_transform(**resolve_data_config({}, model=timm.create_model(rel["timm_name"], pretrained=False)))
    raise AssertionError(f"unknown library {lib!r}")


def test_every_registry_entry_has_a_release_fixture():
    missing = sorted(set(list_encoders()) - set(RELEASES))
    assert not missing, f"no release preprocessing recorded in tests/fixtures/release_preprocessing.json for {missing}"
    assert all(RELEASES[n]["source"] for n in RELEASES)


@pytest.mark.parametrize("name", list_encoders())
def test_preprocessing_values_match_the_release(name):
    rel, cfg = RELEASES[name], get_encoder_cfg(name)
    if rel["library"] is None:  # no release: only the parameter-free reference may say so
        assert cfg.weights.source is None and not cfg.weights.file and cfg.params == 0
        return
    p = cfg.preprocess
    assert p.size == rel["size"], rel["source"]
    assert p.resize == rel["resize"], rel["source"]
    if rel["resize"] == "shortest-crop": assert p.resize_to == rel["shortest_edge"], rel["source"]
    assert p.interpolation == PIL_NAMES[rel["resample"]], rel["source"]
    assert list(p.mean) == pytest.approx(rel["image_mean"]) and list(p.std) == pytest.approx(rel["image_std"]), rel["source"]
    assert rel["rescale_factor"] == pytest.approx(1 / 255), rel["source"]  # preprocess_image scales 8-bit values by 1/255


@pytest.mark.parametrize("name", [n for n in list_encoders() if RELEASES.get(n, {}).get("library")])
def test_preprocess_image_matches_the_release_pipeline(name, xray):
    "The registry's contract gives the tensor of the release's own pipeline, on the same image."
    p = get_encoder_cfg(name).preprocess
    ours = preprocess_image(xray, p)
    theirs = release_pipeline(RELEASES[name])(Image.fromarray(xray).convert("RGB")).float()
    assert tuple(ours.shape) == tuple(theirs.shape) == (RELEASES[name].get("channels", 3), RELEASES[name]["size"], RELEASES[name]["size"])
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", [n for n, r in RELEASES.items() if r.get("library") == "timm"])
def test_small_timm_encoders_follow_timms_pretrained_cfg(name):
    "The fixture and the registry agree with timm's own pretrained_cfg (bicubic, crop_pct, mean/std)."
    import timm
    from timm.data import resolve_data_config
    rel, p = RELEASES[name], get_encoder_cfg(name).preprocess
    model = timm.create_model(rel["timm_name"], pretrained=False)
    pc, dc = model.pretrained_cfg, resolve_data_config({}, model=model)
    assert (pc["hf_hub_id"], pc["architecture"]) == (get_encoder_cfg(name).weights.source, rel["timm_name"].split(".")[0])
    assert dc["input_size"] == (3, p.size, p.size) and dc["interpolation"] == p.interpolation == "bicubic"
    assert dc["crop_mode"] == "center" and p.resize == "shortest-crop" and p.crop_pct == dc["crop_pct"]
    assert p.resize_to == math.floor(p.size / dc["crop_pct"]) == rel["shortest_edge"]  # timm's Resize(floor(size / crop_pct))
    assert tuple(p.mean) == tuple(dc["mean"]) and tuple(p.std) == tuple(dc["std"])


@pytest.mark.parametrize("name", [n for n, r in RELEASES.items() if r.get("library") == "timm"])
def test_small_timm_encoders_at_a_common_resolution_follow_timm(name, xray):
    "At another input size timm keeps crop_pct; so does `cfg_at_size`: the same tensor as timm's eval transform at 448."
    import timm
    from timm.data import create_transform, resolve_data_config
    model = timm.create_model(RELEASES[name]["timm_name"], pretrained=False)
    theirs = create_transform(**resolve_data_config({"input_size": (3, 448, 448)}, model=model))
    p = cfg_at_size(get_encoder_cfg(name), 448).preprocess
    torch.testing.assert_close(preprocess_image(xray, p), theirs(Image.fromarray(xray).convert("RGB")), atol=1e-5, rtol=0)
