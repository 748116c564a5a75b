"""Contracts every registered encoder must meet. The tests loop over `list_encoders()`, so an
encoder is tested the moment it is registered. Full-size models are built on the meta device
(structure, parameter count, output shapes, no memory); real forwards and checkpoint round trips
use the entry's reduced variant (same family and key layout, fewer and narrower layers)."""
import gc
import inspect
import time

import numpy as np
import pytest
import torch
from PIL import Image

from cxr_study.core import CxrStudyError
from cxr_study.data.preprocess import preprocess_image
from cxr_study.encoders.registry import create_encoder, get_encoder_cfg, list_encoders
from cxr_study.encoders.zoo import reference_processor

ALL = list_encoders()
BY_ID = ["timm/vit_tiny_patch16_224"]  # an encoder named by id (cxr_study.encoders.hub) meets the same contracts
ENTRIES = ALL + BY_ID
COMMON_SIZE = 448  # a multiple of every study stride (14, 16, 32)


def _accepts(name, option):
    return option in inspect.signature(get_encoder_cfg(name).builder).parameters


def _reduced(name, **kw):
    "The cheapest real build of an entry: its reduced variant if it has one."
    return create_encoder(name, reduced=True, **kw) if _accepts(name, "reduced") else create_encoder(name, **kw)


def _id_reference(name, size=None):
    "The reference processor of a timm id: timm's own eval transform from `resolve_data_config` (at `size` if given)."
    if not name.startswith("timm/"): return None
    import timm
    from timm.data import create_transform, resolve_data_config
    with torch.device("meta"): model = timm.create_model(name[5:], num_classes=0)
    dc = resolve_data_config(model=model)
    return create_transform(**{**dc, "input_size": (3, size, size)} if size else dc)


@pytest.fixture(scope="module")
def xray():
    "A small non-square 8-bit image: odd crop margins exercise the crop rounding."
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, 301)[None, :] * np.linspace(0.2, 1, 259)[:, None]
    return (ramp * 200 + rng.integers(0, 50, (259, 301))).astype(np.uint8)


@pytest.mark.parametrize("name", ENTRIES)
def test_entry_is_complete(name):
    cfg = get_encoder_cfg(name)
    assert cfg.label and cfg.arch and cfg.pooled_def and cfg.grid_def and cfg.domain and cfg.paradigm
    assert cfg.params is not None and cfg.pooled_dim > 0 and cfg.grid_dim > 0
    assert cfg.preprocess.size % cfg.grid_stride == 0
    assert cfg.layers
    if cfg.params:  # has weights: provenance is recorded
        w = cfg.weights
        assert (w.source or w.file) and w.paper and w.license


@pytest.mark.parametrize("name", ENTRIES)
def test_full_size_structure(name):
    "Full architecture, measured parameter count (`cfg.params`, a regression guard) and output shapes, on the meta device."
    cfg = get_encoder_cfg(name)
    s = cfg.preprocess.size
    with torch.device("meta"):
        enc = create_encoder(name)
        assert sum(p.numel() for p in enc.parameters()) == cfg.params  # measured on this build: see the published check below
        x = torch.zeros(1, cfg.preprocess.channels, s, s)
        out = enc(x)
        inter = enc.forward_intermediates(x)
    assert enc.weights_tag in ("random-init", "none") or cfg.weights.format == "package"  # shipped weights load by default
    assert tuple(out.pooled.shape) == (1, cfg.pooled_dim)
    assert tuple(out.grid.shape) == (1, cfg.grid_dim, cfg.grid_size, cfg.grid_size)
    assert list(inter) == list(cfg.layers)
    assert all(t.ndim == 4 and t.shape[0] == 1 for t in inter.values())
    del enc, out, inter; gc.collect()


def _torchvision_params(weights: str) -> int:
    "A parameter count torchvision publishes with its ImageNet weights (`Weights.meta['num_params']`)."
    import torchvision.models as tvm
    enum, member = weights.split(".")
    return getattr(tvm, enum)[member].meta["num_params"]


