"""The common-resolution ablation: a run of an encoder at another input size is a run of its own,
filed as <encoder>@<size>, whose parameters differ from the default run's only by that size."""
import numpy as np
import pytest
import torch

from cxr_study.core import CxrStudyError, read_json
from cxr_study.encoders.registry import create_encoder
from cxr_study.results import run_path
from cxr_study.study.runner import RunSpec, run_experiment

PROBE = {"lr": 0.02, "batch_size": 32, "max_epochs": 5}


def test_run_at_a_common_size(tiny_benchmark, tmp_path):
    out = tmp_path / "out"
    for task in ("cardiomegaly-cls", "heart-seg"):
        a = run_experiment(RunSpec.of("resnet18", task, data_dir=tiny_benchmark, out_dir=out, folds=[0], probe=PROBE))
        b = run_experiment(RunSpec.of("resnet18", task, data_dir=tiny_benchmark, out_dir=out, folds=[0], probe=PROBE, input_size=96))
        assert set(a["results"].encoder) == {"resnet18"} and set(b["results"].encoder) == {"resnet18@96"}
        pa = read_json(run_path(out, "resnet18", task, "linear-probe") / "run.json")["params"]
        pb = read_json(run_path(out, "resnet18@96", task, "linear-probe") / "run.json")["params"]
        assert {k: v for k, v in pb.items() if k != "input_size"} == pa and pb["input_size"] == 96  # only the size differs
        # the same test images in the same order: a paired comparison
        assert a["predictions"].image_id.tolist() == b["predictions"].image_id.tolist()
    seg = b["predictions"]
    assert set(seg.mask_size) == {96}  # masks evaluated at the run's own input size
    # the features were extracted at 96 px: another cache entry than the default run's
    assert len(list((out / "cache").glob("resnet18-*"))) == 2
    with pytest.raises(CxrStudyError, match="multiple of its grid stride"):
        run_experiment(RunSpec.of("resnet18", "heart-seg", data_dir=tiny_benchmark, out_dir=out, folds=[0], input_size=100))
    with pytest.raises(CxrStudyError, match="probe protocols"):
        run_experiment(RunSpec.of("prior", "heart-seg", data_dir=tiny_benchmark, out_dir=out, folds=[0], input_size=96))


def test_vit_weights_at_a_common_size(tmp_path):
    "Released ViT weights load at another input size, their position grid resampled as timm resamples it."
    import timm
    from safetensors.torch import save_file
    torch.manual_seed(0)
    ref = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0).eval()
    f = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(f))
    enc = create_encoder("vit-small-patch16-224", pretrained=str(f), input_size=448)
    assert enc.cfg.preprocess.size == 448 and enc.cfg.grid_size == 28
    pe = dict(enc.named_parameters())
    key = next(k for k in pe if k.endswith("pos_embed"))
    assert tuple(pe[key].shape) == (1, 1 + 28 * 28, 384)
    # the class token's position and every other weight are the release's own
    torch.testing.assert_close(pe[key][:, 0], ref.pos_embed[:, 0])
    # at a 224-px position grid resampled to 448 px, the centre of the grid keeps the release's values' scale
    assert np.isclose(pe[key][:, 1:].std().item(), ref.pos_embed[:, 1:].std().item(), rtol=0.2)
    x = torch.randn(1, 3, 448, 448)
    with torch.no_grad(): out = enc(x)
    assert tuple(out.grid.shape) == (1, 384, 28, 28)
    # at its own size the encoder is timm's model with the release's weights
    enc224 = create_encoder("vit-small-patch16-224", pretrained=str(f))
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad(): torch.testing.assert_close(enc224(x).pooled, ref(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("study", ["demo", "paper"])
def test_shipped_common_resolution_ablations(study, tmp_path):
    """The shipped studies' common-resolution ablations: every run is filed as <encoder>@<size> beside the
    encoder's main-grid run, with the same folds, seed, data and probe settings, only `input_size` differing."""
    from cxr_study.encoders.registry import get_encoder_cfg
    from cxr_study.study.studyfile import expand_study, load_study, shipped_study
    cfg = load_study(shipped_study(study), {"data": str(tmp_path / "data"), "out": str(tmp_path / "out")})
    specs = expand_study(cfg)
    main = {(s.encoder, s.task, s.protocol): s for s in specs if s.group == "main"}
    abl = [s for s in specs if s.group == "common-resolution"]
    assert abl and {s.task for s in abl} == set(cfg.tasks)
    sizes = {s.options.input_size for s in abl}
    assert len(sizes) == 1  # one common size for every encoder
    for s in abl:
        d = main[(s.encoder, s.task, s.protocol)]
        assert s.name == f"{s.encoder}@{s.options.input_size}" and d.name == s.encoder
        pa, pb = d.params(), s.params()
        assert {k: v for k, v in pb.items() if k != "input_size"} == pa and "input_size" not in pa
        assert s.options.input_size % get_encoder_cfg(s.encoder).grid_stride == 0  # a size the encoder takes
    if study == "demo":  # smaller than the demo encoders' own 224 px, so the ablation stays cheap
        assert all(s.options.input_size < get_encoder_cfg(s.encoder).preprocess.size for s in abl)
