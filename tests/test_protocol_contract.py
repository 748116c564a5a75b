"""The contract every registered protocol keeps, checked for each entry of the registry, so that a new
registration is picked up without touching this file: it runs through `run_experiment` on a small
synthetic benchmark and keeps `sweeps.check_protocol_contract` (the runner's files, the metric
table's columns agreeing with scikit-learn on its own predictions, a rerun reused); grids, study
files and the command line accept its name; an unknown pair fails before any work with a
`CxrStudyError`. About 2-3 minutes on 2 busy CPU cores (fine-tuning and SegFormer included)."""
import numpy as np
import pytest

from cxr_study.cli import build_parser
from cxr_study.core import CxrStudyError
from cxr_study.data.cohorts import get_task
from cxr_study.encoders import registry
from cxr_study.heads.probes import fit_knn_probe
from cxr_study.study.protocols import (PROTOCOLS, FoldFit, LinearProbe, applies, get_protocol, protocol_names,
                                 reference_names, register_protocol)
from cxr_study.study.studyfile import validate_study
from cxr_study.study.runner import RunSpec, check_protocol_contract, grid_runs, run_experiment
from cxr_study.train.finetune import tiny_encoder

SMALL_SEGFORMER = {"max_epochs": 1, "input_size": 64,
                   "config": {"hidden_sizes": [16, 32, 64, 128], "depths": [1, 1, 1, 1], "decoder_hidden_size": 64}}
# one cheap (encoder, settings) per protocol the registry may hold; a protocol not listed runs raw pixels with no settings
CHEAP = {"prior": ("prior", {}), "linear-probe": ("raw-pixels", {}), "fine-tune": ("tiny-vit", {"max_epochs": 1, "batch_size": 16}),
         "multiscale-probe": ("resnet18", {"layers": ["layer1", "layer2"], "max_epochs": 2, "loss_size": 32}),
         "e2e": ("segformer-b0", SMALL_SEGFORMER)}
TASKS = ("cardiomegaly-cls", "heart-seg")


@pytest.fixture(scope="module", autouse=True)
def tiny_vit():
    registry.register_encoder(tiny_encoder("vit").cfg)
    yield
    registry._REGISTRY.pop("tiny-vit", None)


def _cells(name):
    enc, adapt = CHEAP.get(name, ("raw-pixels", {}))
    label = "linear-probe" if name in reference_names() else name
    return [(enc, t, label, adapt) for t in TASKS if applies(enc, get_task(t).kind, label)]


@pytest.mark.parametrize("name", list(PROTOCOLS))
def test_every_registered_protocol_keeps_the_runner_contract(name, tiny_benchmark, tmp_path):
    cells = _cells(name)
    assert cells, f"protocol {name} applies to none of {TASKS} with its cheap encoder"
    for enc, task, label, adapt in cells:
        check_protocol_contract(label, enc, task, tiny_benchmark, tmp_path, folds=[0], device="cpu", mask_size=64, adapt=adapt or None,
                                probe={"max_epochs": 3})
    assert not list(tmp_path.glob("checkpoints/**/*.pt"))  # training checkpoints go once a run is complete


def test_the_contract_check_catches_a_broken_protocol(tiny_benchmark, tmp_path):
    "A protocol whose scores are not probabilities is named, with the clause it breaks."
    class Broken(LinearProbe):
        name = "broken-probe"
        def fit_predict(self, run, prep, fold):
            fit = super().fit_predict(run, prep, fold)
            return FoldFit(score=fit.score + 1, row=fit.row)  # above 1: not a probability
    register_protocol(Broken())
    try:
        with pytest.raises(AssertionError, match="broken-probe: scores are probabilities"):
            check_protocol_contract("broken-probe", "raw-pixels", "cardiomegaly-cls", tiny_benchmark, tmp_path, folds=[0])
    finally: PROTOCOLS.pop("broken-probe")


