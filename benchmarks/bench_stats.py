"""Timings of the statistics, measured side by side in one run.

1. Patient-clustered, label-stratified bootstrap replicates of AUROC (200 by default) for 8 encoders on
   the same ~10,000 images: the vectorised weights implementation (`bootstrap_replicates`) vs a naive
   loop that resamples patients and calls `sklearn.metrics.roc_auc_score` per replicate and encoder.
2. DeLong's test at n = 10,000: the O(n log n) midrank algorithm (`delong_test`) vs the direct
   O(n^2) structural-components sum (`delong_test_direct`).

Both arms of each comparison run on the same data with the same number of replicates, once per repeat.

Usage: python benchmarks/bench_stats.py [--images 10000] [--encoders 8] [--boot 200] [--repeats 3] [--quick] [--json PATH]
"""
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchlib, beside this file
import benchlib  # noqa: E402

from cxr_study.stats.bootstrap import bootstrap_replicates
from cxr_study.stats.paired import delong_test, delong_test_direct


def make_data(n_images, n_encoders, seed=0):
    rng = np.random.default_rng(seed)
    n_pat = int(n_images / 1.3)
    pid = np.repeat(np.arange(n_pat), 1 + rng.poisson(0.3, n_pat))[:n_images]
    y = (rng.random(pid.size) < 0.5).astype(int)
    u = rng.normal(0, 0.5, n_pat)[pid]
    scores = np.column_stack([rng.uniform(0.5, 2.0) * y + u + rng.normal(0, 1, pid.size) for _ in range(n_encoders)])
    return y, scores, pid


def naive_bootstrap(y, scores, pid, n_boot, seed=1):
    rng = np.random.default_rng(seed)
    patients, inv = np.unique(pid, return_inverse=True)
    has_pos = np.zeros(patients.size, bool); has_pos[inv[y == 1]] = True
    images_of = [[] for _ in patients]
    for i, g in enumerate(inv): images_of[g].append(i)
    strata = [np.flatnonzero(has_pos), np.flatnonzero(~has_pos)]
    out = np.empty((n_boot, scores.shape[1]))
    for b in range(n_boot):
        drawn = np.concatenate([rng.choice(s, s.size, replace=True) for s in strata])
        idx = np.concatenate([images_of[g] for g in drawn])
        for j in range(scores.shape[1]): out[b, j] = roc_auc_score(y[idx], scores[idx, j])
    return out


def run(repeats: int = 3, quick: bool = False, images: int | None = None, encoders: int = 8, boot: int | None = None) -> dict:
    "Both comparisons `repeats` times, each pair of implementations back to back on the same data."
    images = images or (2_000 if quick else 10_000)
    boot = boot or (50 if quick else 200)
    y, scores, pid = make_data(images, encoders)
    t_fast, t_slow, d_fast, d_direct, sd = [], [], [], [], []
    for r in range(repeats):
        t = time.perf_counter(); fast = bootstrap_replicates("auroc", scores, y, clusters=pid, n_boot=boot); t_fast.append(time.perf_counter() - t)
        t = time.perf_counter(); slow = naive_bootstrap(y, scores, pid, boot); t_slow.append(time.perf_counter() - t)
        t = time.perf_counter(); r_fast = delong_test(y, scores[:, 0], scores[:, 1]); d_fast.append(time.perf_counter() - t)
        t = time.perf_counter(); r_dir = delong_test_direct(y, scores[:, 0], scores[:, 1]); d_direct.append(time.perf_counter() - t)
        gap = max(abs(getattr(r_fast, f) - getattr(r_dir, f)) for f in ("auc_a", "auc_b", "se", "z", "p"))
        assert gap < 1e-9, f"DeLong: the two algorithms differ by {gap}"
        sd.append((fast[:, 0].std(), slow[:, 0].std()))
        print(f"  repeat {r + 1}: bootstrap naive {t_slow[-1]:.2f} s / vectorised {t_fast[-1]:.2f} s; "
              f"DeLong direct {d_direct[-1] * 1e3:.0f} ms / fast {d_fast[-1] * 1e3:.1f} ms", flush=True)
    n_pat = np.unique(pid).size
    figures = {
        "bootstrap": benchlib.ratio_figure(
            f"{boot} patient-clustered bootstrap replicates of AUROC, {encoders} encoders, {images:,} images: "
            "naive loop (sklearn per replicate) / vectorised weights",
            ("naive loop (s)", t_slow), ("bootstrap_replicates (s)", t_fast)),
        "delong": benchlib.ratio_figure(
            f"DeLong test, {images:,} images: direct O(n^2) / midrank O(n log n)",
            ("delong_test_direct (s)", d_direct), ("delong_test (s)", d_fast)),
    }
    return benchlib.result("Statistics: clustered bootstrap and DeLong's test",
                           f"python benchmarks/bench_stats.py --images {images} --boot {boot} --repeats {repeats}",
                           {"images": images, "patients": int(n_pat), "encoders": encoders, "boot": boot}, figures,
                           [f"bootstrap SD of AUROC, encoder 0: vectorised {np.median([a for a, _ in sd]):.5f}, "
                            f"naive {np.median([b for _, b in sd]):.5f} (same distribution, different random draws)"])


if __name__ == "__main__":
    def options(ap):
        ap.add_argument("--images", type=int, default=None, help="images (default 10,000; --quick 2,000)")
        ap.add_argument("--encoders", type=int, default=8)
        ap.add_argument("--boot", type=int, default=None, help="bootstrap replicates, the same in both arms (default 200; --quick 50)")
    benchlib.cli(run, __doc__, extra=options)
