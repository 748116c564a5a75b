"""The notebooks a user reruns by hand (the experiment template, each report page) run under papermill with
their own defaults from the folder that holds `cxr_study_demo/`, and with `-p`/`-y` overrides.

The study folder is a copy of the small study of report_study.py laid out as `cxr-study demo` lays out its
output (`cxr_study_demo/` with the prepared index in `cxr_study_demo/data/prepared`)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from report_study import built_study

PAPERMILL = str(Path(sys.executable).parent / "papermill")


@pytest.fixture(scope="module")
def demo_parent(tiny_benchmark, tmp_path_factory):
    "A folder holding `cxr_study_demo/`: a complete small study with its report, and the prepared index where the demo puts it."
    parent = tmp_path_factory.mktemp("rerun")
    study = parent / "cxr_study_demo"
    shutil.copytree(built_study(tiny_benchmark, tmp_path_factory), study, symlinks=True)
    (study / "data").mkdir()
    (study / "data" / "prepared").symlink_to(tiny_benchmark, target_is_directory=True)
    return parent


def _papermill(template, out, cwd, *overrides):
    r = subprocess.run([PAPERMILL, str(template), str(out), "--no-progress-bar", *map(str, overrides)],
                       cwd=cwd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "CXR_STUDY_PROGRESS": "0"})
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(Path(out).read_text())


def _injected(nb) -> list:
    return [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]


def _folds(run_dir) -> list:
    return sorted(pd.read_csv(run_dir / "results.csv").fold)


def test_every_report_page_runs_with_its_defaults(demo_parent, tmp_path):
    from cxr_study.reports.report import EXECUTION_ORDER, report_template
    tables = demo_parent / "cxr_study_demo" / "report" / "tables"
    before = {p.name: p.stat().st_mtime_ns for p in tables.glob("*.csv")}
    assert len(before) > 10
    for name in EXECUTION_ORDER:  # the index last: its findings read the other pages' tables
        nb = _papermill(report_template(name), tmp_path / f"{name}.ipynb", demo_parent)
        assert not _injected(nb), name  # nothing given: the page ran on its own defaults
        assert any(c.get("outputs") for c in nb["cells"]), name
    # the defaults found the study and its report: every table of the report was written again, none elsewhere
    after = {p.name: p.stat().st_mtime_ns for p in tables.glob("*.csv")}
    assert set(after) == set(before) and all(after[k] > before[k] for k in before)


def test_a_report_page_takes_p_and_y_overrides(demo_parent, tmp_path):
    from cxr_study.reports.report import report_template
    elsewhere = tmp_path / "my_report"
    nb = _papermill(report_template("comparisons"), tmp_path / "comparisons.ipynb", demo_parent,
                    "-p", "report_dir", elsewhere, "-p", "n_boot", 200, "-y", "{n_perm: 200}")
    assert "n_boot = 200" in "".join(_injected(nb)[0]["source"]) and "n_perm = 200" in "".join(_injected(nb)[0]["source"])
    assert (elsewhere / "tables" / "friedman.csv").exists() and (elsewhere / "tables" / "mean_ranks.csv").exists()


def test_the_experiment_template_runs_with_its_defaults(demo_parent, tmp_path):
    from cxr_study.study.runner import experiment_template, is_complete
    nb = _papermill(experiment_template(), tmp_path / "experiment.ipynb", demo_parent)
    assert not _injected(nb)
    # its defaults: raw pixels on cardiomegaly classification, every fold, on the demo's prepared index, filed in the demo's folder
    run = demo_parent / "cxr_study_demo" / "runs" / "raw-pixels" / "cardiomegaly-cls" / "linear-probe"
    assert is_complete(demo_parent / "cxr_study_demo", "raw-pixels", "cardiomegaly-cls", "linear-probe")
    assert _folds(run) == [0, 1, 2, 3, 4]


def test_the_experiment_template_takes_p_and_y_overrides(demo_parent, tmp_path):
    from cxr_study.study.runner import experiment_template, is_complete
    _papermill(experiment_template(), tmp_path / "experiment.ipynb", demo_parent,
               "-p", "encoder", "prior", "-p", "out_dir", tmp_path / "out", "-y", "{task: heart-seg, folds: [1], options: {mask_size: 32}}")
    assert is_complete(tmp_path / "out", "prior", "heart-seg", "linear-probe")
    run = tmp_path / "out" / "runs" / "prior" / "heart-seg" / "linear-probe"
    assert _folds(run) == [1]
    assert json.loads((run / "run.json").read_text())["params"]["mask_size"] == 32