# Published parameter counts, each with its source and a stated tolerance. A published model that carries an
# ImageNet-1k classifier is compared as (the encoder's count + that classifier: D x 1000 + 1000), since the encoders
# here have none. `tolerance` is in parameters; for a figure rounded in print it is half its last digit.
# Entries with `None` have no published count and are checked only against their measured `cfg.params`.
PUBLISHED = {
    "raw-pixels": dict(count=lambda: 0, head=0, tolerance=0, source="no parameters by construction (16 x 16 average pooling)"),
    "resnet18": dict(count=lambda: _torchvision_params("ResNet18_Weights.IMAGENET1K_V1"), head=512 * 1000 + 1000, tolerance=0,
                     source="torchvision ResNet18_Weights.IMAGENET1K_V1.meta['num_params'] (11,689,512; He et al. 2016's "
                            "ResNet-18 with its 1000-class fc), the architecture of timm's resnet18"),
    "vit-small-patch16-224": dict(count=lambda: 22_100_000, head=384 * 1000 + 1000, tolerance=50_000,
                                  source="timm model card vit_small_patch16_224.augreg_in21k_ft_in1k: Params (M) 22.1"),
    "biomedclip": dict(count=lambda: _torchvision_params("ViT_B_16_Weights.IMAGENET1K_V1") - (768 * 1000 + 1000) + 768 * 512,
                       head=0, tolerance=0,
                       source="torchvision ViT_B_16_Weights.IMAGENET1K_V1.meta['num_params'] (ViT-B/16, Dosovitskiy et al. "
                              "2021) without its 1000-class head, plus the release's linear projection 768 -> 512 without "
                              "bias (open_clip_config.json: timm_proj 'linear', embed_dim 512)"),
    "rad-dino": dict(count=lambda: 86_600_000, head=0, tolerance=50_000,
                     source="timm model card vit_base_patch14_dinov2.lvd142m (DINOv2 ViT-B/14 at 518 px): Params (M) 86.6; "
                            "RAD-DINO is that architecture (model card: finetuned from dinov2-base)"),
    "dinov2": dict(count=lambda: 86_600_000, head=0, tolerance=50_000,
                   source="timm model card vit_base_patch14_dinov2.lvd142m (DINOv2 ViT-B/14 at 518 px): Params (M) 86.6"),
    "medsiglip": dict(count=lambda: 428_000_000, head=0, tolerance=0.005 * 428_000_000,
                      source="SoViT-400m/14, 428M (Alabdulmohsin et al. 2023, Getting ViT in Shape); 0.5%: that figure "
                             "is at 224 px, the position table at 448 px adds 0.2%"),
    "siglip2": dict(count=lambda: 428_000_000, head=0, tolerance=0.005 * 428_000_000,
                    source="SoViT-400m, 428M (Alabdulmohsin et al. 2023); 0.5%: patch 16 and a 512-px position table "
                           "instead of patch 14 at 224 px add 0.3%"),
    "chexagent-vision": None,  # measured: no published count for a SigLIP ViT-L/16 vision tower at 512 px
    "synthetic-cxr-cnn": None,  # measured: the package's own network, counted layer by layer in tests/test_control_encoder.py
    "segformer-b4": dict(count=lambda: 64_100_000, head=0, tolerance=50_000,
                         source="SegFormer-B4 on ADE20K (150 classes), 64.1M (Xie et al. 2021, Table 1)"),
    "ark-plus": dict(count=lambda: 197_000_000, head=1536 * 1000 + 1000, tolerance=500_000,
                     source="Swin-L (384 px, window 12, ImageNet-1k head), 197M (Liu et al. 2021, Swin Transformer, Table 1)"),
    "ark-plus-s32": dict(count=lambda: 197_000_000, head=1536 * 1000 + 1000, tolerance=500_000,
                         source="Swin-L, 197M (Liu et al. 2021, Table 1): the same model as ark-plus"),
    "medimageinsight": dict(count=lambda: 360_000_000, head=0, tolerance=5_000_000,
                            source="MedImageInsight image encoder, 0.36B (Codella et al. 2024, arXiv 2410.06542)"),
    "medimageinsight-s32": dict(count=lambda: 360_000_000, head=0, tolerance=5_000_000,
                                source="MedImageInsight image encoder, 0.36B (Codella et al. 2024): the same model"),
}


