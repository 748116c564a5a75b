"""A notebook's kernel may be slow to start on a busy node (four jobs starting kernels on two cores, a cold shared
filesystem). Every way the project starts one (a run's notebook in a new kernel, a warm kernel, a report page) waits
`core.KERNEL_START_TIMEOUT` for it, not papermill's 60 s. Proven with a kernel that answers only after a delay: a
wait shorter than the delay fails with the kernel's own message, the project's wait does not."""
import inspect
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import nbformat
import papermill
import pytest

from cxr_study.core import KERNEL_START_TIMEOUT
from cxr_study.reports import report
from cxr_study.study import executors

DELAY = 4  # seconds before the kernel process starts


@pytest.fixture
def slow_kernel(tmp_path, monkeypatch):
    "The `python3` kernel, found first on JUPYTER_PATH, starting DELAY seconds late."
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = ["sh", "-c", f'sleep {DELAY}; exec "{sys.executable}" -m ipykernel_launcher -f "$0" --IPKernelApp.log_level=CRITICAL',
            "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "Python 3", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return spec


def _notebook(path:Path) -> Path:
    "A notebook with a parameters cell and one that writes what it was given."
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("encoder = 'none'", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("open('ran.txt', 'w').write(str(encoder))")]
    nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_the_wait_is_longer_than_papermills_default():
    papermills = inspect.signature(papermill.execute_notebook).parameters["start_timeout"].default  # 60 s
    assert KERNEL_START_TIMEOUT >= 5 * papermills


def test_a_report_page_waits_for_a_slow_kernel(slow_kernel, tmp_path, monkeypatch):
    template = _notebook(tmp_path / "page.ipynb")
    (tmp_path / "out").mkdir()
    monkeypatch.setattr(report, "KERNEL_START_TIMEOUT", 1)
    with pytest.raises(RuntimeError, match="didn't respond in 1 seconds"):
        report._execute(template, tmp_path / "out" / "short.ipynb", {"encoder": "a"})
    monkeypatch.setattr(report, "KERNEL_START_TIMEOUT", KERNEL_START_TIMEOUT)
    report._execute(template, tmp_path / "out" / "page.ipynb", {"encoder": "b"})
    assert (tmp_path / "out" / "ran.txt").read_text() == "b"


def test_a_runs_new_kernel_waits_for_a_slow_kernel(slow_kernel, tmp_path, monkeypatch):
    template = _notebook(tmp_path / "experiment.ipynb")
    monkeypatch.setattr(executors, "experiment_template", lambda: template)
    spec = SimpleNamespace(path=tmp_path / "run", encoder="c", task="t", protocol="p", folds=(0,), seed=1, data_dir=tmp_path,
                           out_dir=tmp_path, options=SimpleNamespace(given=dict))
    monkeypatch.setattr(executors, "KERNEL_START_TIMEOUT", 1)
    with pytest.raises(RuntimeError, match="didn't respond in 1 seconds"):
        executors._execute_notebook(spec)
    monkeypatch.setattr(executors, "KERNEL_START_TIMEOUT", KERNEL_START_TIMEOUT)
    executors._execute_notebook(spec)
    assert (tmp_path / "run" / "ran.txt").read_text() == "c"
    assert (tmp_path / "run" / "experiment.ipynb").is_file()


def test_a_warm_kernel_waits_for_a_slow_kernel(slow_kernel, tmp_path, monkeypatch):
    monkeypatch.setattr(executors, "KERNEL_START_TIMEOUT", 1)
    with executors.WarmKernel() as k, pytest.raises(RuntimeError, match="didn't respond in 1 seconds"):
        k.prepare(tmp_path)
    monkeypatch.setattr(executors, "KERNEL_START_TIMEOUT", KERNEL_START_TIMEOUT)
    with executors.WarmKernel() as k:
        k.prepare(tmp_path)
        from jupyter_core.utils import run_sync
        assert run_sync(k.km.is_alive)()
