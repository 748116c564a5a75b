import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CXR_STUDY_PROGRESS", "0")
os.environ.setdefault("MPLBACKEND", "Agg")


def prepare_synthetic(raw, out):
    "Index a synthetic benchmark folder with the `prepare` adapters (index only: images stay DICOM)."
    from cxr_study.data.prepare import prepare_dataset
    prepare_dataset("synthetic", raw, out, index_only=True, log=lambda *_: None)
    return out


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory):
    "A small synthetic benchmark in its raw formats (DICOM, RLE CSV, ...)."
    from cxr_study.data.synthetic import SyntheticCfg, make_synthetic_benchmark
    return make_synthetic_benchmark(tmp_path_factory.mktemp("bench") / "synthetic", SyntheticCfg(n_images=80, size=64, seed=7))


@pytest.fixture(scope="session")
def tiny_benchmark(tiny_raw, tmp_path_factory):
    "The small benchmark prepared: a folder holding index.parquet, shared by the tests that only read it."
    return prepare_synthetic(tiny_raw, tmp_path_factory.mktemp("prepared"))


# ---------------------------------------------------------------- a summary at the end of the session
# Tests that try many inputs or fault points (tests/test_faults.py, tests/test_fuzz_*.py) report what they
# tried here; pytest prints it after the results, also without -s or -rA.
_SUMMARY: list[str] = []


@pytest.fixture(scope="session")
def summary_line():
    "A function that adds a line to the 'faults and fuzzing' section printed at the end of the session."
    return _SUMMARY.append


def pytest_terminal_summary(terminalreporter):
    if _SUMMARY:
        terminalreporter.section("faults and fuzzing: what was tried")
        for line in _SUMMARY: terminalreporter.write_line(line)
