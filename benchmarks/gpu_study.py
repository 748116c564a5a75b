"""The study's GPU costs in one short call: the extraction throughput of each of the study's eight encoders at its
study resolution against its FLOP bound, and a fine-tuning step's throughput and peak memory.

    python benchmarks/run_all.py --only gpu_study          # measure and write the figures into results.json and the README
    python benchmarks/gpu_study.py [--encoders rad-dino ...] [--batch 32] [--limit 45] [--repeats 3] [--quick] [--json PATH]

Needs one CUDA GPU; without one it is recorded as skipped, with the reason. Every encoder is built without weights
(random init: weights do not change the cost) directly on the GPU, at its study input size, and runs its forward as
the feature extraction does (`torch.inference_mode`, bf16 autocast) on random images already on the GPU: the
throughput of the GPU's part of an extraction, which is what the study's plan (`cxr-study plan`) budgets. Its
bound is the GPU's dense bf16 peak (NVIDIA's data sheet for A100, H100 and H200; otherwise, and always as a check,
the rate of a large bf16 matrix product measured here) over the encoder's FLOPs per image, counted on the meta
device as `cxr_study.study.plan.encoder_profile` counts them. Each encoder has a time limit (`--limit` seconds, building
included); one that fails, runs out of memory at every batch tried or takes too long is noted and the others are
measured. Then one fine-tuning step (forward, loss, backward, clipping, AdamW) of the study's segmentation model on
RAD-DINO's ViT-B/14 at 518 px, batch 16: images per second and peak memory (`benchmarks/gpu_finetune.py` measures
every model). About 5 minutes on an H100.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CXR_STUDY_PROGRESS", "0")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # benchlib, beside this file
import benchlib  # noqa: E402
import cxr_study  # noqa: E402,F401  (first: its thread settings precede torch's start)

import torch  # noqa: E402

TITLE = "GPU: extraction throughput of the study's encoders against their FLOP bound, and a fine-tuning step"
STUDY_ENCODERS = ["rad-dino", "ark-plus", "medimageinsight", "biomedclip", "chexagent-vision", "medsiglip", "dinov2", "siglip2"]
FINETUNE = ("rad-dino", "segmentation", 16)  # encoder, task, batch


def peak_bf16(device_name: str) -> float | None:
    "Dense bf16 tensor-core FLOP/s of a GPU named like 'NVIDIA H100 80GB HBM3' (the plan's table); None when not listed."
    from cxr_study.study.plan import GPU_PEAK_BF16
    return next((v for k, v in GPU_PEAK_BF16.items() if k.lower() in device_name.lower()), None)


def matmul_rate(device: torch.device, n: int = 8192, dtype=torch.bfloat16, reps: int = 10) -> float:
    "FLOP/s of an n x n matrix product on `device`, the best of `reps` (after one untimed)."
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for k in range(reps + 1):
        sync(device); t = time.perf_counter(); a @ b; sync(device)
        if k: best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def sync(device: torch.device):
    if device.type == "cuda": torch.cuda.synchronize(device)


@contextlib.contextmanager
def time_limit(seconds: float):
    "Raise TimeoutError in this (main) thread once `seconds` have passed inside the block."
    def stop(*_): raise TimeoutError(f"over the time limit of {seconds:.0f} s")
    old = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try: yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def build(name: str, device: torch.device):
    "The encoder without weights, on `device` (its parameters created there), in eval mode."
    from cxr_study.encoders.registry import create_encoder
    torch.manual_seed(0)
    try:
        with torch.device(device): enc = create_encoder(name)
    except Exception:  # a model that insists on building on the CPU first
        enc = create_encoder(name)
    return enc.to(device).eval()


def throughput(enc, size: int, batch: int, device: torch.device, repeats: int, seconds: float = 2.0) -> list[float]:
    "Images/s of the extraction's forward (inference mode, bf16 autocast on CUDA) on random images: `repeats` timings of about `seconds`."
    x = torch.randn(batch, 3, size, size, device=device)
    amp = device.type == "cuda"
    def forward():
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp): enc(x)
    forward(); forward(); sync(device)  # warm-up: kernels chosen, memory allocated
    out = []
    for _ in range(repeats):
        n, t = 0, time.perf_counter()
        while n == 0 or time.perf_counter() - t < seconds:
            forward(); n += 1
            if device.type == "cpu": break  # the CPU check: one batch
        sync(device); out.append(n * batch / (time.perf_counter() - t))
    return out


def measure_encoder(name: str, device: torch.device, batch: int, repeats: int, limit: float, peak: float) -> dict:
    "Throughput and FLOP bound of one encoder; halves the batch on running out of memory; raises on anything else."
    from cxr_study.study.plan import encoder_profile
    with time_limit(limit):
        prof = encoder_profile(name)
        enc = build(name, device)
        try:
            while True:
                try: ips = throughput(enc, prof["size"], batch, device, repeats); break
                except torch.cuda.OutOfMemoryError:
                    if batch == 1: raise
                    batch //= 2; torch.cuda.empty_cache()
        finally:
            del enc
            if device.type == "cuda": torch.cuda.empty_cache()
    bound = peak / prof["flops"]
    return {"images_per_s": ips, "bound": bound, "fraction": [v / bound for v in ips], "batch": batch, "size": prof["size"],
            "gflops": prof["flops"] / 1e9}


def finetune_step(device: torch.device, repeats: int, steps: int, limit: float, what: tuple = FINETUNE) -> dict:
    "Images/s and peak GiB of the study's fine-tuning step (`what`: encoder, task, batch; RAD-DINO's segmentation, batch 16)."
    import gpu_finetune
    from cxr_study.encoders.registry import create_encoder
    from cxr_study.train.finetune import build_finetune_model
    name, task, batch = what
    ips, peaks = [], []
    with time_limit(limit):
        for _ in range(repeats):
            with torch.device(device): model = build_finetune_model(create_encoder(name), task)
            size = model.encoder.cfg.preprocess.size
            i, p = gpu_finetune.measure(model, size, task, device, batch, steps, 2, channels_last=False)
            ips.append(i); peaks.append(p)
            del model
            if device.type == "cuda": torch.cuda.empty_cache()
    return {"images_per_s": ips, "peak_gib": peaks, "size": size, "batch": batch}


def run(repeats: int = benchlib.MIN_REPEATS, quick: bool = False, encoders: list | None = None, batch: int = 32,
        limit: float = 45.0, device: str = "cuda", finetune: tuple = FINETUNE) -> dict:
    "Every encoder's throughput and bound, then the fine-tuning step; skipped without CUDA (`device='cpu'` only checks the code)."
    command = "python benchmarks/run_all.py --only gpu_study"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        return benchlib.skipped(TITLE, "no CUDA GPU here (torch.cuda.is_available() is False); run `python benchmarks/run_all.py "
                                       "--only gpu_study` on a machine with an NVIDIA GPU and a CUDA build of torch", command)
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU (a check that the code runs: the figures mean nothing)"
    measured = matmul_rate(dev, 8192 if dev.type == "cuda" else 256)
    peak = (peak_bf16(gpu) if dev.type == "cuda" else None) or measured
    encoders = encoders or (STUDY_ENCODERS[:2] if quick else STUDY_ENCODERS)
    figures, notes = {}, [f"{gpu}: dense bf16 peak {peak / 1e12:.0f} TFLOP/s" + (" (data sheet)" if peak != measured else " (measured)") +
                          f"; a {8192 if dev.type == 'cuda' else 256}-square bf16 matrix product reached {measured / 1e12:.0f} TFLOP/s here"]
    for name in encoders:
        t0 = time.perf_counter()
        try: r = measure_encoder(name, dev, batch, repeats, limit, peak)
        except Exception as e:  # one encoder's failure (or time limit) is noted; the others are measured
            notes.append(f"{name}: not measured: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
            print(f"  {notes[-1]}", flush=True); continue
        what = f"{name}, {r['size']} px, batch {r['batch']}, bf16 autocast, random init"
        figures[name] = benchlib.value_figure(f"{what}: extraction forward, images per second", r["images_per_s"], "img/s")
        figures[f"{name}-bound"] = benchlib.value_figure(f"{what}: share of its FLOP bound ({r['gflops']:.0f} GFLOP per image, "
                                                         f"bound {r['bound']:,.0f} img/s)", r["fraction"], "of bound")
        print(f"  {name}: {min(r['images_per_s']):.0f}-{max(r['images_per_s']):.0f} img/s, bound {r['bound']:.0f} img/s "
              f"({max(r['fraction']):.0%}); {time.perf_counter() - t0:.0f} s", flush=True)
    try:
        ft = finetune_step(dev, repeats, 3 if quick else 10, 4 * limit, finetune)
        figures["finetune"] = benchlib.value_figure(f"fine-tuning step, {finetune[0]} {finetune[1]}, {ft['size']} px, batch {ft['batch']}, "
                                                    "bf16 autocast, AdamW: images per second", ft["images_per_s"], "img/s")
        notes.append(f"fine-tuning {finetune[0]} ({finetune[1]}, batch {ft['batch']}): peak GPU memory {max(ft['peak_gib']):.1f} GiB")
    except Exception as e:
        notes.append(f"fine-tuning step not measured: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
    if not figures: raise RuntimeError("no encoder could be measured: " + "; ".join(notes[1:]))
    return benchlib.result(TITLE + f" ({gpu})", command, {"encoders": encoders, "batch": batch, "limit_s": limit, "gpu": gpu,
                                                          "peak_bf16_tflops": float(f"{peak / 1e12:.6g}")}, figures, notes)


if __name__ == "__main__":
    if "--device" not in sys.argv and not torch.cuda.is_available():
        sys.exit("gpu_study: no CUDA GPU here (torch.cuda.is_available() is False): this benchmark measures the study's encoders on a "
                 "GPU; run it on a machine with an NVIDIA GPU and a CUDA build of torch (`--device cpu` only checks the code)")
    def options(ap):
        ap.add_argument("--encoders", nargs="+", default=None, help="registry names (default: the study's eight)")
        ap.add_argument("--batch", type=int, default=32, help="images per forward (halved on running out of memory)")
        ap.add_argument("--limit", type=float, default=45.0, help="seconds allowed per encoder, building included")
        ap.add_argument("--device", default="cuda", help="cuda (default); cpu only checks that the code runs")
    benchlib.cli(run, __doc__, extra=options)
