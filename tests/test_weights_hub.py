"""Weights named as people name them: `pretrained=True` (the entry's release), a Hugging Face repo id
(`org/name`) or a local path; the weights tag that records which; and the opt-in download.

The hub is never reached: a fake Hugging Face cache in a temporary folder copies the real layout
(`models--org--name/snapshots/<commit>/file`, `refs/main`), holding state dicts in the layout of the
timm hub releases (timm's own `state_dict()`, classifier included, saved with safetensors), and
`snapshot_download` / `list_repo_files` are replaced by stand-ins that record their arguments."""
import os
import subprocess
import sys
from pathlib import Path

import httpx2
import huggingface_hub
import huggingface_hub.constants as hfc
import pytest
import torch
from safetensors.torch import save_file

from cxr_study.core import CxrStudyError
from cxr_study.encoders.registry import create_encoder, get_encoder_cfg
from cxr_study.encoders.weights import download_weights

RESNET = "timm/resnet18.a1_in1k"  # the resnet18 entry's release
COMMIT = "5d6fa1a5a1fa2a46e6eb4d4c0a0c4bd0e1f0e2a7"
TIMM_ARCH = {"resnet18": "resnet18", "vit-small-patch16-224": "vit_small_patch16_224"}


def release_state_dict(arch: str, seed: int) -> dict:
    "What a timm hub release holds: timm's own state dict of the architecture, classifier included."
    import timm
    torch.manual_seed(seed)
    return {k: v.contiguous() for k, v in timm.create_model(arch, pretrained=False).state_dict().items()}


def put_release(cache: Path, repo_id: str, commit: str, files: dict) -> Path:
    "Write files into the hub cache layout; `files` maps a name to a state dict (safetensors) or text."
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    for name, content in files.items():
        (snap / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, dict): save_file(content, str(snap / name))
        else: (snap / name).write_text(content)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snap


def same_backbone(enc, sd: dict) -> bool:
    "The encoder holds exactly the release's tensors (the classifier, which it does not use, aside)."
    own = enc.model.state_dict()
    shared = [k for k in sd if k in own]
    return len(shared) == len(own) and all(torch.equal(own[k], sd[k]) for k in shared)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    "An empty Hugging Face cache under HF_HOME, offline, as huggingface_hub sees it."
    home = tmp_path / "hf-home"
    cache = home / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hfc, "HF_HOME", str(home))
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(cache))  # read by huggingface_hub at call time
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.fixture
def online(monkeypatch):
    "The hub switched on (only stand-ins are ever called)."
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", False)


@pytest.fixture
def fake_hub(monkeypatch, online):
    """Stand-ins for the hub: `repos` maps a repo id to its files; `calls` records every call. The fake
    snapshot_download writes the allowed files into the cache huggingface_hub uses at call time."""
    import fnmatch
    hub = {"repos": {}, "calls": []}

    def list_repo_files(repo_id, *, token=None, **kw):
        hub["calls"].append(("list_repo_files", repo_id, {"token": token, **kw}))
        if isinstance(hub.get("error"), Exception): raise hub["error"]
        return list(hub["repos"][repo_id])

    def snapshot_download(repo_id, **kw):
        hub["calls"].append(("snapshot_download", repo_id, kw))
        if isinstance(hub.get("error"), Exception): raise hub["error"]
        files = hub["repos"][repo_id]
        pats = kw.get("allow_patterns") or ["*"]
        chosen = {f: c for f, c in files.items() if any(fnmatch.fnmatch(f, p) for p in pats)}
        return str(put_release(Path(kw.get("cache_dir") or hfc.HF_HUB_CACHE), repo_id, COMMIT, chosen))

    monkeypatch.setattr(huggingface_hub, "list_repo_files", list_repo_files)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return hub


# --- loading: True, a repo id, a path -------------------------------------------------------------

@pytest.mark.parametrize("name", ["resnet18", "vit-small-patch16-224"])
def test_true_loads_the_release_from_the_cache(name, hf_cache):
    repo = get_encoder_cfg(name).weights.source
    sd = release_state_dict(TIMM_ARCH[name], seed=1)
    put_release(hf_cache, repo, COMMIT, {"model.safetensors": sd, "config.json": "{}"})
    enc = create_encoder(name, pretrained=True)
    assert same_backbone(enc, sd)
    assert enc.weights_tag == f"pretrained:{repo}@{COMMIT}"
    assert enc.trained


def test_repo_id_loads_that_repo(hf_cache):
    release, other = release_state_dict("resnet18", seed=1), release_state_dict("resnet18", seed=2)
    put_release(hf_cache, RESNET, COMMIT, {"model.safetensors": release})
    put_release(hf_cache, "someone/resnet18-cxr", "c0ffee", {"model.safetensors": other})
    enc = create_encoder("resnet18", pretrained="someone/resnet18-cxr")
    assert same_backbone(enc, other) and not same_backbone(enc, release)
    assert enc.weights_tag == "pretrained:someone/resnet18-cxr@c0ffee"
    # the entry's own release named by its id is the same weights, with the same tag, as True
    assert create_encoder("resnet18", pretrained=RESNET).weights_tag == create_encoder("resnet18", pretrained=True).weights_tag


