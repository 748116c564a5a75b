"""Executors with real processes: submitit jobs, two grids sharing one study folder, a worker killed
with SIGKILL mid-run, and Slurm jobs that carry every setting of every run."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from cxr_study.core import read_table
from cxr_study.study.executors import grid_specs, run_grid, submit_slurm
from cxr_study.results import RUN_FILES, run_path

PROBE = {"lr": 0.02, "batch_size": 32, "max_epochs": 15}
OPTS = {"probe": PROBE, "mask_size": 64}
ENCODERS, TASKS = ["prior", "raw-pixels"], ["cardiomegaly-cls", "heart-seg"]
CELLS = [(e, t) for e in ENCODERS for t in TASKS]


def _grid_cmd(data, out, *extra):
    return [sys.executable, "-m", "cxr_study.cli", "grid", "--data", str(data), "--out", str(out), "--encoders", *ENCODERS,
            "--tasks", *TASKS, "--folds", "0", "--probe", json.dumps(PROBE), "--mask-size", "64", "--no-report", *extra]


def _env():
    return {**os.environ, "CXR_STUDY_PROGRESS": "0", "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}


def _status_rows(stdout):
    "The status table `grid` prints: (encoder, task, status) per run."
    rows = []
    for line in stdout.splitlines():
        tok = line.split()
        if len(tok) >= 4 and tok[0] in ENCODERS and tok[1] in TASKS:
            rows.append((tok[0], tok[1], " ".join(tok[3:5]) if tok[3] in ("done", "skipped") and len(tok) > 4 and not
                         tok[4].replace(".", "").isdigit() else tok[3]))
    return rows


def _run_tables(out, e, t, p="linear-probe"):
    d = run_path(out, e, t, p)
    return (read_table(d / "results.csv").drop(columns="seconds"), read_table(d / "predictions.parquet"))


def _assert_same_runs(a, b):
    for e, t in CELLS:
        (ra, pa), (rb, pb) = _run_tables(a, e, t), _run_tables(b, e, t)
        pd.testing.assert_frame_equal(ra, rb, check_exact=True)
        pd.testing.assert_frame_equal(pa, pb, check_exact=True)


def _no_partial_files(out):
    left = [p for p in Path(out).rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".") and p.suffix == ".tmp"]
    assert not left, left


@pytest.fixture(scope="module")
def reference(tiny_benchmark, tmp_path_factory):
    "The grid run inline, uninterrupted, in this process."
    out = tmp_path_factory.mktemp("inline")
    st = run_grid(ENCODERS, TASKS, tiny_benchmark, out, folds=[0], executor="inline", options=OPTS, show_progress=False)
    assert st.status.tolist() == ["done"] * 4, st.message.tolist()
    return out


def test_submitit_local_jobs_match_inline(tiny_benchmark, reference, tmp_path):
    "submitit's LocalExecutor runs each run as a subprocess job through the papermill template, with the inline results."
    specs = grid_specs(ENCODERS, TASKS, tiny_benchmark, tmp_path / "out", folds=[0], options=OPTS)
    jobs = submit_slurm(specs, folder=tmp_path / "submitit", cluster="local")
    assert len(jobs) == 4
    pids = set()
    for j in jobs:
        r = j.result()  # raises if the job failed
        assert r["status"] == "done", r
        pids.add(j.job_id)
    assert len(pids) == 4  # four separate jobs
    _assert_same_runs(reference, tmp_path / "out")
    for e, t in CELLS:  # each job left its executed notebook, as a local run does
        assert (run_path(tmp_path / "out", e, t, "linear-probe") / "experiment.ipynb").is_file()
    assert submit_slurm(specs, folder=tmp_path / "submitit", cluster="local") == []  # all complete: nothing to submit


def test_two_grids_on_one_folder_run_each_cell_once(tiny_benchmark, reference, tmp_path):
    cmd = _grid_cmd(tiny_benchmark, tmp_path / "out", "--executor", "inline")
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (o, e) in zip(procs, outs): assert p.returncode == 0, e[-2000:]
    rows = [_status_rows(o) for o, _ in outs]
    assert all(len(r) == 4 for r in rows), outs
    done = [(e, t) for r in rows for e, t, s in r if s == "done"]
    assert sorted(done) == sorted(CELLS)  # every cell run, by exactly one of the two processes
    others = {s for r in rows for e, t, s in r if s != "done"}
    assert others <= {"done elsewhere", "skipped (complete)"}, others
    _assert_same_runs(reference, tmp_path / "out")


def test_kill_a_worker_then_rerun(tiny_benchmark, reference, tmp_path):
    "SIGKILL a pool worker mid-run: its run is failed and not complete; the same command again keeps the rest and redoes it."
    out = tmp_path / "out"
    cmd = _grid_cmd(tiny_benchmark, out, "--executor", "local", "--workers", "2")
    grid = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    victim, t0 = None, time.time()
    while victim is None and time.time() - t0 < 300 and grid.poll() is None:
        for c in psutil.Process(grid.pid).children(recursive=False):
            try: cl = c.cmdline()
            except psutil.Error: continue
            if "run-cell" in cl and "raw-pixels" in cl[cl.index("--spec") + 1] and "heart-seg" in cl[cl.index("--spec") + 1]:
                victim = c
                break
        time.sleep(0.05)
    assert victim is not None, "the worker of raw-pixels / heart-seg never started"
    time.sleep(2.0)  # mid-run: its kernel is training the probe
    os.kill(victim.pid, signal.SIGKILL)
    o, e = grid.communicate(timeout=600)
    assert grid.returncode == 1, (o, e)  # a failed run is reported
    assert "FAILED raw-pixels / heart-seg / linear-probe: worker killed by signal 9" in e, e
    killed = run_path(out, "raw-pixels", "heart-seg", "linear-probe")
    assert not (killed / "run.json").exists()
    finished = [c for c in CELLS if c != ("raw-pixels", "heart-seg")]
    for e_, t_ in finished: assert all((run_path(out, e_, t_, "linear-probe") / f).exists() for f in RUN_FILES)
    stamps = {c: (run_path(out, *c, "linear-probe") / "run.json").stat().st_mtime_ns for c in finished}
    time.sleep(2.0)  # let a kernel orphaned by the kill notice and exit
    again = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    st = dict(((e_, t_), s) for e_, t_, s in _status_rows(again.stdout))
    assert st[("raw-pixels", "heart-seg")] == "done"
    assert all(st[c] == "skipped (complete)" for c in finished), st
    assert stamps == {c: (run_path(out, *c, "linear-probe") / "run.json").stat().st_mtime_ns for c in finished}  # kept, not redone
    _assert_same_runs(reference, out)
    _no_partial_files(out)


def test_slurm_jobs_carry_every_setting(tiny_benchmark, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "cxr_study.cli", "grid", "--data", str(tiny_benchmark), "--out", str(out), "--encoders", "resnet18",
           "--tasks", "heart-seg", "--protocols", "linear-probe", "fine-tune", "--folds", "0", "1", "--seed", "11",
           "--pretrained", "my-org/resnet-weights", "--device", "cuda:1", "--probe", '{"lr": 0.01}', "--adapt", '{"mode": "lora"}',
           "--mask-size", "128", "--executor", "slurm", "--partition", "gpu", "--account", "lab", "--time", "02:00:00",
           "--gres", "gpu:a100:1", "--mem", "32G", "--cpus-per-task", "6", "--max-parallel", "3"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr
    script = out / "slurm" / "grid.sbatch"
    assert f"submit with: sbatch {script}" in r.stdout
    txt = script.read_text()
    for line in ["#SBATCH --partition=gpu", "#SBATCH --account=lab", "#SBATCH --time=02:00:00", "#SBATCH --gres=gpu:a100:1",
                 "#SBATCH --mem=32G", "#SBATCH --cpus-per-task=6", "#SBATCH --array=0-1%3", "#SBATCH --requeue", "scontrol requeue"]:
        assert line in txt, line
    jobs = json.loads((out / "slurm" / "jobs.json").read_text())
    assert jobs["notebooks"] is True  # each task executes the papermill template
    runs = jobs["runs"]
    assert [(j["encoder"], j["task"], j["protocol"]) for j in runs] == [("resnet18", "heart-seg", "linear-probe"),
                                                                       ("resnet18", "heart-seg", "fine-tune")]
    for j in runs:
        assert j["options"]["pretrained"] == "my-org/resnet-weights"
        assert j["options"]["device"] == "cuda:1"
        assert j["options"]["probe"] == {"lr": 0.01}
        assert j["options"]["adapt"] == {"mode": "lora"}
        assert j["options"]["mask_size"] == 128
        assert j["folds"] == [0, 1] and j["seed"] == 11
        assert Path(j["data_dir"]) == Path(tiny_benchmark).absolute() and Path(j["out_dir"]) == out.absolute()
    # --submit without Slurm: a named error, and the jobs stay written
    r = subprocess.run(cmd + ["--submit"], capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 2 and "no Slurm on this machine (sbatch not found)" in r.stderr, r.stderr
    assert script.is_file()


def test_study_file_with_flags_over_it(tmp_path):
    from cxr_study.cli import build_parser, study_from_args
    from cxr_study.study.studyfile import shipped_study
    a = build_parser().parse_args(["grid", "--config", str(shipped_study("demo")), "--folds", "0", "1", "--partition", "short",
                                   "--workers", "3"])
    cfg = study_from_args(a)
    assert cfg.folds == [0, 1] and cfg.executor.slurm.partition == "short" and cfg.executor.workers == 3  # the flags
    import yaml
    assert cfg.encoders == yaml.safe_load(shipped_study("demo").read_text())["encoders"] and cfg.name == "demo"  # the file, unflagged
    from cxr_study.cli import DEMO_PROBE
    assert cfg.settings["linear-probe"]["probe"] == DEMO_PROBE  # the demo study file holds the demo's probe
