"""Faults with real processes: a small study run with the command a user runs (`cxr-study grid`, runs then
summary then report) is killed with SIGKILL, its whole process group and every child, at moments aimed at
extraction, probing, writing and reporting and at random moments over several seeds; after each kill the
same command is run again. When a chain of kills ends in a run to completion, `results.csv` and
`predictions.parquet` are identical to those of an uninterrupted run and nothing temporary or partial is
left in the study folder. After every single kill, whatever is marked complete is already identical to the
uninterrupted run. Also: a full disk (a file-size limit) during a run leaves the previous complete state
and a named error."""
from __future__ import annotations

import contextlib
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml

from cxr_study.core import file_digest
from cxr_study.reports.report import REPORT_PAGES
from cxr_study.results import read_run_meta, run_path
from cxr_study.study.runner import STATUS_FILE

ENCODERS, TASKS = ["prior", "raw-pixels"], ["cardiomegaly-cls", "heart-seg"]
RUNS = [(e, t) for e in ENCODERS for t in TASKS]
STUDY = {"name": "faults", "encoders": ENCODERS, "tasks": TASKS, "folds": [0, 1], "pretrained": False,
         "settings": {"linear-probe": {"probe": {"lr": 0.05, "batch_size": 32, "max_epochs": 40, "patience": 40, "loss_size": 32},
                                       "mask_size": 32}},
         "executor": {"kind": "inline"}, "report": {"n_boot": 20, "n_perm": 20, "html": False}}
TIMING = ["seconds"]  # wall-clock columns: not results


def _env(slow_writes: Path | None = None):
    "The command's environment; `slow_writes`: a folder whose sitecustomize holds every atomic rename back (see `_slow_writes`)."
    env = {**os.environ, "CXR_STUDY_PROGRESS": "0", "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    if slow_writes is not None: env["PYTHONPATH"] = os.pathsep.join([str(slow_writes), *filter(None, [env.get("PYTHONPATH")])])
    return env


SLOW_RENAME_S = 0.3


def _slow_writes(d: Path) -> Path:
    """A `sitecustomize` that sleeps before each rename of a written temporary into place, in the command and in every Python
    process it starts. A write lasts well under the polling interval, so without it a kill aimed at a write lands just after;
    with it the temporary is on disk, as a slow or busy disk would leave it, when the kill comes. Nothing else changes."""
    d.mkdir(exist_ok=True)
    (d / "sitecustomize.py").write_text(
        "import os, time\n_replace = os.replace\n"
        "def _slow(src, dst, *a, **k):\n"
        f"    if str(src).endswith('.tmp'): time.sleep({SLOW_RENAME_S})\n"
        "    return _replace(src, dst, *a, **k)\n"
        "os.replace = _slow\n")
    return d


def _grid(cfg: Path, out: Path, report: bool) -> list[str]:
    "The user's command: the study file, its folder, and (for the kills before the report) --no-report."
    return [sys.executable, "-m", "cxr_study.cli", "grid", "--config", str(cfg), "--out", str(out), *([] if report else ["--no-report"])]


def _tables(out: Path) -> dict:
    "The study's results.csv and predictions.parquet, and each run's, timing columns left out."
    t = {}
    for name, where in [("study", out), *[(f"{e}/{k}", run_path(out, e, k, "linear-probe")) for e, k in RUNS]]:
        both = (where / "results.csv").exists() and (where / "predictions.parquet").exists()  # the study's pair: written one after the other
        if both and (name == "study" or read_run_meta(where) is not None):
            t[name] = (pd.read_csv(where / "results.csv").drop(columns=TIMING, errors="ignore"), pd.read_parquet(where / "predictions.parquet"))
    return t


def _assert_same(got: dict, ref: dict, names=None):
    for n in (ref if names is None else names):
        assert n in got, f"{n}: missing"
        pd.testing.assert_frame_equal(got[n][0], ref[n][0], check_exact=True)
        pd.testing.assert_frame_equal(got[n][1], ref[n][1], check_exact=True)


def _leftovers(out: Path) -> list[str]:
    "Anything temporary or partial under the study folder."
    bad = [str(p.relative_to(out)) for p in out.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".report-")]
    cache = out / "cache"
    bad += [str(p.relative_to(out)) for p in cache.glob("*") if p.is_dir() and not (p / "meta.json").exists()]
    bad += [str(p.relative_to(out)) for p in cache.glob("*/parts")]
    bad += [f"{e}/{k}: incomplete" for e, k in RUNS if read_run_meta(run_path(out, e, k, "linear-probe")) is None]
    return bad