def test_repo_id_follows_refs_main(hf_cache):
    "The tag names the snapshot refs/main points at, not just any snapshot in the cache."
    put_release(hf_cache, RESNET, "0ld", {"model.safetensors": release_state_dict("resnet18", seed=1)})
    new = release_state_dict("resnet18", seed=3)
    put_release(hf_cache, RESNET, "new", {"model.safetensors": new})
    enc = create_encoder("resnet18", pretrained=True)
    assert enc.weights_tag == f"pretrained:{RESNET}@new" and same_backbone(enc, new)


def test_missing_repo_id_says_hf_download_and_the_cache(hf_cache):
    with pytest.raises(CxrStudyError) as e:
        create_encoder("resnet18", pretrained="nobody/nothing")
    msg = str(e.value)
    assert "hf download nobody/nothing model.safetensors config.json" in msg
    assert str(hf_cache) in msg
    assert "--download" in msg and "read as a Hugging Face repo id" in msg
    assert "huggingface-cli" not in msg


def test_missing_release_says_hf_download(hf_cache):
    with pytest.raises(CxrStudyError) as e:
        create_encoder("rad-dino", pretrained=True)
    msg = str(e.value)
    assert "hf download microsoft/rad-dino model.safetensors config.json" in msg and str(hf_cache) in msg
    assert "download_weights('rad-dino')" in msg


def test_gated_release_says_so_before_downloading(hf_cache):
    with pytest.raises(CxrStudyError, match="gated") as e:
        create_encoder("medsiglip", pretrained=True)
    assert "HF_TOKEN" in str(e.value)


def test_a_path_still_works(hf_cache, tmp_path):
    sd = release_state_dict("resnet18", seed=4)
    save_file(sd, str(tmp_path / "resnet18-mine.safetensors"))
    enc = create_encoder("resnet18", pretrained=tmp_path / "resnet18-mine.safetensors")
    assert same_backbone(enc, sd) and enc.weights_tag == "pretrained:resnet18-mine.safetensors"
    (tmp_path / "folder").mkdir()
    save_file(sd, str(tmp_path / "folder" / "model.safetensors"))
    enc = create_encoder("resnet18", pretrained=str(tmp_path / "folder"))
    assert same_backbone(enc, sd) and enc.weights_tag == "pretrained:folder"


def test_an_existing_path_wins_over_a_repo_id(hf_cache, tmp_path, monkeypatch):
    "A relative path that exists and has the form org/name is read as the path."
    put_release(hf_cache, "someone/resnet18-cxr", "c0ffee", {"model.safetensors": release_state_dict("resnet18", seed=1)})
    local = release_state_dict("resnet18", seed=5)
    (tmp_path / "someone" / "resnet18-cxr").mkdir(parents=True)
    save_file(local, str(tmp_path / "someone" / "resnet18-cxr" / "model.safetensors"))
    monkeypatch.chdir(tmp_path)
    enc = create_encoder("resnet18", pretrained="someone/resnet18-cxr")
    assert same_backbone(enc, local) and enc.weights_tag == "pretrained:resnet18-cxr"


def test_neither_path_nor_id(hf_cache):
    with pytest.raises(CxrStudyError, match="does not exist, and is not a Hugging Face repo id"):
        create_encoder("resnet18", pretrained="resnet18-mine.safetensors")


