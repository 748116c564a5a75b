"""benchmarks/gpu_study.py's pieces on the CPU, with small models: the GPU peak table, the time limit, the
throughput of the extraction's forward, the FLOP bound from the meta-device count, a failing encoder among working
ones, the fine-tuning step, and the skip without CUDA. The GPU figures themselves need a GPU. About 30 s."""
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/"benchmarks"))
import benchlib  # noqa: E402
import gpu_study  # noqa: E402
from cxr_study.study.plan import GPU_PEAK_BF16, encoder_profile  # noqa: E402


def test_peak_from_the_device_name():
    assert gpu_study.peak_bf16("NVIDIA H100 80GB HBM3") == GPU_PEAK_BF16["H100"] == 989e12
    assert gpu_study.peak_bf16("NVIDIA A100-SXM4-40GB") == 312e12
    assert gpu_study.peak_bf16("NVIDIA GeForce RTX 4090") is None  # not in the table: the measured matrix-product rate stands in


def test_time_limit_stops_a_slow_block():
    t = time.perf_counter()
    with pytest.raises(TimeoutError, match="time limit"):
        with gpu_study.time_limit(0.2): time.sleep(3)
    assert time.perf_counter() - t < 1.5
    with gpu_study.time_limit(5): pass  # a block within its limit; the alarm is cleared after it
    time.sleep(0.1)


def test_throughput_counts_images_per_second():
    enc = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1))
    ips = gpu_study.throughput(enc, 32, 4, torch.device("cpu"), repeats=3)
    assert len(ips) == 3 and all(v > 0 for v in ips)


def test_run_on_cpu_measures_what_it_can():
    "The whole run on the CPU (a check of the code): a working encoder with its bound, a failing one noted, the fine-tuning step."
    res = gpu_study.run(repeats=3, encoders=["resnet18", "no-such-encoder"], batch=2, device="cpu", quick=True,
                        finetune=("resnet18", "classification", 2))
    benchlib.check_result(res, "gpu_study")
    f, b = res["figures"]["resnet18"], res["figures"]["resnet18-bound"]
    assert f["unit"] == "img/s" and f["repeats"] == 3 and "224 px" in f["label"]
    gflops = encoder_profile("resnet18")["flops"] / 1e9
    assert f"{gflops:.0f} GFLOP per image" in b["label"]
    peak = res["settings"]["peak_bf16_tflops"] * 1e12
    for ips, frac in zip(f["values"], b["values"]):  # share of the bound = images/s x FLOPs per image / peak
        assert frac == pytest.approx(ips * gflops * 1e9 / peak, rel=1e-3)
    assert any(n.startswith("no-such-encoder: not measured") for n in res["notes"])
    assert res["figures"]["finetune"]["unit"] == "img/s" and any("peak GPU memory" in n for n in res["notes"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_cuda_it_is_skipped_with_the_reason():
    res = gpu_study.run()
    assert "no CUDA GPU" in res["skipped"] and not res["figures"]