def _landed(out: Path) -> str:
    "Where a kill landed, read from what it left."
    stage = sorted(out.glob(".report-*"))
    if stage:
        done = sum((stage[0] / f"{n}.ipynb").exists() for n, _ in REPORT_PAGES)
        return f"reporting ({done} of {len(REPORT_PAGES)} pages begun)" + (", at the rename" if (stage[0] / "report.json").exists() else "")
    if (out / "report").exists(): return "after the report"
    tmps = sorted(f"{p.parent.relative_to(out)}/{p.name[1:].rsplit('.', 2)[0]}".lstrip("./") for p in out.rglob(".*.tmp")
                  if p.name != STATUS_FILE)  # a run's status line for the pool's bar is not a write of its results
    n_done = sum(read_run_meta(run_path(out, e, k, "linear-probe")) is not None for e, k in RUNS)
    entry = [p for p in (out / "cache").glob("raw-pixels-*") if p.is_dir()]
    if tmps: where = f"writing {', '.join(tmps)}"
    elif entry and not (entry[0] / "meta.json").exists(): where = "extracting features"
    elif n_done == len(RUNS): where = "summarising" if not (out / "summary.md").exists() else "after the summary"
    elif not entry and n_done == 0: where = "starting up (imports, cohorts)"
    else:
        partial = [f"{e}/{k}" for e, k in RUNS if (run_path(out, e, k, "linear-probe") / "results.csv").exists()
                   and read_run_meta(run_path(out, e, k, "linear-probe")) is None]
        where = f"between writes of {partial[0]}" if partial else "probing"
    return f"{where}; {n_done} of {len(RUNS)} runs complete"


def _kill_tree(p: subprocess.Popen):
    "SIGKILL the command's process group and every descendant (DataLoader workers, papermill kernels), as a lost node would."
    try: kids = psutil.Process(p.pid).children(recursive=True)
    except psutil.Error: kids = []
    with contextlib.suppress(ProcessLookupError): os.killpg(p.pid, signal.SIGKILL)
    for k in kids:
        with contextlib.suppress(psutil.Error): k.kill()
    p.wait()
    psutil.wait_procs(kids, timeout=10)


def _start(cmd, log: Path, env: dict) -> subprocess.Popen:
    "The command in a session of its own (its process group is the one killed)."
    with open(log, "a") as f: return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _kill_when(cmd, out: Path, log: Path, trigger, delay: float = 0.0, env: dict | None = None) -> tuple[bool, float]:
    "Start the command, wait for `trigger(out)` (polled), wait `delay` s more, then kill. (killed?, seconds after start)."
    p, t0 = _start(cmd, log, env or _env()), time.time()
    while p.poll() is None and not trigger(out, t0): time.sleep(0.004)
    end = time.time() + delay
    while p.poll() is None and time.time() < end: time.sleep(0.004)
    if p.poll() is not None: return False, time.time() - t0  # finished first: not a kill point
    _kill_tree(p)
    return True, time.time() - t0


def _run(cmd, log: Path) -> subprocess.CompletedProcess:
    with open(log, "a") as f: return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env(), timeout=900)


# triggers: what the study folder shows at the moment aimed at (t0: when the command started)
def _extracting(out, t0): return any((out / "cache").glob("raw-pixels-*/parts"))
def _status(out, e, k) -> str:
    try: return (run_path(out, e, k, "linear-probe") / STATUS_FILE).read_text()
    except OSError: return ""
def _seg_probing(out, t0): return any("segmentation probe: epoch" in _status(out, e, k) for e, k in RUNS)  # a run says it is training
def _run_writing(out, t0): return any(p.name != STATUS_FILE for p in out.glob("runs/*/*/*/.*.tmp")) or any((run_path(out, e, k, "linear-probe") / "results.csv").exists()
                                                                               and not (run_path(out, e, k, "linear-probe") / "run.json").exists() for e, k in RUNS)
def _summary_writing(out, t0): return any(out.glob(".*.tmp")) or (out / "results.csv").exists()
def _reporting(out, t0):  # a report folder being built by this command (not one a killed build left)
    def mtime(p):
        try: return p.stat().st_mtime
        except OSError: return 0.0
    return any(mtime(p) > t0 for p in out.glob(".report-*"))