PUBLISHED_BY_ID = {
    "timm/vit_tiny_patch16_224": dict(count=lambda: 5_700_000, head=192 * 1000 + 1000, tolerance=50_000,
                                      source="timm model card vit_tiny_patch16_224.augreg_in21k_ft_in1k: Params (M) 5.7"),
}


def test_every_entry_has_a_published_count_or_is_labelled_measured():
    assert set(PUBLISHED) == set(ALL), f"state a published count (or None: measured) for {sorted(set(ALL) ^ set(PUBLISHED))}"


@pytest.mark.parametrize("name", [n for n in ALL if PUBLISHED.get(n)] + BY_ID)
def test_parameter_count_matches_the_published_figure(name):
    "The full-size build's parameter count against the published figure (the measured `cfg.params` is the build's, above)."
    pub = PUBLISHED.get(name) or PUBLISHED_BY_ID[name]
    with torch.device("meta"):
        n = sum(p.numel() for p in create_encoder(name).parameters())
    assert abs(n + pub["head"] - pub["count"]()) <= pub["tolerance"], (n, pub["source"])


@pytest.mark.parametrize("name", ENTRIES)
def test_reduced_forward(name):
    "A real forward at the study resolution: grid size, finite outputs, every intermediate layer."
    enc = _reduced(name)
    cfg = enc.cfg
    s = cfg.preprocess.size
    x = torch.randn(2, cfg.preprocess.channels, s, s)
    with torch.no_grad():
        out, inter = enc(x), enc.forward_intermediates(x)
    assert tuple(out.pooled.shape) == (2, cfg.pooled_dim) and torch.isfinite(out.pooled).all()  # the cfg states the build's widths
    assert tuple(out.grid.shape) == (2, cfg.grid_dim, cfg.grid_size, cfg.grid_size) and torch.isfinite(out.grid).all()
    assert list(inter) == list(cfg.layers) and all(t.ndim == 4 and t.shape[0] == 2 for t in inter.values())


@pytest.mark.parametrize("name", ENTRIES)
def test_gradients_reach_the_encoder(name):
    "Fine-tuning can update the encoder: a loss on pooled and grid features has gradients at its first layer."
    kw = {"input_size": 224} if _accepts(name, "input_size") else {}  # 224: a multiple of every study stride
    enc = _reduced(name, **kw).train()
    params = [p for p in enc.parameters() if p.requires_grad]
    if not params: pytest.skip(f"{name}: no parameters")
    s = enc.cfg.preprocess.size
    out = enc(torch.randn(2, enc.cfg.preprocess.channels, s, s))
    (out.pooled.square().mean() + out.grid.square().mean()).backward()
    first = params[0]  # the patch embedding / stem: reached only if nothing cuts the graph
    assert first.grad is not None and first.grad.abs().sum() > 0
    assert sum(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in params) > len(params) // 2


@pytest.mark.parametrize("name", ENTRIES)
def test_checkpoint_round_trip(name, tmp_path):
    "Random weights written in the release's own layout load through the user's code path, unchanged."
    enc = _reduced(name)
    if not hasattr(enc, "save_release"): pytest.skip(f"{name}: no release layout to write")
    torch.manual_seed(1)
    with torch.no_grad():
        for p in enc.parameters(): p.add_(torch.randn_like(p) * 0.01)  # differ from any fresh init
    path = enc.save_release(tmp_path / "release")
    loaded = _reduced(name, pretrained=path)
    assert loaded.weights_tag.startswith("pretrained:")
    a, b = enc.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    s = enc.cfg.preprocess.size
    x = torch.randn(1, enc.cfg.preprocess.channels, s, s)
    with torch.no_grad(): o1, o2 = enc(x), loaded(x)
    torch.testing.assert_close(o1.pooled, o2.pooled, atol=1e-5, rtol=0)
    torch.testing.assert_close(o1.grid, o2.grid, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ENTRIES)
