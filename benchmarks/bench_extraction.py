"""How close feature extraction comes to the bare encoder forward, measured side by side in one run.

    python benchmarks/bench_extraction.py [--encoders vit-small-patch16-224 resnet18] [--images 320]
                                          [--repeats 3] [--batch 16] [--threads N] [--workers N] [--json PATH]

Synthetic radiographs are prepared as a real run prepares a dataset: decoded once into the 8-bit PNG
image cache (`build_image_cache`, 1024 px by default), whose index the extraction reads. For each
encoder and repeat, two arms run back to back with the same batch size and torch threads:

- bare: the encoder's forward on tensors made beforehand from the same images (images/s);
- pipeline: `extract_features` into a fresh cache folder, everything included (building the encoder,
  hashing the files, reading, preprocessing, the forward, writing and joining the chunks).

The ratio pipeline/bare is printed per encoder (median and range over the repeats) with the conditions:
CPU model, cores, torch threads, DataLoader workers, load average before and after, and the CPU that
other programs used during each pair of arms (from /proc/stat less this process and its workers); a
pair disturbed by more than `--max-other` cores is measured again, up to `--retries` times. On a CUDA device
the forward runs under bf16 autocast in both arms (the extraction default there), and the run also
reports fp32 against bf16: bare throughput of each and the cosine similarity of their features.
Without CUDA that part is skipped with a message. On a GPU the forward is fast: give it enough
images and a batch that fills it (e.g. `--images 2048 --batch 128`) so that the fixed costs of a call
(building the encoder, hashing the files, starting the workers) do not dominate.
"""
import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CXR_STUDY_PROGRESS", "0")