def test_hf_home_is_where_the_cache_is_looked_for(tmp_path):
    "In a fresh process, HF_HOME alone decides the cache folder searched and named."
    env = {**os.environ, "HF_HOME": str(tmp_path / "elsewhere"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    code = ("from cxr_study.encoders.registry import create_encoder\n"
            "try: create_encoder('resnet18', pretrained=True)\n"
            "except Exception as e: print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120).stdout
    assert str(tmp_path / "elsewhere" / "hub") in out and "hf download timm/resnet18.a1_in1k" in out


# --- download ---------------------------------------------------------------------------------------

def test_download_fails_clearly_when_offline(hf_cache, fake_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CxrStudyError, match="hub is offline") as e:
        download_weights("resnet18")
    assert "hf download timm/resnet18.a1_in1k" in str(e.value) and str(hf_cache) in str(e.value)
    assert fake_hub["calls"] == []


@pytest.mark.parametrize("pretrained, repo", [(True, RESNET), ("someone/resnet18-cxr", "someone/resnet18-cxr")])
def test_download_fetches_only_what_the_entry_loads(hf_cache, fake_hub, pretrained, repo):
    sd = release_state_dict("resnet18", seed=6)
    fake_hub["repos"][repo] = {"model.safetensors": sd, "pytorch_model.bin": "a second copy",
                               "config.json": "{}", "README.md": "# resnet18"}
    path = download_weights("resnet18", pretrained)
    kinds = [c[0] for c in fake_hub["calls"]]
    assert kinds == ["list_repo_files", "snapshot_download"]
    _, called_repo, kw = fake_hub["calls"][1]
    assert called_repo == repo
    assert kw["allow_patterns"] == ["model.safetensors", "config.json"]
    assert "cache_dir" not in kw and "local_dir" not in kw  # the cache huggingface_hub resolves (HF_HOME, HF_HUB_CACHE)
    assert kw.get("token") is None  # huggingface_hub then reads HF_TOKEN or the stored login itself
    assert path == hf_cache / f"models--{repo.replace('/', '--')}" / "snapshots" / COMMIT / "model.safetensors"
    enc = create_encoder("resnet18", pretrained=pretrained)
    assert same_backbone(enc, sd) and enc.weights_tag == f"pretrained:{repo}@{COMMIT}"
    # already there: nothing is fetched again
    assert download_weights("resnet18", pretrained) == path and len(fake_hub["calls"]) == 2


def test_download_takes_the_first_file_the_repo_holds_and_its_shards(hf_cache, fake_hub):
    fake_hub["repos"]["facebook/dinov2-base"] = {"model.safetensors.index.json": "{}", "model-00001-of-00002.safetensors": "x",
                                                 "model-00002-of-00002.safetensors": "y", "pytorch_model.bin": "z",
                                                 "config.json": "{}"}
    path = download_weights("dinov2")
    assert fake_hub["calls"][-1][2]["allow_patterns"] == ["model.safetensors.index.json", "model-*.safetensors", "config.json"]
    assert path.name == "model.safetensors.index.json"
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.json", "model-00001-of-00002.safetensors",
                                                             "model-00002-of-00002.safetensors", "model.safetensors.index.json"]


def test_download_a_single_named_file(hf_cache, fake_hub):
    "An entry naming its one file (MedImageInsight) asks for that file only, without listing the repo."
    cfg = get_encoder_cfg("medimageinsight")
    fake_hub["repos"][cfg.weights.source] = {cfg.weights.file: {"x": torch.zeros(1)}, "2024.09.27/language_model/x.pt": "no"}
    path = download_weights("medimageinsight")
    assert [c[0] for c in fake_hub["calls"]] == ["snapshot_download"]
    assert fake_hub["calls"][0][2]["allow_patterns"] == [cfg.weights.file]
    assert path.as_posix().endswith(f"snapshots/{COMMIT}/{cfg.weights.file}")


def test_download_passes_a_token(hf_cache, fake_hub):
    fake_hub["repos"][RESNET] = {"model.safetensors": release_state_dict("resnet18", seed=1)}
    download_weights("resnet18", token="hf_test")
    assert all(c[2]["token"] == "hf_test" for c in fake_hub["calls"])


def test_download_of_a_gated_model_says_what_to_do(hf_cache, fake_hub):
    from huggingface_hub.errors import GatedRepoError
    url = "https://huggingface.co/api/models/google/medsiglip-448/tree/main"
    fake_hub["error"] = GatedRepoError("401 Client Error: access to model google/medsiglip-448 is restricted",
                                       response=httpx2.Response(401, request=httpx2.Request("GET", url)))
    with pytest.raises(CxrStudyError) as e:
        download_weights("medsiglip")
    msg = str(e.value)
    assert "gated" in msg and "https://huggingface.co/google/medsiglip-448" in msg
    assert "HF_TOKEN" in msg and "hf auth login" in msg


def test_download_of_an_unknown_repo(hf_cache, fake_hub):
    from huggingface_hub.errors import RepositoryNotFoundError
    url = "https://huggingface.co/api/models/nobody/nothing"
    fake_hub["error"] = RepositoryNotFoundError("404 Client Error", response=httpx2.Response(404, request=httpx2.Request("GET", url)))
    with pytest.raises(CxrStudyError, match="no such model on the Hugging Face hub"):
        download_weights("resnet18", "nobody/nothing")


def test_download_when_the_repo_has_none_of_the_files(hf_cache, fake_hub):
    fake_hub["repos"]["someone/tf-only"] = {"tf_model.h5": "x", "config.json": "{}"}
    with pytest.raises(CxrStudyError, match="holds none of model.safetensors, pytorch_model.bin"):
        download_weights("resnet18", "someone/tf-only")


def test_release_not_on_the_hub_names_the_request_form(hf_cache, fake_hub):
    for f in (lambda: download_weights("ark-plus"), lambda: create_encoder("ark-plus", pretrained=True)):
        with pytest.raises(CxrStudyError) as e: f()
        assert "request form" in str(e.value) and "https://forms.gle/" in str(e.value)
        assert "--pretrained PATH" in str(e.value)  # how a user gives the file, in the command line's and the study file's words
    assert fake_hub["calls"] == []


def test_download_with_a_path_or_nothing_to_fetch(hf_cache, fake_hub, tmp_path):
    save_file(release_state_dict("resnet18", seed=1), str(tmp_path / "w.safetensors"))
    assert download_weights("resnet18", tmp_path / "w.safetensors") == tmp_path / "w.safetensors"
    assert download_weights("resnet18", False) is None
    assert download_weights("raw-pixels") is None
    with pytest.raises(CxrStudyError, match="does not exist"):
        download_weights("resnet18", tmp_path / "missing.safetensors")
    assert fake_hub["calls"] == []
