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
from cxr_study.encoders.registry import create_encoder, get_encoder_cfg, list_encoders, preprocess_image
from cxr_study.encoders.zoo import reference_processor

ALL = list_encoders()
COMMON_SIZE = 448  # a multiple of every study stride (14, 16, 32)


def _accepts(name, option):
    return option in inspect.signature(get_encoder_cfg(name).builder).parameters


def _reduced(name, **kw):
    "The cheapest real build of an entry: its reduced variant if it has one."
    return create_encoder(name, reduced=True, **kw) if _accepts(name, "reduced") else create_encoder(name, **kw)


@pytest.fixture(scope="module")
def xray():
    "A small non-square 8-bit image: odd crop margins exercise the crop rounding."
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, 301)[None, :] * np.linspace(0.2, 1, 259)[:, None]
    return (ramp * 200 + rng.integers(0, 50, (259, 301))).astype(np.uint8)


@pytest.mark.parametrize("name", ALL)
def test_entry_is_complete(name):
    cfg = get_encoder_cfg(name)
    assert cfg.label and cfg.arch and cfg.pooled_def and cfg.grid_def and cfg.domain and cfg.paradigm
    assert cfg.params is not None and cfg.pooled_dim > 0 and cfg.grid_dim > 0
    assert cfg.preprocess.size % cfg.grid_stride == 0
    assert cfg.layers
    if cfg.params:  # has weights: provenance is recorded
        w = cfg.weights
        assert (w.source or w.file) and w.paper and w.license


@pytest.mark.parametrize("name", ALL)
def test_full_size_structure(name):
    "Full architecture, parameter count and output shapes at the study resolution, on the meta device."
    cfg = get_encoder_cfg(name)
    s = cfg.preprocess.size
    with torch.device("meta"):
        enc = create_encoder(name)
        assert sum(p.numel() for p in enc.parameters()) == cfg.params
        x = torch.zeros(1, cfg.preprocess.channels, s, s)
        out = enc(x)
        inter = enc.forward_intermediates(x)
    assert enc.weights_tag in ("random-init", "none")
    assert tuple(out.pooled.shape) == (1, cfg.pooled_dim)
    assert tuple(out.grid.shape) == (1, cfg.grid_dim, cfg.grid_size, cfg.grid_size)
    assert list(inter) == list(cfg.layers)
    assert all(t.ndim == 4 and t.shape[0] == 1 for t in inter.values())
    del enc, out, inter; gc.collect()


@pytest.mark.parametrize("name", ALL)
def test_reduced_forward(name):
    "A real forward at the study resolution: grid size, finite outputs, every intermediate layer."
    enc = _reduced(name)
    cfg = enc.cfg
    s = cfg.preprocess.size
    x = torch.randn(2, cfg.preprocess.channels, s, s)
    with torch.no_grad():
        out, inter = enc(x), enc.forward_intermediates(x)
    assert out.pooled.shape[0] == 2 and out.pooled.ndim == 2 and torch.isfinite(out.pooled).all()
    assert tuple(out.grid.shape[-2:]) == (cfg.grid_size, cfg.grid_size) and torch.isfinite(out.grid).all()
    assert list(inter) == list(cfg.layers) and all(t.ndim == 4 and t.shape[0] == 2 for t in inter.values())


@pytest.mark.parametrize("name", ALL)
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


@pytest.mark.parametrize("name", ALL)
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


@pytest.mark.parametrize("name", ALL)
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


@pytest.mark.parametrize("name", ALL)
def test_preprocess_matches_reference(name, xray):
    "The entry's contract gives the reference processor's tensor on the same image."
    cfg = get_encoder_cfg(name)
    ref = reference_processor(name)
    if ref is None: pytest.skip(f"{name}: no reference processor recorded")
    ours = preprocess_image(xray, cfg.preprocess)
    theirs = ref(Image.fromarray(xray).convert("RGB"))
    assert tuple(ours.shape) == (cfg.preprocess.channels, cfg.preprocess.size, cfg.preprocess.size)
    torch.testing.assert_close(ours, theirs.float(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ALL)
def test_common_resolution(name, xray):
    "`input_size` moves the preprocessing contract, grid and position embeddings together."
    if not _accepts(name, "input_size"): pytest.skip(f"{name}: fixed resolution")
    enc = _reduced(name, input_size=COMMON_SIZE)
    cfg = enc.cfg
    assert cfg.preprocess.size == COMMON_SIZE and cfg.grid_size == COMMON_SIZE // cfg.grid_stride
    with torch.no_grad(): out = enc(torch.randn(1, cfg.preprocess.channels, COMMON_SIZE, COMMON_SIZE))
    assert tuple(out.grid.shape[-2:]) == (cfg.grid_size, cfg.grid_size)
    ref = reference_processor(name, cfg.preprocess)
    if ref is not None:
        torch.testing.assert_close(preprocess_image(xray, cfg.preprocess), ref(Image.fromarray(xray).convert("RGB")).float(),
                                   atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ALL)
def test_offline_pretrained_fails_fast(name, tmp_path, monkeypatch):
    "Without the files, pretrained=True fails within a second, naming what is missing and how to get it."
    import huggingface_hub.constants as hfc
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    cfg = get_encoder_cfg(name)
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
