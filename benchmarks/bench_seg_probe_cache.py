"""Cost of a segmentation linear probe trained on cached features versus one that re-runs the frozen
encoder every epoch (as the study's released code does), measured side by side in one run.

    python benchmarks/bench_seg_probe_cache.py [--encoder vit-small-patch16-224] [--images 96] [--epochs 5]

Both arms train the same 1x1-convolution probe with the same optimiser, batches and loss for the same
number of epochs; the cached arm pays for one feature extraction up front (included in its time).
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CXR_STUDY_PROGRESS", "0")

from cxr_study.data.cohorts import make_cohort
from cxr_study.data.synthetic import SyntheticCfg, index_synthetic, make_synthetic_benchmark
from cxr_study.encoders.registry import create_encoder
from cxr_study.features.cache import EncoderImages, extract_features, load_masks
from cxr_study.heads.probes import SegProbe


def train_epochs(get_grid, masks, n, channels, epochs, batch, stats):
    torch.manual_seed(0)
    probe = SegProbe(channels, *stats)
    opt = torch.optim.AdamW(probe.parameters(), lr=1e-3, weight_decay=1e-2)
    m = torch.as_tensor(masks).long()
    for _ in range(epochs):
        for s in range(0, n, batch):
            idx = np.arange(s, min(s + batch, n))
            loss = F.cross_entropy(probe(get_grid(idx), size=m.shape[-2:]), m[idx], weight=torch.tensor([1.0, 5.0]))
            opt.zero_grad(); loss.backward(); opt.step()
    return loss.item()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", default="vit-small-patch16-224")
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16)
    a = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        root = make_synthetic_benchmark(d / "syn", SyntheticCfg(n_images=int(a.images / 0.45) + 20, size=256, seed=11))
        idx, _ = index_synthetic(root)
        cohort = make_cohort(idx, "pneumothorax-seg").iloc[: a.images].reset_index(drop=True)
        n = len(cohort)
        torch.manual_seed(0)
        enc = create_encoder(a.encoder)
        masks = load_masks(cohort, "pneumothorax", enc.cfg.preprocess)

        # arm 1: extract once into the cache, then train on the cached grids
        t0 = time.perf_counter()
        feats = extract_features(a.encoder, cohort, root, d / "cache", batch_size=a.batch)
        grids = torch.as_tensor(np.asarray(feats.grid[feats.rows(cohort.image_id.tolist())], np.float32))
        t_extract = time.perf_counter() - t0
        stats = (grids.mean((0, 2, 3)), grids.std((0, 2, 3)) + 1e-6)
        t1 = time.perf_counter()
        train_epochs(lambda i: grids[i], masks, n, grids.shape[1], a.epochs, a.batch, stats)
        t_cached = time.perf_counter() - t0
        t_cached_train = time.perf_counter() - t1

        # arm 2: the frozen encoder runs on every batch of every epoch (images read and preprocessed each time)
        images = EncoderImages(cohort, root, enc.cfg.preprocess)
        def live(i):
            with torch.no_grad():
                return enc(torch.stack([images[j] for j in i])).grid
        t0 = time.perf_counter()
        train_epochs(live, masks, n, grids.shape[1], a.epochs, a.batch, stats)
        t_live = time.perf_counter() - t0

    print(f"{a.encoder}, {n} pneumothorax images, {a.epochs} epochs, batch {a.batch}, {torch.get_num_threads()} threads")
    print(f"  cached features : {t_cached:8.2f} s  (extraction once {t_extract:.2f} s + training {t_cached_train:.2f} s)")
    print(f"  encoder per epoch: {t_live:8.2f} s")
    print(f"  ratio (re-run / cached): {t_live / t_cached:.1f}x for {a.epochs} epochs; "
          f"per additional epoch {t_live / a.epochs / max(t_cached_train / a.epochs, 1e-9):.0f}x")


if __name__ == "__main__":
    main()
