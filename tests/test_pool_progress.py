"""Workers' progress reaches the pool's bar: each training epoch's line and each finished fold, said by the run
(in a worker process, or a notebook's kernel), shown beside the run's label on the bar of the pool that runs it."""
import threading

import pytest

import re

from cxr_study.core import epoch_line, say_status, status_to, status_unit


def test_a_run_says_its_lines_to_its_status_file_and_removes_it(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_STUDY_PROGRESS", "0")  # progress off for this process: the pool's file still gets the line
    f = tmp_path / "run" / ".progress.tmp"
    say_status("nowhere")  # outside a run: no file anywhere
    with status_to(f):
        line = epoch_line("segmentation probe", 3, 10, train_loss=0.5, val_loss=0.25)
        assert f.read_text() == line + "\n" == "segmentation probe: epoch 3/10: train loss 0.5, val loss 0.25\n"
        status_unit("fold 2 (3/5)")  # the run's units name themselves at once (a reference that trains nothing too): the lines after are theirs
        assert f.read_text() == "fold 2 (3/5)\n"
        say_status("fine-tuning: epoch 1/30")
        assert f.read_text() == "fold 2 (3/5): fine-tuning: epoch 1/30\n"
    assert not f.exists()
    assert not (tmp_path / "nowhere").exists()


def test_the_postfix_names_each_running_run_with_its_latest_line(tmp_path):
    from cxr_study.study.executors import running_postfix
    from cxr_study.study.runner import STATUS_FILE
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(); (a / STATUS_FILE).write_text("fine-tuning: epoch 2/30: train loss 0.7\n")
    assert running_postfix({"resnet18 / heart-seg": a, "prior / heart-seg": b}) == \
        "prior / heart-seg; resnet18 / heart-seg: fine-tuning: epoch 2/30: train loss 0.7"


class RecordingBar:
    "What the pool does to its bar, recorded (a tqdm's methods that run_local calls)."
    disable = False
    def __init__(self, *a, **kw): self.postfixes, self.n, self.lock = [], 0, threading.Lock()
    def set_postfix_str(self, s, refresh=True):
        with self.lock: self.postfixes.append(s)
    def update(self, k=1): self.n += k
    def close(self): pass


def test_worker_processes_epochs_reach_the_pool_bar(tiny_benchmark, tmp_path, monkeypatch):
    import cxr_study.study.executors as ex
    from cxr_study.study.options import RunOptions
    from cxr_study.study.runner import RunSpec
    bar = RecordingBar()
    monkeypatch.setattr(ex, "progress", lambda *a, **kw: bar)
    monkeypatch.setattr(ex, "WATCH_SECONDS", 0.02)
    opts = RunOptions(probe={"max_epochs": 40, "patience": 40, "batch_size": 8}, mask_size=32)
    specs = [RunSpec("raw-pixels", "heart-seg", "linear-probe", str(tiny_benchmark), str(tmp_path), 5656, (0, 1), opts),
             RunSpec("prior", "heart-seg", "linear-probe", str(tiny_benchmark), str(tmp_path), 5656, (0, 1), opts)]
    st = ex.run_local(specs, workers=2, devices=[], notebooks=False)  # two worker processes
    assert set(st.status) == {"done"}, st
    seen = "\n".join(bar.postfixes)
    # the run's label, the fold it is in, and the epoch its worker process just finished
    assert re.search(r"raw-pixels / heart-seg / linear-probe: fold [01] \([12]/2\): segmentation probe: epoch \d+/40: train loss", seen), seen[:2000]
    assert bar.n == 2  # both runs counted
    assert not list(tmp_path.rglob(".progress.tmp"))  # each run removed its status file
