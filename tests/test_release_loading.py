"""Loading releases in their real layouts, with expected values from outside the package.

- timm encoders with `pretrained=True`: a real timm model's state dict (classifier included), saved as timm's hub
  releases are (`model.safetensors`, or `pytorch_model.bin`), found in the Hugging Face cache layout; the encoder
  must hold exactly those tensors and compute timm's own features, also at a common input size (against timm's own
  loader, which resamples the position table itself).
- CheXagent's vision tower released with a 384-px (24 x 24) position table: loaded, and resampled to the study's
  512 px, equal to torch's bicubic interpolation and to transformers running the 384-px release at 512 px.
- MedImageInsight: the release's key names and shapes (tests/fixtures/medimageinsight_release_keys.json, written
  from the release's own model code and config) load into the full-size encoder.
- Loader strictness: a harmless missing buffer or an unused head does not block a load; anything else does, with a
  named error listing the keys.
Runtime: 60-90 s on a busy 2-core machine (load 9), mostly building timm ViT-S models."""
import functools
import json
from pathlib import Path
from unittest.mock import patch

import huggingface_hub.constants as hfc
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from cxr_study.core import CxrStudyError
from cxr_study.encoders.registry import create_encoder, get_encoder_cfg

TIMM = {"resnet18": "resnet18", "vit-small-patch16-224": "vit_small_patch16_224"}
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    "An empty, offline Hugging Face cache."
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def in_cache(cache: Path, repo_id: str) -> Path:
    "The snapshot folder of `repo_id` in the cache layout (models--org--name/snapshots/<commit>, refs/main)."
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True, exist_ok=True)
    return snap


@functools.lru_cache(maxsize=None)
def timm_release(arch: str, seed: int = 0):
    "timm's own model of the release's architecture, classifier included, with random weights (built once per test run)."
    import timm
    torch.manual_seed(seed)
    return timm.create_model(arch, pretrained=False).eval()


# --- the small timm encoders, pretrained=True ------------------------------------------------------------------------

@pytest.mark.parametrize("name, fmt", [("resnet18", "model.safetensors"), ("resnet18", "pytorch_model.bin"),
                                       ("vit-small-patch16-224", "model.safetensors")])  # the file format does not depend on the net
def test_timm_release_loads_and_gives_timms_features(name, fmt, hf_cache):
    ref = timm_release(TIMM[name])
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    snap = in_cache(hf_cache, get_encoder_cfg(name).weights.source)
    if fmt == "model.safetensors": save_file(sd, str(snap / fmt))
    else: torch.save(sd, snap / fmt)  # the torch pickle timm's hub releases also carry, read weights-only
    enc = create_encoder(name, pretrained=True)
    assert enc.weights_tag == f"pretrained:{get_encoder_cfg(name).weights.source}@{COMMIT}"
    own = enc.model.state_dict()
    assert set(own) == {k for k in sd if not k.startswith(("head.", "fc."))}  # everything but timm's classifier
    assert all(torch.equal(own[k], sd[k]) for k in own)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        out, feats = enc(x), ref.forward_features(x)
        torch.testing.assert_close(out.pooled, ref.forward_head(feats, pre_logits=True), atol=1e-5, rtol=1e-5)
        if feats.ndim == 3:  # ViT tokens: the grid is the patch tokens after the final norm
            torch.testing.assert_close(out.grid, feats[:, 1:].transpose(1, 2).reshape(1, -1, 14, 14), atol=1e-5, rtol=1e-5)
        else:  # ResNet: the grid is layer3 (stride 16)
            torch.testing.assert_close(out.grid, ref.layer3(ref.layer2(ref.layer1(ref.maxpool(ref.act1(ref.bn1(ref.conv1(x))))))),
                                       atol=1e-5, rtol=1e-5)


