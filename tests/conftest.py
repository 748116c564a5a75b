import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CXR_STUDY_PROGRESS", "0")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def tiny_benchmark(tmp_path_factory):
    "A small synthetic benchmark with its index, shared by the tests that only read it."
    from cxr_study.data.index import write_index
    from cxr_study.data.synthetic import SyntheticCfg, index_synthetic, make_synthetic_benchmark
    root = make_synthetic_benchmark(tmp_path_factory.mktemp("bench") / "synthetic", SyntheticCfg(n_images=80, size=64, seed=7))
    write_index(index_synthetic(root)[0], root / "index.parquet")
    return root