def _at_start(out, t0): return True  # the delay counts from the start


@pytest.fixture(scope="module")
def study(tiny_benchmark, tmp_path_factory):
    "The study file, and an uninterrupted run of the command (without the report) as the reference."
    d = tmp_path_factory.mktemp("faults")
    cfg = d / "study.yaml"
    cfg.write_text(yaml.safe_dump({**STUDY, "data": str(tiny_benchmark), "out": str(d / "unused")}))
    ref = d / "reference"
    t0 = time.time()
    r = _run(_grid(cfg, ref, report=False), d / "reference.log")
    secs = time.time() - t0
    assert r.returncode == 0, (d / "reference.log").read_text()[-3000:]
    assert _leftovers(ref) == []
    tables = _tables(ref)
    t0 = time.time()
    assert _run(_grid(cfg, ref, report=False), d / "reference.log").returncode == 0  # again: every run skipped
    startup = time.time() - t0
    _assert_same(_tables(ref), tables)
    return {"cfg": cfg, "dir": d, "ref": tables, "ref_dir": ref, "seconds": secs, "startup": startup}


def _chain(study, name: str, points: list, report: bool, start_from: Path | None = None, slow_writes: bool = False) -> list[dict]:
    """Kill the command at each point in turn (each kill's rerun is the next start), then run it to completion and check.
    `slow_writes`: the killed commands hold each rename back (`_slow_writes`); the run to completion is the plain command."""
    out, log = study["dir"] / name, study["dir"] / f"{name}.log"
    if start_from is not None: shutil.copytree(start_from, out)
    cmd, rows = _grid(study["cfg"], out, report), []
    env = _env(_slow_writes(study["dir"] / "slow-writes") if slow_writes else None)
    for label, trigger, delay in points:
        killed, t = _kill_when(cmd, out, log, trigger, delay, env)
        if not killed:  # the command finished first: nothing was interrupted, and the study is complete
            rows.append({"chain": name, "aimed at": label, "at_s": round(t, 1), "landed": "missed (finished first)", "killed": False}); break
        rows.append({"chain": name, "aimed at": label, "at_s": round(t, 1), "landed": _landed(out), "killed": True})
        _assert_same(_tables(out), study["ref"], names=[n for n in _tables(out)])  # what is marked complete is already right
    r = _run(cmd, log)
    assert r.returncode == 0, log.read_text()[-3000:]
    _assert_same(_tables(out), study["ref"])
    assert _leftovers(out) == [], _leftovers(out)
    if report:
        rep = out / "report"
        assert (rep / "report.json").exists() and all((rep / f"{n}.ipynb").exists() for n, _ in REPORT_PAGES)
    return rows


def _random_points(study, seed: int, n: int) -> list:
    """`n` kills at random moments: each delay uniform between 1 s and 0.8 of the work the rerun still has (the uninterrupted
    time less what earlier kills got done, a restart costing the time of a rerun that skips everything)."""
    rng, T, s, done, pts = random.Random(seed), study["seconds"], study["startup"], 0.0, []
    for _ in range(n):
        d = rng.uniform(1.0, max(s + 1.0, 0.8 * (T - done)))
        pts.append((f"random, seed {seed}", _at_start, d)); done += max(0.0, d - s)
    return pts


