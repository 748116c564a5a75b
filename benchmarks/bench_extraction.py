"""How close feature extraction comes to the bare encoder forward, measured side by side in one run.

    python benchmarks/bench_extraction.py [--encoders vit-small-patch16-224 resnet18] [--images 96]
                                          [--repeats 3] [--quick] [--batch 16] [--threads N] [--workers N] [--json PATH]

Synthetic radiographs are prepared as a real run prepares a dataset: decoded once into the 8-bit PNG
image cache (`build_image_cache`, 1024 px by default), whose index the extraction reads. For each
encoder and repeat, two arms run back to back with the same batch size and torch threads:

- bare: the encoder's forward on tensors made beforehand from the same images (images/s);
- pipeline: `extract_features` into a fresh cache folder, everything included (building the encoder,
  hashing the files, reading, preprocessing, the forward, writing and joining the chunks).

The figure is the throughput ratio pipeline/bare per encoder (median and range over the repeats), with the
CPU that other programs used during each pair of arms (from /proc/stat less this process and its workers); a
pair disturbed by more than `--max-other` cores is measured again, up to `--retries` times. On a CUDA device
the forward runs under bf16 autocast in both arms (the extraction default there), and the run also
measures bf16 against fp32: the bare throughput ratio and the cosine similarity of their features.
Without CUDA that part is skipped with a message. On a GPU the forward is fast: give it enough
images and a batch that fills it (e.g. `--images 2048 --batch 128`) so that the fixed costs of a call
(building the encoder, hashing the files, starting the workers) do not dominate.
"""
import os
import sys
import tempfile
import time
from pathlib import Path

INVOCATIONS = 3  # run_all measures it in 3 separate processes: the ratio moves between processes more than within one

import cxr_study  # noqa: F401  (first: its thread settings apply before torch starts, as in the command line)
import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CXR_STUDY_PROGRESS", "0")

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchlib, beside this file
import benchlib  # noqa: E402
from benchlib import CpuUse, cores, cpu_model  # noqa: E402,F401  (imported from here by other benchmarks)
from cxr_study.core import STUDY_SEED, get_device  # noqa: E402
from cxr_study.data.prepare import build_image_cache, index_dataset  # noqa: E402
from cxr_study.data.synthetic import SyntheticCfg, make_synthetic_benchmark  # noqa: E402
from cxr_study.encoders.registry import create_encoder  # noqa: E402
from cxr_study.features.cache import EncoderImages, compare_amp, default_workers, extract_features  # noqa: E402


def sync(dev):
    if dev.type == "cuda": torch.cuda.synchronize(dev)


def bare_throughput(enc, batches, dev, amp) -> float:
    "Images per second of the encoder's forward alone on tensors already in memory (on the device for a GPU)."
    batches = [b.to(dev) for b in batches] if dev.type == "cuda" else batches
    with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
        enc(batches[0]); sync(dev)  # warm-up: allocator, kernels
        t0 = time.perf_counter()
        for b in batches: enc(b)
        sync(dev)
    return sum(len(b) for b in batches) / (time.perf_counter() - t0)


