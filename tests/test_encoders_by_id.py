"""Encoders named by id (cxr_study.encoders.hub), offline, in the real layouts: timm models from timm's own
registry (their preprocessing against timm's `resolve_data_config` and eval transform), transformers models
written by `save_pretrained` with their image processors (against the processor's own tensor), an OpenCLIP
model in open_clip's hub layout (against open_clip's transform and `encode_image`), the same folders as
repositories of a Hugging Face cache, and every kind through a small grid end to end."""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from cxr_study.core import CxrStudyError, read_json
from cxr_study.data.preprocess import preprocess_image
from cxr_study.encoders.hub import describe_encoder
from cxr_study.encoders.registry import EncoderIdError, create_encoder, get_encoder_cfg
from cxr_study.encoders.weights import download_weights
from cxr_study.study.executors import run_study
from cxr_study.features.cache import extract_features
from cxr_study.study.protocols import study_images
from cxr_study.data.index import read_index
from cxr_study.reports.summary import row_label
from cxr_study.results import collect_results, list_runs, name_slug
from cxr_study.study.studyfile import validate_study

V = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)  # tiny widths, real architectures
IMAGENET = dict(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
HALF = dict(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
OPENAI = dict(mean=[0.48145466, 0.4578275, 0.40821073], std=[0.26862954, 0.26130258, 0.27577711])


@pytest.fixture(scope="module")
def xray():
    "A non-square 8-bit image with odd margins, so that resize and crop rounding show."
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, 301)[None, :] * np.linspace(0.2, 1, 259)[:, None]
    return (ramp * 200 + rng.integers(0, 50, (259, 301))).astype(np.uint8)


def rgb(img): return Image.fromarray(img).convert("RGB")


# ------------------------------------------------------------------ timm, from timm's own registry
TIMM = ["vit_small_patch16_224.augreg_in21k_ft_in1k", "vit_base_patch14_dinov2.lvd142m", "convnext_small.fb_in22k",
        "convnext_base.fb_in22k_ft_in1k_384", "resnet50.a1_in1k", "resnet50.tv_in1k"]


@pytest.mark.parametrize("name", TIMM)
def test_timm_preprocessing_is_timms(name, xray):
    "Size, crop, interpolation and mean/std are timm's `resolve_data_config`, and the tensor is timm's eval transform's."
    import timm
    from timm.data import create_transform, resolve_data_config
    with torch.device("meta"): model = timm.create_model(name, num_classes=0)
    dc = resolve_data_config(model=model)
    cfg = get_encoder_cfg(f"timm/{name}")
    p = cfg.preprocess
    assert (p.size, p.interpolation, p.mean, p.std) == (dc["input_size"][1], dc["interpolation"], tuple(dc["mean"]), tuple(dc["std"]))
    assert p.crop_pct == (dc["crop_pct"] if dc["crop_mode"] == "center" else None)
    assert p.resize == {"center": "shortest-crop", "squash": "squash"}[dc["crop_mode"]]
    torch.testing.assert_close(preprocess_image(xray, p), create_transform(**dc)(rgb(xray)), atol=1e-5, rtol=0)
    assert dict(cfg.sources)["preprocess.mean"] == "timm pretrained_cfg: mean"
    with torch.device("meta"):  # the measured widths and count are the model's own
        assert cfg.params == sum(q.numel() for q in model.parameters()) and cfg.pooled_dim == model.num_features


def test_timm_untagged_name_is_the_default_tag():
    cfg = get_encoder_cfg("timm/resnet50")
    assert cfg.arch.startswith("resnet50.a1_in1k") and cfg.weights.source == "timm/resnet50.a1_in1k"


def test_timm_border_crop_is_refused_then_overridable():
    "A crop the study's contract cannot express is an error that names the override, never an approximation."
    with pytest.raises(CxrStudyError, match=r"crop_mode 'border'.*\?resize=squash"):
        get_encoder_cfg("timm/deepseek_vit_412m.deepseek_v4_1_flash")
    cfg = get_encoder_cfg("timm/deepseek_vit_412m.deepseek_v4_1_flash?resize=squash")
    assert cfg.preprocess.resize == "squash" and dict(cfg.sources)["preprocess.resize"] == "override: ?resize=squash"


def test_timm_forward_and_pools():
    "The model's own head, the class token and the grid mean are three pooled features; the grid is forward_features'."
    import timm
    x = torch.randn(2, 3, 64, 64)
    encs = {k: create_encoder(f"timm/vit_tiny_patch16_224?pool={k}&size=64") for k in ("model", "cls", "mean")}
    torch.manual_seed(0)
    ref = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=64).eval()
    for e in encs.values(): e.model.load_state_dict(ref.state_dict())
    with torch.no_grad():
        feats = ref.forward_features(x)
        out = {k: e(x) for k, e in encs.items()}
    torch.testing.assert_close(out["model"].pooled, ref.forward_head(feats, pre_logits=True))
    torch.testing.assert_close(out["cls"].pooled, feats[:, 0])
    torch.testing.assert_close(out["mean"].pooled, out["mean"].grid.mean((2, 3)))
    torch.testing.assert_close(out["model"].grid, feats[:, 1:].transpose(1, 2).reshape(2, -1, 4, 4))
    with pytest.raises(CxrStudyError, match="class token"):
        get_encoder_cfg("timm/resnet18.a1_in1k?pool=cls")