def test_pretrained_from_hf_cache(name, tmp_path, monkeypatch):
    "pretrained=True finds a release in the Hugging Face cache layout (refs/main -> snapshots/<rev>/...)."
    import huggingface_hub.constants as hfc
    cfg = get_encoder_cfg(name)
    if not cfg.weights.source: pytest.skip(f"{name}: not distributed through the hub")
    enc = _reduced(name)
    if not hasattr(enc, "save_release"): pytest.skip(f"{name}: no release layout to write")
    repo = tmp_path / ("models--" + cfg.weights.source.replace("/", "--"))
    enc.save_release(repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path))
    loaded = _reduced(name, pretrained=True)
    assert loaded.weights_tag == f"pretrained:{cfg.weights.source}@0123abcd"  # the release and its cached commit
    a, b = enc.state_dict(), loaded.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ENTRIES)
def test_preprocess_matches_reference(name, xray):
    "The entry's contract gives the reference processor's tensor on the same image."
    cfg = get_encoder_cfg(name)
    ref = reference_processor(name) or _id_reference(name)
    if ref is None: pytest.skip(f"{name}: no reference processor recorded")
    ours = preprocess_image(xray, cfg.preprocess)
    theirs = ref(Image.fromarray(xray).convert("RGB"))
    assert tuple(ours.shape) == (cfg.preprocess.channels, cfg.preprocess.size, cfg.preprocess.size)
    torch.testing.assert_close(ours, theirs.float(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ENTRIES)
def test_common_resolution(name, xray):
    "`input_size` moves the preprocessing contract, grid and position embeddings together."
    if not _accepts(name, "input_size"): pytest.skip(f"{name}: fixed resolution")
    enc = _reduced(name, input_size=COMMON_SIZE)
    cfg = enc.cfg
    assert cfg.preprocess.size == COMMON_SIZE and cfg.grid_size == COMMON_SIZE // cfg.grid_stride
    with torch.no_grad(): out = enc(torch.randn(1, cfg.preprocess.channels, COMMON_SIZE, COMMON_SIZE))
    assert tuple(out.grid.shape[-2:]) == (cfg.grid_size, cfg.grid_size)
    ref = reference_processor(name, cfg.preprocess) if name in ALL else _id_reference(name, cfg.preprocess.size)
    if ref is not None:
        torch.testing.assert_close(preprocess_image(xray, cfg.preprocess), ref(Image.fromarray(xray).convert("RGB")).float(),
                                   atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ENTRIES)
def test_offline_pretrained_fails_fast(name, tmp_path, monkeypatch):
    "Without the files, pretrained=True fails within a second, naming what is missing and how to get it."
    import huggingface_hub.constants as hfc
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    cfg = get_encoder_cfg(name)
    if cfg.weights.format == "package": pytest.skip(f"{name}: its weights ship with the package, nothing to fetch")
    t = time.time()
    with pytest.raises(CxrStudyError) as e:
        create_encoder(name, pretrained=True)
    assert time.time() - t < 1.0
    msg = str(e.value)
    if cfg.params:
        assert "not found" in msg
        if cfg.weights.how_to_obtain: assert cfg.weights.how_to_obtain[:40] in msg


def test_ark_needs_the_request_form(tmp_path):
    with pytest.raises(CxrStudyError, match="request form"):
        create_encoder("ark-plus", pretrained=True)
    with pytest.raises(CxrStudyError, match="does not exist"):
        create_encoder("ark-plus", pretrained=tmp_path / "Ark6_swinLarge768_ep50.pth.tar")