def test_timm_vit_release_at_a_common_size_matches_timms_own_loader(tmp_path):
    "At 448 px the position table is resampled; timm's own pretrained loading (its filter fn) is the reference."
    import timm
    ref = timm_release("vit_small_patch16_224")
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "model.safetensors"))
    theirs = timm.create_model("vit_small_patch16_224", pretrained=True, num_classes=0, img_size=448,
                               pretrained_cfg_overlay=dict(file=str(tmp_path / "model.safetensors"))).eval()
    ours = create_encoder("vit-small-patch16-224", pretrained=tmp_path / "model.safetensors", input_size=448)
    torch.testing.assert_close(ours.model.pos_embed, theirs.pos_embed, atol=1e-6, rtol=0)
    x = torch.randn(1, 3, 448, 448)
    with torch.no_grad():
        torch.testing.assert_close(ours(x).pooled, theirs(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(TIMM))
def test_timm_release_strictness(name, tmp_path):
    "The classifier is skipped; a missing weight or a stray key stops the load, naming it."
    sd = {k: v.contiguous() for k, v in timm_release(TIMM[name]).state_dict().items()}
    first = next(k for k in sd if k.endswith(".weight") and not k.startswith(("head", "fc")))
    save_file({k: v for k, v in sd.items() if k != first}, str(tmp_path / "cut.safetensors"))
    with pytest.raises(CxrStudyError, match=rf"missing \['{first}'\]"):
        create_encoder(name, pretrained=tmp_path / "cut.safetensors")
    save_file({**sd, "blocks.99.extra": torch.zeros(1)}, str(tmp_path / "stray.safetensors"))
    with pytest.raises(CxrStudyError, match=r"unexpected \['blocks.99.extra'\]"):
        create_encoder(name, pretrained=tmp_path / "stray.safetensors")


# --- CheXagent's vision tower: a 384-px release run at 512 px ---------------------------------------------------------

def xray_siglip(image_size: int, seed: int = 0):
    "A reduced XraySigLIP release in its layout (a full transformers SiglipModel: vision and text towers)."
    import transformers
    from cxr_study.encoders.zoo import _siglip_config
    torch.manual_seed(seed)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=64,
                bos_token_id=None, eos_token_id=None, pad_token_id=1)
    vision = dict(_siglip_config("chexagent-vision", reduced=True).to_dict(), image_size=image_size)
    return transformers.SiglipModel(transformers.SiglipConfig(text_config=text, vision_config=vision)).eval()


def test_chexagent_release_with_384px_positions_loads_at_512(hf_cache):
    import transformers
    from cxr_study.encoders.zoo import _siglip_config
    release = xray_siglip(384)
    snap = in_cache(hf_cache, get_encoder_cfg("chexagent-vision").weights.source)
    release.save_pretrained(snap)
    with pytest.raises(RuntimeError, match="mismatch"):  # transformers alone refuses a 24 x 24 table in a 32 x 32 model
        transformers.SiglipVisionModel.from_pretrained(snap, config=_siglip_config("chexagent-vision", reduced=True))
    enc = create_encoder("chexagent-vision", reduced=True, pretrained=True)
    assert enc.positions_resampled_from == 384
    table = enc.model.embeddings.position_embedding.weight
    grid = release.vision_model.embeddings.position_embedding.weight.detach().reshape(1, 24, 24, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(32, 32), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1024, -1)
    torch.testing.assert_close(table.detach(), expected, atol=1e-6, rtol=0)
    x = torch.randn(1, 3, 512, 512)
    with torch.no_grad():
        ours = enc(x)
        theirs = release.vision_model(pixel_values=x, interpolate_pos_encoding=True)  # transformers at 512 on the 384 release
    torch.testing.assert_close(ours.pooled, theirs.pooler_output, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.grid, theirs.last_hidden_state.transpose(1, 2).reshape(1, -1, 32, 32), atol=1e-5, rtol=1e-5)
    # every other weight is the release's, unchanged
    rel = {k: v for k, v in release.vision_model.state_dict().items() if "position" not in k}
    own = enc.model.state_dict()
    assert rel and all(torch.equal(own[k], v) for k, v in rel.items())