def test_timm_hub_layout_folder(tmp_path, xray):
    "A folder written by timm's save_for_hf resolves to the same contract, and loads its weights."
    enc = create_encoder("timm/resnet18.a1_in1k?size=64")
    with torch.no_grad():
        for p in enc.parameters(): p.add_(0.01)
    folder = enc.save_release(tmp_path / "my-resnet")
    cfg = get_encoder_cfg(str(folder))
    reg = get_encoder_cfg("timm/resnet18.a1_in1k")
    assert cfg.preprocess == reg.preprocess and cfg.label == "my-resnet"  # the exported pretrained_cfg keeps timm's
    loaded = create_encoder(str(folder), pretrained=True)
    assert loaded.weights_tag.startswith("pretrained:my-resnet@")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(): torch.testing.assert_close(loaded(x).pooled, enc(x).pooled)


# ------------------------------------------------------------------ transformers, save_pretrained folders
def _hf_cases():
    import transformers as T
    return {  # the architecture at tiny widths, and its repository's image processor (the release's preprocessor_config.json values)
        "vit": (lambda: T.ViTModel(T.ViTConfig(image_size=224, patch_size=16, **V)),  # google/vit-base-patch16-224
                lambda: T.ViTImageProcessor(size={"height": 224, "width": 224}, resample=2, **HALF)),
        "dinov2": (lambda: T.Dinov2Model(T.Dinov2Config(image_size=518, patch_size=14, **V)),  # facebook/dinov2-small
                   lambda: T.BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                                               do_center_crop=True, resample=3, **IMAGENET)),
        "siglip": (lambda: T.SiglipModel(T.SiglipConfig(vision_config=dict(image_size=224, patch_size=16, **V),  # google/siglip-base-patch16-224
                                                        text_config=dict(vocab_size=64, **V))),
                   lambda: T.SiglipImageProcessor(size={"height": 224, "width": 224}, resample=3, **HALF)),
        "convnext": (lambda: T.ConvNextModel(T.ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1])),  # facebook/convnext-tiny-224
                     lambda: T.ConvNextImageProcessor(size={"shortest_edge": 224}, crop_pct=0.875, resample=3, **IMAGENET)),
    }


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    "Each architecture saved with save_pretrained, with its image processor, as a user's folder holds it."
    out = {}
    for k, (model, proc) in _hf_cases().items():
        d = tmp_path_factory.mktemp("hf") / f"tiny-{k}"
        torch.manual_seed(0)
        m = model().eval()
        m.save_pretrained(d); proc().save_pretrained(d)
        out[k] = (d, m)
    return out


EXPECTED_HF = {"vit": ("squash", 224, None, "bilinear", 16, "model"), "dinov2": ("shortest-crop", 224, 256, "bicubic", 14, "model"),
               "siglip": ("squash", 224, None, "bicubic", 16, "model"), "convnext": ("shortest-crop", 224, 256, "bicubic", 32, "model")}


