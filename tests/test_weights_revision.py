"A Hugging Face release at a revision: pretrained='org/name@<tag or commit>' loads that commit's weights and the weights tag records it."
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import huggingface_hub.constants as hfc
from cxr_study.core import CxrStudyError
from cxr_study.encoders.registry import create_encoder

REPO = "timm/resnet18.a1_in1k"  # the registry's resnet18 release
MAIN, OLD = "0" * 40, "1" * 40


def _snapshot(cache: Path, commit: str, seed: int) -> dict:
    torch.manual_seed(seed)
    sd = {k: v.contiguous() for k, v in timm.create_model("resnet18", num_classes=0).state_dict().items()}
    snap = cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / commit
    snap.mkdir(parents=True)
    save_file(sd, str(snap / "model.safetensors"))
    return sd


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    "The release's main branch at MAIN, and an older commit OLD tagged v1.0, in a Hugging Face cache."
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path))
    sds = {MAIN: _snapshot(tmp_path, MAIN, 0), OLD: _snapshot(tmp_path, OLD, 1)}
    refs = tmp_path / f"models--{REPO.replace('/', '--')}" / "refs"; refs.mkdir()
    (refs / "main").write_text(MAIN); (refs / "v1.0").write_text(OLD)
    return sds


@pytest.mark.parametrize("pretrained,commit", [(True, MAIN), (REPO, MAIN), (f"{REPO}@v1.0", OLD), (f"{REPO}@{OLD}", OLD)])
def test_the_revision_asked_for_is_loaded_and_recorded(hub_cache, pretrained, commit):
    enc = create_encoder("resnet18", pretrained=pretrained)
    assert enc.weights_tag == f"pretrained:{REPO}@{commit}"
    w = dict(enc.named_parameters())
    key = next(k for k in w if k.endswith("conv1.weight"))
    assert torch.equal(w[key].detach(), hub_cache[commit]["conv1.weight"])


def test_a_revision_not_in_the_cache_says_how_to_get_it(hub_cache):
    with pytest.raises(CxrStudyError, match=r"hf download timm/resnet18\.a1_in1k model\.safetensors config\.json --revision v2\.0"):
        create_encoder("resnet18", pretrained=f"{REPO}@v2.0")
