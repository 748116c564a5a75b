"""Settings are checked before any work: a data folder without its index stops `grid` and `run` at once with the
`cxr-study prepare` that writes it, every bad path is named, and `--set KEY=VALUE` reaches the study and the run."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

CLI = str(Path(sys.executable).parent / "cxr-study")


def cxr_study(*args, cwd=None):
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "CXR_STUDY_PROGRESS": "0"})


def _one_clear_line(r, *says):
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and r.stderr.startswith("error: "), r.stderr[-2000:]
    for s in says: assert s in r.stderr, (s, r.stderr)


@pytest.mark.parametrize("command", ["grid", "run"])
def test_a_raw_benchmark_stops_before_any_run_with_the_prepare_command(tiny_raw, tmp_path, command):
    out = tmp_path / "out"
    args = (["grid", "--encoders", "prior", "raw-pixels", "--tasks", "heart-seg", "cardiomegaly-cls", "--executor", "inline", "--no-report"]
            if command == "grid" else ["run", "--encoder", "raw-pixels", "--task", "heart-seg"])
    r = cxr_study(*args, "--data", tiny_raw, "--out", out, "--folds", 0)
    _one_clear_line(r, f"{tiny_raw / 'index.parquet'}: no such file",
                    f"cxr-study prepare synthetic --root {tiny_raw} --out {tiny_raw.parent / 'prepared'}")
    assert r.stderr.count("index.parquet: no such file") == 1  # once, not run by run
    assert not (out / "runs").exists()  # nothing was started


def test_a_missing_data_folder_names_the_file_and_the_prepare_command(tmp_path):
    r = cxr_study("grid", "--encoders", "prior", "--tasks", "heart-seg", "--data", tmp_path / "nowhere", "--out", tmp_path / "out",
                  "--executor", "inline", "--no-report")
    _one_clear_line(r, f"{tmp_path / 'nowhere' / 'index.parquet'}: no such file", f"cxr-study prepare DATASET --root RAW_FOLDER --out {tmp_path / 'nowhere'}")


def test_bad_paths_are_named_without_a_traceback(tiny_benchmark, tmp_path):
    r = cxr_study("run", "--encoder", "resnet18", "--task", "cardiomegaly-cls", "--data", tiny_benchmark, "--out", tmp_path,
                  "--folds", 0, "--pretrained", tmp_path / "no-such-weights.safetensors")
    _one_clear_line(r, str(tmp_path / "no-such-weights.safetensors"), "--pretrained PATH")
    assert "pretrained=" not in r.stderr  # the command line's words, not a Python argument's
    _one_clear_line(cxr_study("grid", "--config", tmp_path / "no-such-study.yaml"), f"{tmp_path / 'no-such-study.yaml'}: study file not found")
    _one_clear_line(cxr_study("run-cell", "--jobs", tmp_path / "jobs.json", "--index", 0), f"{tmp_path / 'jobs.json'}: No such file")
    _one_clear_line(cxr_study("run-cell", "--spec", "{not json"), "--spec: not valid JSON")


def test_set_reaches_the_study_over_the_file_and_under_the_flags():
    from cxr_study.cli import build_parser, study_from_args
    from cxr_study.study.studyfile import shipped_study
    a = build_parser().parse_args(["grid", "--config", str(shipped_study("demo")), "--set", "report.n_boot=500", "--set", "folds=[0, 1]",
                                   "--set", "settings.linear-probe.probe.lr=0.01", "--set", "executor.workers=2", "--n-perm", "300"])
    cfg = study_from_args(a)
    assert (cfg.report.n_boot, cfg.report.n_perm, cfg.folds, cfg.executor.workers) == (500, 300, [0, 1], 2)
    # one entry of the nested setting changed, the file's others kept (studies/demo.yaml read with yaml)
    import yaml
    probe = yaml.safe_load(shipped_study("demo").read_text())["settings"]["linear-probe"]["probe"]
    assert cfg.settings["linear-probe"]["probe"] == {**probe, "lr": 0.01}
    a = build_parser().parse_args(["plan", "--config", str(shipped_study("demo")), "--set", "folds=[0, 1]", "--folds", "3"])
    assert study_from_args(a).folds == [3]  # a flag goes over --set


@pytest.mark.parametrize("setting, says", [
    ("reprot.n_boot=5", "reprot: unknown key; did you mean 'report'?"),
    ("settings.linear-probe.probe.batchsize=32", "settings.linear-probe.probe.batchsize: unknown segmentation-probe setting; did you mean 'batch_size'?"),
    ("report.n_boot", "--set 'report.n_boot': give KEY=VALUE"),
])
def test_a_bad_set_is_one_named_error_before_any_run(tiny_benchmark, tmp_path, setting, says):
    r = cxr_study("grid", "--encoders", "prior", "--tasks", "heart-seg", "--data", tiny_benchmark, "--out", tmp_path / "out",
                  "--executor", "inline", "--set", setting)
    _one_clear_line(r, says)
    assert not (tmp_path / "out" / "runs").exists()


def test_set_reaches_a_run(tiny_benchmark, tmp_path):
    r = cxr_study("run", "--encoder", "raw-pixels", "--task", "heart-seg", "--data", tiny_benchmark, "--out", tmp_path, "--folds", 0,
                  "--probe", '{"lr": 0.05, "patience": 2}', "--set", "mask_size=32", "--set", "probe.max_epochs=3")
    assert r.returncode == 0, r.stderr[-2000:]
    params = json.loads((tmp_path / "runs" / "raw-pixels" / "heart-seg" / "linear-probe" / "run.json").read_text())["params"]
    assert params["mask_size"] == 32
    assert (params["probe"]["lr"], params["probe"]["patience"], params["probe"]["max_epochs"]) == (0.05, 2, 3)
    assert sorted(pd.read_csv(tmp_path / "runs" / "raw-pixels" / "heart-seg" / "linear-probe" / "results.csv").fold) == [0]
    r = cxr_study("run", "--encoder", "raw-pixels", "--task", "heart-seg", "--data", tiny_benchmark, "--out", tmp_path, "--set", "mask_sise=32")
    _one_clear_line(r, "--set mask_sise: unknown run option; did you mean 'mask_size'?")
