"""Runs executed one after another in this process share one notebook kernel (`executors.WarmKernel`): each run's
executed notebook is the one a new kernel writes (its cells numbered from 1, nothing left from the run before, the
run folder as working directory), the results are those of a new kernel per run, and a kernel that died is
started again. About a minute."""
import json

import pandas as pd
import pytest

from cxr_study.study.executors import WarmKernel, execute_run, grid_specs, run_local

OPTS = {"probe": {"lr": 0.02, "batch_size": 32, "max_epochs": 10}, "mask_size": 64}


@pytest.fixture(scope="module")
def warm_and_cold(tiny_benchmark, tmp_path_factory):
    "The same runs through one warm kernel (run_local) and through a new kernel each (execute_run without one)."
    out = tmp_path_factory.mktemp("runs")
    specs = {k: grid_specs(["prior", "raw-pixels"], ["cardiomegaly-cls", "heart-seg"], tiny_benchmark, out/k, folds=[0], options=OPTS)
             for k in ("warm", "cold")}
    warm = run_local(specs["warm"], workers=1, show_progress=False)
    cold = pd.DataFrame([execute_run(s) for s in specs["cold"]])
    return specs, warm, cold


def test_same_results_as_a_new_kernel_per_run(warm_and_cold):
    specs, warm, cold = warm_and_cold
    assert (warm.status == "done").all() and (cold.status == "done").all(), (warm, cold)
    for w, c in zip(specs["warm"], specs["cold"]):
        assert pd.read_parquet(w.path/"predictions.parquet").equals(pd.read_parquet(c.path/"predictions.parquet")), w.label


def test_each_notebook_starts_afresh(warm_and_cold):
    specs, _, _ = warm_and_cold
    for s in specs["warm"]:
        nb = json.loads((s.path/"experiment.ipynb").read_text())
        counts = [c["execution_count"] for c in nb["cells"] if c["cell_type"] == "code"]
        assert counts == list(range(1, len(counts) + 1)), (s.label, counts)
        assert not any(o.get("output_type") == "error" for c in nb["cells"] for o in c.get("outputs", [])), s.label
        params = next(c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", []))
        assert f'encoder = "{s.encoder}"' in "".join(params["source"])  # this run's parameters, not the previous run's


def test_namespace_and_folder_are_reset(tmp_path):
    "What one notebook defines is gone in the next; the working directory is the next one's folder; a dead kernel is restarted."
    from jupyter_core.utils import run_sync
    a, b = tmp_path/"a", tmp_path/"b"; a.mkdir(); b.mkdir()
    with WarmKernel() as k:
        k.prepare(a)
        run_sync(k.kc.execute_interactive)("import os; left_over = 1; here = os.getcwd()", timeout=60)
        k.prepare(b)
        seen = []
        run_sync(k.kc.execute_interactive)("print('left_over' in dir(), os.getcwd() if 'os' in dir() else __import__('os').getcwd())",
                                           timeout=60, output_hook=lambda m: seen.append(m["content"].get("text", "")))
        assert "".join(seen).split() == ["False", str(b)]
        run_sync(k.km.shutdown_kernel)(now=True)  # the kernel dies (an out-of-memory kill, say) ...
        k.prepare(a)  # ... and the next run gets a new one
        assert run_sync(k.km.is_alive)()
