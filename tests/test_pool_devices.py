"The local pool's workers get the GPUs the parent may use: a scheduler's CUDA_VISIBLE_DEVICES, or the --devices list mapped onto it."
import pytest

import cxr_study.core as core
from cxr_study.core import CxrStudyError
from cxr_study.study.executors import pool_slots, visible_gpus


@pytest.fixture
def two_gpus(monkeypatch):
    "A machine where torch sees two GPUs."
    monkeypatch.setattr(core, "_cuda_count", lambda: 2)


def _gpus(slots): return [s["CUDA_VISIBLE_DEVICES"] for s in slots]


def test_a_schedulers_gpus_not_zero_and_one(two_gpus, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert visible_gpus() == ["2", "3"]
    assert _gpus(pool_slots("auto")) == ["2", "3"]       # one worker per GPU, on the job's own
    assert _gpus(pool_slots(4)) == ["2", "3", "2", "3"]  # more workers than GPUs: in turn
    assert _gpus(pool_slots("auto", devices=[1])) == ["3"]  # --devices 1: the job's second GPU
    with pytest.raises(CxrStudyError, match="may use 2 GPU"): pool_slots("auto", devices=[2])


def test_uuids_pass_through(two_gpus, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-5b1c0e8a,GPU-77d2a310")
    assert _gpus(pool_slots("auto")) == ["GPU-5b1c0e8a", "GPU-77d2a310"]


def test_without_the_variable_the_machines_indices(two_gpus, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert _gpus(pool_slots("auto")) == ["0", "1"]
    assert _gpus(pool_slots("auto", devices=[1])) == ["1"]


def test_no_gpu_one_worker_with_every_core(monkeypatch):
    monkeypatch.setattr(core, "_cuda_count", lambda: 0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # set, but no CUDA here
    assert pool_slots("auto") == [{}]