def test_kill_anywhere_then_rerun(study, summary_line):
    "At least 10 kill points (aimed, and random over several seeds), each followed by the same command; the end is the reference."
    t0 = time.time()
    aimed = [("extraction", _extracting, 0.05), ("probing (segmentation probe)", _seg_probing, 0.0),
             ("writing a run's files", _run_writing, 0.0), ("writing the study's tables", _summary_writing, 0.0)]
    rows = _chain(study, "aimed", aimed, report=False, slow_writes=True)
    # the report, with the runs complete: kills while its pages execute, then the command to the end
    rows += _chain(study, "report", [("reporting: just begun", _reporting, random.Random(0).uniform(0.2, 2.0)),
                                     ("reporting: a page running", _reporting, 3.0)], report=True, start_from=study["ref_dir"])
    seed = 0
    while sum(r["killed"] for r in rows) < 10 and seed < 8:  # random moments over seeds, until 10 kills landed
        seed += 1
        rows += _chain(study, f"seed {seed}", _random_points(study, seed, 3), report=False)
    killed = [r for r in rows if r["killed"]]
    summary_line(f"fault harness: {len(killed)} kill points landed ({len(rows)} tried, {seed} random seeds) in {time.time() - t0:.0f} s; "
                 f"the uninterrupted command takes {study['seconds']:.0f} s, a rerun with nothing to do {study['startup']:.0f} s")
    for r in rows: summary_line(f"  {r['chain']:>7} | aimed at {r['aimed at']:<30} | kill at {r['at_s']:>5.1f} s | landed: {r['landed']}")
    print("\n".join(f"{r['chain']}: {r['aimed at']} -> {r['landed']} ({r['at_s']} s)" for r in rows))
    assert len(killed) >= 10, rows
    phases = " ".join(r["landed"] for r in killed)
    for phase in ("extracting", "writing", "reporting", "probing"): assert phase in phases, phases


def _limited(nbytes: int):
    def pre():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return pre


def test_full_disk_keeps_the_complete_state(study, tmp_path):
    "A write that fails partway (file-size limit, as a full disk) is a named error; the previous complete state stays as it was."
    out = tmp_path / "study"
    shutil.copytree(study["ref_dir"], out)
    before = {str(p.relative_to(out)): file_digest(p) for p in out.rglob("*") if p.is_file() and ".locks" not in p.parts}
    cmd = _grid(study["cfg"], out, report=False) + ["--tasks", *TASKS, "pneumothorax-seg"]  # two new runs to write
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600, preexec_fn=_limited(8000))
    said = r.stdout + r.stderr
    assert r.returncode != 0, said[-2000:]
    assert "Traceback" not in said, said[-3000:]
    assert "predictions.parquet: could not be written: file too large" in said, said[-3000:]
    assert "FAILED prior / pneumothorax-seg / linear-probe" in said
    after = {str(p.relative_to(out)): file_digest(p) for p in out.rglob("*") if p.is_file() and ".locks" not in p.parts}
    assert {k: v for k, v in after.items() if k in before} == before  # every complete run, the study tables: untouched
    new = [k for k in after if k not in before]
    assert all(k.startswith("runs/") and "pneumothorax-seg" in k and not k.endswith("run.json") for k in new), new
    for e in ENCODERS: assert read_run_meta(run_path(out, e, "pneumothorax-seg", "linear-probe")) is None
    assert not [p for p in out.rglob("*.tmp")]
    _assert_same(_tables(out), study["ref"])


def test_damaged_files_are_found_and_redone(study, tmp_path):
    "Bit flips and cuts in files already written (a run's tables, its run.json, the feature cache): named, redone, same end."
    out = tmp_path / "study"
    shutil.copytree(study["ref_dir"], out)
    pred = run_path(out, "raw-pixels", "heart-seg", "linear-probe") / "predictions.parquet"
    b = bytearray(pred.read_bytes()); b[len(b) // 2] ^= 0x10; pred.write_bytes(bytes(b))            # one bit flipped
    meta = run_path(out, "prior", "cardiomegaly-cls", "linear-probe") / "run.json"
    bump = lambda m: f'"seconds": {float(m.group(1)) + 1.5}'                                          # always another value
    changed = re.sub(r'"seconds": ([0-9.]+)', bump, meta.read_text(), count=1)
    assert changed != meta.read_text(); meta.write_text(changed)                                       # valid JSON, another value
    grid = next((out / "cache").glob("raw-pixels-*")) / "grid.npy"
    grid.write_bytes(grid.read_bytes()[:-100])                                                        # cut short
    r = subprocess.run(_grid(study["cfg"], out, report=False), capture_output=True, text=True, env=_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    for f in (pred, meta, grid): assert f"{f}: damaged" in r.stderr, (f, r.stderr[-3000:])
    status = {tuple(l.split()[:2]): " ".join(l.split()[3:5]) for l in r.stdout.splitlines() if l.split()[:1] and l.split()[0] in ENCODERS}
    assert status[("raw-pixels", "heart-seg")].startswith("done") and status[("prior", "cardiomegaly-cls")].startswith("done"), status
    assert status[("prior", "heart-seg")] == "skipped (complete)", status
    _assert_same(_tables(out), study["ref"])
    assert _leftovers(out) == []