def amp_report(name, enc, batches, cohort, root, dev, batch, repeats) -> dict:
    "bf16 autocast against fp32: bare throughput of each per repeat, and the cosine of their cached features (pooled, grid, a middle layer)."
    fp32, bf16 = [], []
    for _ in range(repeats):
        fp32.append(bare_throughput(enc, batches, dev, False)); bf16.append(bare_throughput(enc, batches, dev, True))
    layers = list(enc.cfg.layers)
    cos = compare_amp(name, cohort, root, layers=[layers[len(layers) // 2]] if layers else None, device=str(dev), batch_size=batch)
    return {"fp32": fp32, "bf16": bf16, "cos_min": round(float(cos.cos_min.min()), 6),
            "cos_min_by_feature": {k: round(float(v), 6) for k, v in cos.cos_min.items()}}


def pipeline_throughput(name, cohort, root, cache_dir, batch, dev, workers, amp) -> float:
    "Images per second of `extract_features` into an empty cache folder, from the call to its return."
    t0 = time.perf_counter()
    f = extract_features(name, cohort, root, cache_dir, batch_size=batch, device=str(dev), num_workers=workers, amp=amp)
    dt = time.perf_counter() - t0
    assert f.pooled.shape[0] == len(cohort)
    return len(cohort) / dt


def run(repeats: int = benchlib.MIN_REPEATS, quick: bool = False, encoders: list | None = None, images: int | None = None,
        batch: int = 16, image_size: int = 1024, synthetic_size: int = 256, threads: int | None = None,
        workers: int | None = None, device: str | None = None, data: Path | None = None, max_other: float = 0.25,
        retries: int = 0) -> dict:
    "Pipeline and bare forward `repeats` times per encoder, alternating; their throughput ratio with its spread."
    encoders = encoders or ["vit-small-patch16-224", "resnet18"]
    images = images or (24 if quick else 96)
    dev = get_device(device)
    amp = dev.type == "cuda"
    torch.set_num_threads(threads or benchlib.cores())
    workers = default_workers(dev) if workers is None else workers
    figures, notes, settings = {}, [], {}
    with tempfile.TemporaryDirectory() as tmp:
        data = data or Path(tmp)
        t0 = time.perf_counter()
        raw = make_synthetic_benchmark(data/"synthetic", SyntheticCfg(n_images=images, size=synthetic_size, seed=STUDY_SEED))
        idx, _ = index_dataset("synthetic", raw)
        cohort, _ = build_image_cache(idx, data/"prepared", image_size=image_size, workers=max(1, benchlib.cores() - 1))
        root = data/"prepared"
        png_kb = np.mean([(root/p).stat().st_size for p in cohort.image_path]) / 1024
        print(f"{len(cohort)} synthetic radiographs, cached as {image_size} px 8-bit PNGs (mean {png_kb:.0f} KB) "
              f"in {time.perf_counter() - t0:.0f} s", flush=True)
        for name in encoders:
            torch.manual_seed(STUDY_SEED)
            enc = create_encoder(name).to(dev)
            disp = enc.cfg.display or name
            ims = EncoderImages(cohort.sort_values("image_id"), root, enc.cfg.preprocess)
            x = torch.stack([ims[i] for i in range(len(ims))])
            batches = list(x.split(batch))
            bare, pipe, other, discarded = [], [], [], 0
            while len(bare) < repeats:  # the two arms alternate, so drift in the machine's load reaches both
                with benchlib.CpuUse() as cb: b = bare_throughput(enc, batches, dev, amp)
                with tempfile.TemporaryDirectory() as cache, benchlib.CpuUse() as cp:
                    p = pipeline_throughput(name, cohort, root, Path(cache), batch, dev, workers, amp)
                busy = max(cb.other_cores, cp.other_cores)
                if busy > max_other and discarded < retries:  # another program took CPU: measure this pair again
                    discarded += 1
                    print(f"  {name}: other programs used {busy:.2f} cores, pair measured again", flush=True)
                    continue
                bare.append(b); pipe.append(p); other.append(busy)
                print(f"  {name} repeat {len(bare)}: bare {b:.1f} img/s, pipeline {p:.1f} img/s, ratio {p / b:.3f} "
                      f"(other programs: {busy:.2f} cores; this one: {cp.own_cores:.2f} in the pipeline, {cb.own_cores:.2f} bare)", flush=True)
            figures[name] = benchlib.ratio_figure(
                f"{disp}, {len(cohort)} images from {image_size} px PNGs, batch {batch}, {workers} DataLoader workers, "
                f"{'bf16' if amp else 'fp32'} on {'GPU' if amp else 'CPU'}: throughput of the whole extraction / the bare forward",
                ("extract_features (images/s)", pipe), ("bare forward (images/s)", bare))
            settings[name] = {"other_cores_max": round(max(other), 2), "pairs_measured_again": discarded}
            if dev.type == "cuda":
                g = amp_report(name, enc, batches, cohort, root, dev, batch, repeats)
                figures[f"{name}-amp"] = benchlib.ratio_figure(
                    f"{disp}, bare forward on {torch.cuda.get_device_name(dev)}: bf16 autocast / fp32 throughput",
                    ("bf16 (images/s)", g["bf16"]), ("fp32 (images/s)", g["fp32"]))
                notes.append(f"{disp}: cosine of bf16 against fp32 cached features, worst image: {g['cos_min']:.5f} "
                             f"({', '.join(f'{k} {v:.5f}' for k, v in g['cos_min_by_feature'].items())}); the goal is 0.999")
            del enc, x, batches
    if dev.type != "cuda":
        notes.append("no CUDA device: bf16 against fp32 (throughput and cosine of the features) is measured only on a GPU")
    return benchlib.result(
        "Feature extraction: the whole pipeline against the bare encoder forward",
        f"python benchmarks/bench_extraction.py --images {images} --repeats {repeats}",
        {"encoders": encoders, "images": images, "image_size": image_size, "batch": batch, "workers": workers,
         "device": str(dev), "amp": amp, "torch_threads": torch.get_num_threads(), "per_encoder": settings}, figures, notes)


if __name__ == "__main__":
    def options(ap):
        ap.add_argument("--encoders", nargs="+", default=None, help="default: vit-small-patch16-224 resnet18")
        ap.add_argument("--images", type=int, default=None, help="images per arm (default 96; --quick 24)")
        ap.add_argument("--batch", type=int, default=16)
        ap.add_argument("--image-size", type=int, default=1024, help="side of the cached PNGs (default 1024, as `prepare`)")
        ap.add_argument("--synthetic-size", type=int, default=256, help="side of the rendered synthetic radiographs")
        ap.add_argument("--threads", type=int, default=None, help="torch threads in this process (default: all cores)")
        ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: default_workers(device))")
        ap.add_argument("--device", default=None, help="cpu or cuda (default: the best available)")
        ap.add_argument("--data", type=Path, default=None, help="keep the prepared images here (default: a temporary folder)")
        ap.add_argument("--max-other", type=float, default=0.25,
                        help="a pair of arms during which other programs used more CPU than this (in cores) is measured again (default 0.25)")
        ap.add_argument("--retries", type=int, default=0,
                        help="at most this many disturbed pairs measured again per encoder (default 0: on a busy machine every pair is)")
    benchlib.cli(run, __doc__, extra=options)