from cxr_study.core import STUDY_SEED, get_device
from cxr_study.data.prepare import build_image_cache, index_dataset
from cxr_study.data.synthetic import SyntheticCfg, make_synthetic_benchmark
from cxr_study.encoders.registry import create_encoder
from cxr_study.features.cache import EncoderImages, compare_amp, default_workers, extract_features


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"): return line.split(":", 1)[1].strip()
    except OSError: pass
    return platform.processor() or platform.machine()


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class CpuUse:
    "Cores' worth of CPU used while the block runs: by the whole machine (/proc/stat) and by this process with its children."
    def __enter__(self):
        self.t, self.sys, self.own = time.perf_counter(), self._busy(), self._own()
        return self
    def __exit__(self, *exc):
        dt = time.perf_counter() - self.t
        self.own_cores = (self._own() - self.own) / dt
        self.other_cores = max(0.0, (self._busy() - self.sys) / dt - self.own_cores) if self.sys is not None else float("nan")
    @staticmethod
    def _own():
        t = os.times(); return t.user + t.system + t.children_user + t.children_system
    @staticmethod
    def _busy():
        try: v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except OSError: return None
        return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


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
    "bf16 autocast against fp32: bare throughput of each, and the cosine of their cached features (pooled, grid, a middle layer)."
    fp32 = statistics.median(bare_throughput(enc, batches, dev, False) for _ in range(repeats))
    bf16 = statistics.median(bare_throughput(enc, batches, dev, True) for _ in range(repeats))
    layers = list(enc.cfg.layers)
    cos = compare_amp(name, cohort, root, layers=[layers[len(layers) // 2]] if layers else None, device=str(dev), batch_size=batch)
    return {"bare_fp32_img_s": round(fp32, 2), "bare_bf16_img_s": round(bf16, 2), "cos_min": round(float(cos.cos_min.min()), 6),
            "cos_median": round(float(cos.cos_median.min()), 6), "cos_min_by_feature": {k: round(float(v), 6) for k, v in cos.cos_min.items()}}


def pipeline_throughput(name, cohort, root, cache_dir, batch, dev, workers, amp) -> float:
    "Images per second of `extract_features` into an empty cache folder, from the call to its return."
    t0 = time.perf_counter()
    f = extract_features(name, cohort, root, cache_dir, batch_size=batch, device=str(dev), num_workers=workers, amp=amp)
    dt = time.perf_counter() - t0
    assert f.pooled.shape[0] == len(cohort)
    return len(cohort) / dt


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoders", nargs="+", default=["vit-small-patch16-224", "resnet18"])
    ap.add_argument("--images", type=int, default=320, help="images per arm (default 320: one full chunk and a partial one)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=1024, help="side of the cached PNGs (default 1024, as `prepare`)")
    ap.add_argument("--synthetic-size", type=int, default=256, help="side of the rendered synthetic radiographs")
    ap.add_argument("--threads", type=int, default=None, help="torch threads in this process (default: all cores)")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: default_workers(device))")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: the best available)")
    ap.add_argument("--data", type=Path, default=None, help="keep the prepared images here (default: a temporary folder)")
    ap.add_argument("--max-other", type=float, default=0.25,
                    help="a pair of arms during which other programs used more CPU than this (in cores) is measured again (default 0.25)")
    ap.add_argument("--retries", type=int, default=6, help="at most this many pairs measured again per encoder")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    a = ap.parse_args()
    dev = get_device(a.device)
    amp = dev.type == "cuda"
    torch.set_num_threads(a.threads or cores())
    workers = default_workers(dev) if a.workers is None else a.workers

    with tempfile.TemporaryDirectory() as tmp:
        data = a.data or Path(tmp)
        t0 = time.perf_counter()
        raw = make_synthetic_benchmark(data/"synthetic", SyntheticCfg(n_images=a.images, size=a.synthetic_size, seed=STUDY_SEED))
        idx, _ = index_dataset("synthetic", raw)
        cohort, _ = build_image_cache(idx, data/"prepared", image_size=a.image_size, workers=max(1, cores() - 1))
        root = data/"prepared"
        png_kb = np.mean([(root/p).stat().st_size for p in cohort.image_path]) / 1024
        print(f"{len(cohort)} synthetic radiographs, cached as {a.image_size} px 8-bit PNGs (mean {png_kb:.0f} KB) "
              f"in {time.perf_counter() - t0:.0f} s")

        load_before = os.getloadavg()
        results, gpu = {}, {}
        for name in a.encoders:
            torch.manual_seed(STUDY_SEED)
            enc = create_encoder(name).to(dev)
            images = EncoderImages(cohort.sort_values("image_id"), root, enc.cfg.preprocess)
            x = torch.stack([images[i] for i in range(len(images))])
            batches = list(x.split(a.batch))
            bare, pipe, other, discarded = [], [], [], 0
            while len(bare) < a.repeats:  # the two arms alternate, so drift in the machine's load reaches both
                with CpuUse() as cb: b = bare_throughput(enc, batches, dev, amp)
                with tempfile.TemporaryDirectory() as cache, CpuUse() as cp:
                    p = pipeline_throughput(name, cohort, root, Path(cache), a.batch, dev, workers, amp)
                busy = max(cb.other_cores, cp.other_cores)
                if busy > a.max_other and discarded < a.retries:  # another program took CPU: measure this pair again
                    discarded += 1
                    print(f"  {name}: other programs used {busy:.2f} cores, pair measured again")
                    continue
                bare.append(b); pipe.append(p); other.append(busy)
                print(f"  {name} repeat {len(bare)}: bare {b:.1f} img/s, pipeline {p:.1f} img/s, ratio {p / b:.3f} "
                      f"(other programs: {busy:.2f} cores; this one: {cp.own_cores:.2f} in the pipeline, {cb.own_cores:.2f} bare)")
            ratios = [p / b for p, b in zip(pipe, bare)]
            results[name] = {"ratio_median": round(statistics.median(ratios), 4), "ratio_min": round(min(ratios), 4),
                             "ratio_max": round(max(ratios), 4), "pipeline_img_s": round(statistics.median(pipe), 2),
                             "bare_img_s": round(statistics.median(bare), 2), "other_cores_max": round(max(other), 2),
                             "pairs_discarded": discarded}
            if dev.type == "cuda": gpu[name] = amp_report(name, enc, batches, cohort, root, dev, a.batch, a.repeats)
            del enc, x, batches
        load_after = os.getloadavg()

    conditions = {"cpu": cpu_model(), "cores": cores(), "torch_threads": torch.get_num_threads(), "workers": workers,
                  "device": str(dev) if dev.type != "cuda" else torch.cuda.get_device_name(dev), "amp": amp,
                  "batch": a.batch, "images": len(cohort), "image_size": a.image_size, "repeats": a.repeats,
                  "torch": torch.__version__, "load_before": [round(v, 2) for v in load_before],
                  "load_after": [round(v, 2) for v in load_after]}
    print(f"\nconditions: {conditions['cpu']}, {conditions['cores']} cores, {conditions['torch_threads']} torch threads, "
          f"{workers} DataLoader worker(s), device {conditions['device']}{' (bf16 autocast)' if amp else ' (fp32)'}, batch {a.batch}, "
          f"{len(cohort)} images at {a.image_size} px; load average before {load_before[0]:.2f} / after {load_after[0]:.2f} (1 min)")
    print(f"{'encoder':24s} {'bare img/s':>10s} {'pipeline img/s':>14s} {'ratio median':>12s} {'range':>13s} {'other cores':>11s}")
    for name, r in results.items():
        print(f"{name:24s} {r['bare_img_s']:10.1f} {r['pipeline_img_s']:14.1f} {r['ratio_median']:12.3f} "
              f"{r['ratio_min']:6.3f}-{r['ratio_max']:.3f} {r['other_cores_max']:11.2f}")
    if dev.type == "cuda":
        print("\nbf16 autocast against fp32 (bare forward; cosine of the cached features, worst image and feature):")
        for name, g in gpu.items():
            print(f"  {name:24s} fp32 {g['bare_fp32_img_s']:8.1f} img/s, bf16 {g['bare_bf16_img_s']:8.1f} img/s, "
                  f"cosine min {g['cos_min']:.5f} ({', '.join(f'{k} {v:.5f}' for k, v in g['cos_min_by_feature'].items())})"
                  f"{'' if g['cos_min'] >= 0.999 else '  BELOW the 0.999 goal'}")
    else:
        print("\nno CUDA device: the bf16-against-fp32 comparison (throughput and cosine) is skipped; run this on a GPU for it")

    if a.json:
        out = {"extraction": results, "conditions": conditions}
        if gpu: out["amp"] = gpu
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=1) + "\n")
        print(f"figures written to {a.json}")


if __name__ == "__main__":
    main()