def test_chexagent_release_with_512px_positions_loads_unchanged(tmp_path):
    release = xray_siglip(512, seed=2)
    release.save_pretrained(tmp_path)
    enc = create_encoder("chexagent-vision", reduced=True, pretrained=tmp_path)
    assert enc.positions_resampled_from is None
    assert torch.equal(enc.model.embeddings.position_embedding.weight, release.vision_model.embeddings.position_embedding.weight)


# --- MedImageInsight: the release's key names --------------------------------------------------------------------------

MII_KEYS = json.loads((Path(__file__).parent / "fixtures" / "medimageinsight_release_keys.json").read_text())


def mii_release(drop=(), add=None, rename=None):
    "The release's state dict as meta tensors (names and shapes from the fixture, no memory), edited."
    keys = {**MII_KEYS["image_keys"], **MII_KEYS["text_keys"]}
    sd = {(rename or {}).get(k, k): torch.empty(v, device="meta") for k, v in keys.items() if k not in drop}
    return {**sd, **(add or {})}


def load_mii(sd):
    import cxr_study.encoders.timm_zoo as tz
    with torch.device("meta"):
        enc = create_encoder("medimageinsight")
    with patch.object(tz, "load_checkpoint", lambda path, **kw: sd):
        tz.load_mii_checkpoint(enc, "medimageinsigt-v1.0.0.pt")
    return enc


def test_mii_release_key_layout_loads_at_full_size():
    assert len(MII_KEYS["image_keys"]) == 403 and MII_KEYS["source"]
    image = {k: v for k, v in MII_KEYS["image_keys"].items()}
    n_image = sum(torch.Size(v).numel() for v in image.values())
    assert n_image == get_encoder_cfg("medimageinsight").params  # every image weight of the release has a place
    load_mii(mii_release())
    # older UniCL files name the towers visual. / vision_projection (UniCLModel._convert_old_weights)
    old = {k: ("visual." + k[len("image_encoder."):] if k.startswith("image_encoder.") else "vision_projection"
               if k == "image_projection" else k) for k in MII_KEYS["image_keys"]}
    load_mii(mii_release(rename=old))


def test_mii_release_key_layout_refuses_a_missing_or_stray_key():
    with pytest.raises(CxrStudyError, match=r"missing \['model.stages.2.blocks.4.channel_block.mlp.fc2.bias'\]"):
        load_mii(mii_release(drop=("image_encoder.blocks.2.4.channel_block.ffn.fn.net.fc2.bias",)))
    with pytest.raises(CxrStudyError, match="unexpected"):
        load_mii(mii_release(add={"image_encoder.blocks.3.0.spatial_block.extra": torch.empty(2, device="meta")}))
    with pytest.raises(CxrStudyError, match="missing"):
        load_mii(mii_release(drop=("image_projection",)))


# --- loader strictness: transformers releases -------------------------------------------------------------------------

@pytest.fixture
def rad_dino_release(tmp_path):
    "A reduced RAD-DINO release folder (config.json + model.safetensors) and its tensors."
    enc = create_encoder("rad-dino", reduced=True)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in enc.parameters(): p.add_(torch.randn_like(p) * 0.01)
    folder = enc.save_release(tmp_path / "rad-dino")
    return folder, load_file(str(folder / "model.safetensors")), enc


def _rewrite(folder: Path, sd: dict):
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"))


def test_a_release_without_the_mask_token_loads(rad_dino_release):
    "RAD-DINO's case: embeddings.mask_token (used only for masked-image training) may be absent."
    folder, sd, enc = rad_dino_release
    assert "embeddings.mask_token" in sd
    _rewrite(folder, {k: v for k, v in sd.items() if k != "embeddings.mask_token"})
    loaded = create_encoder("rad-dino", reduced=True, pretrained=folder)
    a, b = enc.state_dict(), loaded.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if k != "model.embeddings.mask_token")
    x = torch.randn(1, 3, 518, 518)
    with torch.no_grad(): torch.testing.assert_close(loaded(x).pooled, enc(x).pooled, atol=1e-5, rtol=0)