@pytest.mark.parametrize("kind", list(EXPECTED_HF))
def test_transformers_folder(kind, hf_folders, xray):
    "The contract is the image processor's (its own tensor on the same image); pooled is the model's pooler_output."
    from transformers import AutoImageProcessor
    folder, model = hf_folders[kind]
    cfg = get_encoder_cfg(str(folder))
    p = cfg.preprocess
    assert (p.resize, p.size, p.resize_to, p.interpolation, cfg.grid_stride) == EXPECTED_HF[kind][:5]
    ref = AutoImageProcessor.from_pretrained(folder, backend="pil")(images=rgb(xray), return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(preprocess_image(xray, p), ref, atol=1e-5, rtol=0)
    enc = create_encoder(str(folder), pretrained=True)
    x = torch.randn(2, 3, p.size, p.size)
    tower = getattr(model, "vision_model", model)  # SigLIP: the vision tower of the saved vision-language model
    with torch.no_grad():
        out, ref_out = enc(x), tower(pixel_values=x)
    torch.testing.assert_close(out.pooled, ref_out.pooler_output)
    assert out.grid.shape == (2, cfg.grid_dim, cfg.grid_size, cfg.grid_size)
    if kind == "siglip": assert "the vision tower of siglip" in cfg.arch and "text" not in " ".join(enc.state_dict())


def test_transformers_without_a_pooler_says_so(tmp_path):
    "A release without trained pooler weights is not given a random pooler: the error names ?pool=cls."
    import transformers as T
    d = tmp_path / "vit-no-pooler"
    T.ViTModel(T.ViTConfig(image_size=32, patch_size=16, **V), add_pooling_layer=False).save_pretrained(d)
    with pytest.raises(CxrStudyError, match=r"pooler.*\?pool=cls"):
        create_encoder(str(d), pretrained=True)
    enc = create_encoder(f"{d}?pool=cls", pretrained=True)
    cfg = enc.cfg
    # no preprocessor_config.json: the defaults are stated, field by field
    assert dict(cfg.sources)["preprocess.mean"] == "default (no preprocessor_config.json): ImageNet"
    assert dict(cfg.sources)["preprocess.size"] == "config.json: image_size" and cfg.preprocess.size == 32


# ------------------------------------------------------------------ OpenCLIP, hub layout
OC_CFG = {"embed_dim": 16, "vision_cfg": {"image_size": 64, "layers": 2, "width": 32, "patch_size": 16, "head_width": 16},
          "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}}
OC_PRE = {**OPENAI, "interpolation": "bicubic", "resize_mode": "shortest"}


@pytest.fixture(scope="module")
def oc_folder(tmp_path_factory):
    "A CLIP model built by open_clip from its model config, saved in open_clip's hub layout."
    from open_clip.model import CLIP
    d = tmp_path_factory.mktemp("oc") / "tiny-clip"
    d.mkdir()
    torch.manual_seed(0)
    clip = CLIP(**OC_CFG).eval()
    torch.save(clip.state_dict(), d / "open_clip_pytorch_model.bin")
    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": OC_CFG, "preprocess_cfg": OC_PRE}))
    return d, clip


def test_open_clip_folder(oc_folder, xray):
    from open_clip.transform import PreprocessCfg, image_transform_v2
    folder, clip = oc_folder
    cfg = get_encoder_cfg(str(folder))
    ref = image_transform_v2(PreprocessCfg(**OC_PRE, size=64), is_train=False)(rgb(xray))
    torch.testing.assert_close(preprocess_image(xray, cfg.preprocess), ref, atol=1e-5, rtol=0)
    assert dict(cfg.sources)["preprocess.std"] == "open_clip_config.json preprocess_cfg: std"
    enc = create_encoder(str(folder), pretrained=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(): torch.testing.assert_close(enc(x).pooled, clip.encode_image(x))  # open_clip's own image embedding
    assert (cfg.pooled_dim, cfg.grid_dim, cfg.grid_stride, cfg.layers) == (16, 32, 16, ("block0", "block1", "final"))


def test_open_clip_registry_tag():
    "An architecture and tag of open_clip's registry: the tag's preprocessing and hub repository, the tower measured on meta."
    import open_clip
    cfg = get_encoder_cfg("open_clip:ViT-B-32/laion2b_s34b_b79k")
    pc = open_clip.get_pretrained_cfg("ViT-B-32", "laion2b_s34b_b79k")
    assert cfg.preprocess.mean == tuple(pc["mean"]) and cfg.preprocess.interpolation == pc["interpolation"]
    assert cfg.weights.source == pc["hf_hub"].strip("/") and cfg.weights.format == "open_clip"
    with torch.device("meta"):
        visual = open_clip.create_model("ViT-B-32", device="meta").visual
    assert cfg.params == sum(p.numel() for p in visual.parameters())


# ------------------------------------------------------------------ the same folders as Hugging Face cache repositories
def _cache_repo(root, repo, folder, rev="0123abcd", skip=()):
    "Copy `folder` into the hub cache layout (snapshots/<rev>/..., refs/main)."
    r = root / ("models--" + repo.replace("/", "--"))
    shutil.copytree(folder, r / "snapshots" / rev, ignore=shutil.ignore_patterns(*skip))
    (r / "refs").mkdir()
    (r / "refs" / "main").write_text(rev)
    return r


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as hfc
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    (tmp_path / "hub").mkdir()
    return tmp_path / "hub"


def test_hub_ids_from_the_cache(hub_cache, hf_folders, oc_folder):
    "hf-hub ids: open_clip_config.json makes an OpenCLIP model, config.json with model_type a transformers one."
    _cache_repo(hub_cache, "acme/tiny-dinov2", hf_folders["dinov2"][0])
    _cache_repo(hub_cache, "acme/tiny-clip", oc_folder[0])
    d = create_encoder("hf-hub:acme/tiny-dinov2", pretrained=True)
    assert d.weights_tag == "pretrained:acme/tiny-dinov2@0123abcd" and type(d).__name__ == "HFIdEncoder"
    c = create_encoder("hf-hub:acme/tiny-clip", pretrained=True)
    assert c.weights_tag == "pretrained:acme/tiny-clip@0123abcd" and type(c).__name__ == "OpenClipIdEncoder"
    assert c.cfg.weights.source == "acme/tiny-clip" and c.cfg.label == "hf-hub:acme/tiny-clip"


def test_hub_id_missing_config_names_the_command_and_cache(hub_cache, hf_folders):
    with pytest.raises(CxrStudyError) as e:
        get_encoder_cfg("hf-hub:acme/not-here")
    msg = str(e.value)
    assert 'hf download acme/not-here --include "*config.json"' in msg and str(hub_cache) in msg and "--download" in msg
    _cache_repo(hub_cache, "acme/no-processor", hf_folders["vit"][0], skip=("preprocessor_config.json",))
    with pytest.raises(CxrStudyError, match="preprocessor_config.json"):  # not known absent: not silently defaulted
        get_encoder_cfg("hf-hub:acme/no-processor")


def test_download_fetches_configuration_then_weights(hub_cache, hf_folders, monkeypatch):
    "--download of an hf-hub id: its configuration files (those the repo holds), then its weights, into the cache."
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError
    src, calls = hf_folders["dinov2"][0], []
    snap = hub_cache / "models--acme--tiny-dinov2" / "snapshots" / "fedcba98"

    def put(fn):
        snap.mkdir(parents=True, exist_ok=True); shutil.copy(src / fn, snap / fn)
        (snap.parent.parent / "refs").mkdir(exist_ok=True); (snap.parent.parent / "refs" / "main").write_text("fedcba98")
        return str(snap / fn)

    def fake_file(repo_id, filename, token=None, **kw):
        calls.append(filename)
        if not (src / filename).is_file(): raise EntryNotFoundError(f"{filename}")
        return put(filename)

    def fake_snapshot(repo_id, allow_patterns=None, token=None, **kw):
        calls.extend(allow_patterns)
        for fn in allow_patterns:
            if (src / fn).is_file(): put(fn)

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_file)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda repo_id, token=None: [p.name for p in src.iterdir()])
    p = download_weights("hf-hub:acme/tiny-dinov2")
    assert p == snap / "model.safetensors"
    assert calls[:3] == ["open_clip_config.json", "config.json", "preprocessor_config.json"] and "model.safetensors" in calls
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert create_encoder("hf-hub:acme/tiny-dinov2", pretrained=True).weights_tag == "pretrained:acme/tiny-dinov2@fedcba98"


def test_download_offline_says_so(hub_cache):
    with pytest.raises(CxrStudyError, match='offline.*hf download acme/x --include'):
        download_weights("hf-hub:acme/x")


# ------------------------------------------------------------------ errors that name the accepted forms
@pytest.mark.parametrize("name, says", [
    ("timm/not_a_model", "timm has no model 'not_a_model'"), ("timm/resnet18.no_such_tag", "tags of resnet18: resnet18.a1_in1k"),
    ("open_clip:NoSuchArch", "OpenCLIP has no architecture"), ("hf-hub:just-a-name", "not a Hugging Face repo id"),
    ("timm/resnet18?pool=max", "pool=max"), ("./no/such/folder", "is not an existing folder"), ("tfhub:org/x", "not a registered name"),
    ("resnet_18", "unknown encoder 'resnet_18'")])
def test_unknown_or_malformed_ids_are_named_errors(name, says):
    with pytest.raises(EncoderIdError) as e:
        create_encoder(name)
    assert says in str(e.value) and "timm/<model>" in str(e.value) and "open_clip:<arch>" in str(e.value), str(e.value)


def test_local_folder_without_weights(tmp_path, oc_folder):
    d = tmp_path / "config-only"
    d.mkdir(); shutil.copy(oc_folder[0] / "open_clip_config.json", d)
    create_encoder(str(d))  # random init needs only the configuration
    with pytest.raises(CxrStudyError, match="holds none of"):
        create_encoder(str(d), pretrained=True)


# ------------------------------------------------------------------ every kind through a small grid, end to end
PROBE = {"lr": 0.05, "batch_size": 32, "max_epochs": 4, "patience": 2, "loss_size": 16}


@pytest.fixture(scope="module")
def grid(tiny_benchmark, hf_folders, oc_folder, tmp_path_factory):
    "A study of ids of every kind beside a registered encoder and the prior, inline, one fold, two tasks."
    ids = ["timm/vit_tiny_patch16_224?size=64", {"id": "timm/resnet18.a1_in1k", "size": 64, "pool": "mean"},
           *[str(hf_folders[k][0]) for k in ("vit", "dinov2", "siglip", "convnext")], str(oc_folder[0])]
    out = tmp_path_factory.mktemp("byid-study")
    raw = {"data": str(tiny_benchmark), "out": str(out), "encoders": ["prior", "raw-pixels", *ids], "folds": [0],
           "tasks": ["cardiomegaly-cls", "heart-seg"], "settings": {"linear-probe": {"probe": PROBE}},
           "executor": {"kind": "inline"}, "report": {"enabled": False}}
    cfg = validate_study(raw)
    st = run_study(cfg, show_progress=False)
    return cfg, st, out


def test_grid_runs_every_kind(grid):
    cfg, st, out = grid
    assert (st.status == "done").all(), st[st.status != "done"].to_string()
    res, _ = collect_results(out)
    ids = [e for e in cfg.encoders if e not in ("prior", "raw-pixels")]
    assert set(res.encoder) == set(cfg.encoders) and "timm/resnet18.a1_in1k?pool=mean&size=64" in ids  # the mapping, as its id
    assert res.groupby("encoder").size().eq(2).all()  # two tasks, one fold each
    cls = res[res.task == "cardiomegaly-cls"].set_index("encoder")
    assert cls.loc[ids, "auroc"].between(0, 1).all()


def test_grid_run_folders_are_slugs_and_tables_show_the_id(grid):
    cfg, _, out = grid
    runs = list_runs(out)
    assert set(runs.encoder) == set(cfg.encoders)  # the id, read from run.json, not the folder's slug
    for e in cfg.encoders:
        folder = out / "runs" / name_slug(e)
        assert folder.is_dir() and len(folder.name) <= 72 and "/" not in folder.name and ":" not in folder.name
    assert (out / "runs" / "raw-pixels").is_dir()  # registered names keep their folders
    cache = [p.name for p in (out / "cache").iterdir() if p.is_dir()]
    assert all(any(c.startswith(name_slug(e) + "-") for c in cache) for e in cfg.encoders if e != "prior")
    tim = "timm/vit_tiny_patch16_224?size=64"
    assert row_label(tim, "random-init") == f"{tim} (untrained)"  # a candidate, labelled by its id
    assert row_label(str(out), "random-init") == f"{out} (untrained)"  # an unknown name stays itself


def test_grid_records_what_each_id_resolved_to(grid):
    cfg, _, out = grid
    vit = "timm/vit_tiny_patch16_224?size=64"
    rec = read_json(out / "runs" / name_slug(vit) / "cardiomegaly-cls" / "linear-probe" / "run.json")["encoder_cfg"]
    assert rec["name"] == vit and rec["preprocess"]["size"] == 64 and rec["preprocess"]["crop_pct"] == 0.9
    assert rec["sources"]["preprocess.size"] == "override: ?size=64"
    assert rec["sources"]["preprocess.crop_pct"] == "timm pretrained_cfg: crop_pct"
    assert rec["sources"]["pooled"].startswith("the model's own head")
    dino = [e for e in cfg.encoders if e.endswith("tiny-dinov2")][0]
    rec = read_json(out / "runs" / name_slug(dino) / "heart-seg" / "linear-probe" / "run.json")["encoder_cfg"]
    assert rec["sources"]["preprocess.resize_to"] == "preprocessor_config.json: size" and rec["grid_stride"] == 14
    assert "encoder_cfg" not in read_json(out / "runs" / "raw-pixels" / "heart-seg" / "linear-probe" / "run.json")


def test_grid_again_runs_nothing(grid):
    cfg, _, out = grid
    st = run_study(cfg, show_progress=False)
    assert (st.status == "skipped (complete)").all(), st


def test_feature_cache_is_keyed_by_the_weights_digest(tiny_benchmark, hf_folders, tmp_path):
    "A local folder's own weights are keyed by their bytes: other weights in the same folder are another cache entry."
    src = hf_folders["vit"][0]
    d = tmp_path / "tiny-vit"
    shutil.copytree(src, d)
    images = study_images(read_index(tiny_benchmark / "index.parquet")).head(8)
    kw = dict(pretrained=True, encoder_kwargs={"input_size": 32})
    a = extract_features(f"{d}?pool=mean", images, tiny_benchmark, tmp_path / "cache", **kw)
    assert a.meta["weights_tag"].startswith("pretrained:tiny-vit@") and a.meta["key"]["preprocess"]["size"] == 32
    enc = create_encoder(str(d), pretrained=True)
    with torch.no_grad():
        for p in enc.parameters(): p.mul_(1.5)
    enc.save_release(d)
    b = extract_features(f"{d}?pool=mean", images, tiny_benchmark, tmp_path / "cache", **kw)
    assert b.path != a.path and b.meta["weights_tag"] != a.meta["weights_tag"]
    assert a.path.name.startswith(name_slug(f"{d}?pool=mean") + "-")


def test_describe_a_registered_name_and_an_id():
    from cxr_study.study.plan import encoder_profile
    txt = describe_encoder("timm/convnext_atto.d2_in1k", encoder_profile("timm/convnext_atto.d2_in1k"))
    assert "GFLOP at 224 px" in txt and "preprocess.crop_pct" in txt and "timm pretrained_cfg: crop_pct" in txt
    assert "the registry entry" in describe_encoder("resnet18")


def test_cli_describe_and_bad_id(tmp_path):
    import contextlib, io
    from cxr_study.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out): assert main(["encoders", "--describe", "timm/resnet18.a1_in1k?pool=mean"]) == 0
    assert "timm/resnet18.a1_in1k?pool=mean" in out.getvalue() and "override: ?pool=mean" in out.getvalue()
    with contextlib.redirect_stderr(err):
        assert main(["run", "--encoder", "timm/no_such_model", "--task", "heart-seg", "--data", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert err.getvalue().startswith("error: encoder 'timm/no_such_model': timm has no model") and "hf-hub:<org>/<name>" in err.getvalue()