@pytest.mark.parametrize("name", protocol_names())
def test_every_registered_protocol_is_a_name_grids_studies_and_the_cli_take(name, tmp_path):
    enc, _ = CHEAP.get(name, ("raw-pixels", {}))
    assert any(p == name for *_, p in grid_runs([enc], list(TASKS), [name]))
    cfg = validate_study({"data": str(tmp_path), "out": str(tmp_path / "out"), "encoders": ["prior", enc], "tasks": list(TASKS),
                          "protocols": [name]})
    assert cfg.protocols == [name]
    a = build_parser().parse_args(["grid", "--data", str(tmp_path), "--out", str(tmp_path), "--encoders", enc, "--protocols", name])
    assert a.protocols == [name]


def test_a_pair_a_protocol_cannot_run_fails_before_any_work(tiny_benchmark, tmp_path):
    with pytest.raises(CxrStudyError, match="encoder must be one of"):
        run_experiment(RunSpec.of("resnet18", "heart-seg", "e2e", tiny_benchmark, tmp_path))
    with pytest.raises(CxrStudyError, match="is for segmentation"):
        run_experiment(RunSpec.of("resnet18", "cardiomegaly-cls", "multiscale-probe", tiny_benchmark, tmp_path))
    with pytest.raises(CxrStudyError, match="unknown protocol"):
        run_experiment(RunSpec.of("resnet18", "cardiomegaly-cls", "linear", tiny_benchmark, tmp_path))
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


class KnnProbe(LinearProbe):
    "DINO's weighted kNN vote on the cached pooled features (classification only)."
    name, kinds, sized = "knn-probe", ("classification",), False
    def fit_predict(self, run, prep, fold):
        X, y = prep.extra["X"], run.cohort["y"].to_numpy()
        fit = fit_knn_probe(X[fold.train], y[fold.train], X[fold.val], y[fold.val])
        return FoldFit(score=fit["model"].predict_proba(X[fold.test])[:, 1], row={"k": fit["k"]})


def test_a_new_protocol_is_one_registration(tiny_benchmark, tmp_path):
    "Registering a protocol is all it takes: the runner, grids, study files and the command line pick it up."
    register_protocol(KnnProbe())
    try:
        assert "knn-probe" in protocol_names() and get_protocol("knn-probe").name == "knn-probe"
        assert grid_runs(["prior", "raw-pixels"], list(TASKS), ["knn-probe"]) == [
            ("prior", "cardiomegaly-cls", "knn-probe"), ("raw-pixels", "cardiomegaly-cls", "knn-probe")]
        r = check_protocol_contract("knn-probe", "raw-pixels", "cardiomegaly-cls", tiny_benchmark, tmp_path, folds=[0, 1])
        assert set(r["results"].k) <= {10, 20, 100, 200}
        lp = run_experiment(RunSpec.of("raw-pixels", "cardiomegaly-cls", "linear-probe", tiny_benchmark, tmp_path, folds=[0, 1]))
        assert np.array_equal(lp["predictions"].image_id, r["predictions"].image_id)  # the same test images, fold by fold
        validate_study({"data": str(tmp_path), "out": str(tmp_path / "o"), "encoders": ["raw-pixels"], "tasks": ["cardiomegaly-cls"],
                        "protocols": ["knn-probe"]})
        assert build_parser().parse_args(["grid", "--data", ".", "--out", ".", "--encoders", "raw-pixels",
                                          "--protocols", "knn-probe"]).protocols == ["knn-probe"]
        with pytest.raises(CxrStudyError, match="is for classification"):
            run_experiment(RunSpec.of("raw-pixels", "heart-seg", "knn-probe", tiny_benchmark, tmp_path))
    finally:
        PROTOCOLS.pop("knn-probe")
    assert "knn-probe" not in protocol_names()
    with pytest.raises(CxrStudyError, match="already registered"):
        register_protocol(type("Other", (LinearProbe,), {"name": "linear-probe"})())