def test_an_unused_head_does_not_block_a_load(rad_dino_release):
    folder, sd, _ = rad_dino_release
    _rewrite(folder, {**sd, "classifier.weight": torch.zeros(3, 64), "classifier.bias": torch.zeros(3)})
    create_encoder("rad-dino", reduced=True, pretrained=folder)


@pytest.mark.parametrize("edit, message", [
    (lambda sd: {k: v for k, v in sd.items() if k != "embeddings.cls_token"}, r"missing \['embeddings.cls_token'\]"),
    (lambda sd: {**sd, "encoder.layer.7.extra.weight": torch.zeros(2)}, r"unexpected \['encoder.layer.7.extra.weight'\]"),
    (lambda sd: {**sd, "embeddings.position_embeddings": torch.zeros(1, 5, 32)}, r"mismatched \['embeddings.position_embeddings'\]"),
])
def test_anything_else_blocks_a_load_with_the_keys_named(rad_dino_release, edit, message):
    folder, sd, _ = rad_dino_release
    _rewrite(folder, edit(sd))
    with pytest.raises(CxrStudyError, match=message):
        create_encoder("rad-dino", reduced=True, pretrained=folder)


def test_a_siglip_release_skips_only_its_text_tower(tmp_path):
    enc = create_encoder("medsiglip", reduced=True)
    folder = enc.save_release(tmp_path / "medsiglip")
    sd = load_file(str(folder / "model.safetensors"))
    assert any(k.startswith("text_model.") for k in sd)
    create_encoder("medsiglip", reduced=True, pretrained=folder)  # the text tower is unused: loads
    _rewrite(folder, {k: v for k, v in sd.items() if k != "vision_model.post_layernorm.weight"})
    with pytest.raises(CxrStudyError, match=r"missing \['post_layernorm.weight'\]"):
        create_encoder("medsiglip", reduced=True, pretrained=folder)


# --- loader strictness: SegFormer's end-to-end baseline ---------------------------------------------------------------

@pytest.fixture
def ade_release(tmp_path):
    "A reduced SegFormer ADE20k release (150 classes) in its layout."
    from transformers import SegformerConfig, SegformerForSemanticSegmentation
    from cxr_study.train.segformer import SEGFORMER_VARIANTS
    small = dict(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], decoder_hidden_size=64)
    torch.manual_seed(0)
    m = SegformerForSemanticSegmentation(SegformerConfig(**{**SEGFORMER_VARIANTS["segformer-b0"]["config"], **small}, num_labels=150))
    m.save_pretrained(tmp_path / "ade")
    return tmp_path / "ade", m


@pytest.mark.parametrize("kind", ["classification", "segmentation"])
def test_segformer_pretrained_load_keeps_the_encoder_and_replaces_only_the_head(ade_release, kind):
    from cxr_study.train.segformer import build_segformer
    folder, ade = ade_release
    m = build_segformer(kind, "segformer-b0", pretrained=folder)
    own, rel = m.model.segformer.state_dict(), ade.segformer.state_dict()
    assert own.keys() == rel.keys() and all(torch.equal(own[k], rel[k]) for k in own)
    if kind == "segmentation":
        assert m.model.decode_head.classifier.weight.shape[0] == 2  # a new 2-class head; the rest of the decoder is the release's
        assert torch.equal(m.model.decode_head.linear_fuse.weight, ade.decode_head.linear_fuse.weight)


@pytest.mark.parametrize("kind", ["classification", "segmentation"])
def test_segformer_pretrained_load_refuses_a_missing_encoder_weight(ade_release, kind):
    from cxr_study.train.segformer import build_segformer
    folder, _ = ade_release
    sd = load_file(str(folder / "model.safetensors"))
    cut = next(k for k in sd if k.startswith("segformer.encoder.block.1."))
    _rewrite(folder, {k: v for k, v in sd.items() if k != cut})
    with pytest.raises(CxrStudyError, match=r"weights do not match .*missing \['segformer\."):
        build_segformer(kind, "segformer-b0", pretrained=folder)
