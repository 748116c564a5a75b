"""Timings of the statistics, measured side by side in one run.

1. 2,000 patient-clustered, label-stratified bootstrap replicates of AUROC for 8 encoders on the
   same ~10,000 images: the vectorised weights implementation (`bootstrap_replicates`) vs a naive
   loop that resamples patients and calls `sklearn.metrics.roc_auc_score` per replicate and encoder.
2. DeLong's test at n = 10,000: the O(n log n) midrank algorithm (`delong_test`) vs the direct
   O(n^2) structural-components sum (`delong_test_direct`).

Usage: python benchmarks/bench_stats.py [--images 10000] [--encoders 8] [--boot 2000] [--naive-boot N]
`--naive-boot` times the naive loop on fewer replicates and scales it linearly (default: all).
"""
import argparse
import time

import numpy as np
from sklearn.metrics import roc_auc_score

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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--encoders", type=int, default=8)
    ap.add_argument("--boot", type=int, default=2000)
    ap.add_argument("--naive-boot", type=int, default=None)
    a = ap.parse_args()
    y, scores, pid = make_data(a.images, a.encoders)
    print(f"data: {y.size} images, {np.unique(pid).size} patients, {a.encoders} encoders, {a.boot} replicates")

    t = time.perf_counter()
    fast = bootstrap_replicates("auroc", scores, y, clusters=pid, n_boot=a.boot)
    t_fast = time.perf_counter() - t
    nb = a.naive_boot or a.boot
    t = time.perf_counter()
    slow = naive_bootstrap(y, scores, pid, nb)
    t_slow = (time.perf_counter() - t) * a.boot / nb
    scaled = "" if nb == a.boot else f" (timed on {nb}, scaled)"
    print("\n1. clustered bootstrap of AUROC")
    print(f"   vectorised weights : {t_fast:8.2f} s")
    print(f"   naive loop         : {t_slow:8.2f} s{scaled}")
    print(f"   ratio naive/vectorised: {t_slow / t_fast:6.1f}x")
    print(f"   bootstrap SD of AUROC, encoder 0: vectorised {fast[:, 0].std():.5f}, naive {slow[:, 0].std():.5f}")

    n = a.images
    t = time.perf_counter(); r_fast = delong_test(y[:n], scores[:n, 0], scores[:n, 1]); t_f = time.perf_counter() - t
    t = time.perf_counter(); r_dir = delong_test_direct(y[:n], scores[:n, 0], scores[:n, 1]); t_d = time.perf_counter() - t
    print(f"\n2. DeLong test at n = {n}")
    print(f"   fast midrank O(n log n): {t_f * 1e3:8.1f} ms")
    print(f"   direct O(n^2)          : {t_d * 1e3:8.1f} ms")
    print(f"   ratio direct/fast: {t_d / t_f:6.1f}x")
    print(f"   max |difference| of AUROCs, SE, z, p: "
          f"{max(abs(getattr(r_fast, f) - getattr(r_dir, f)) for f in ('auc_a', 'auc_b', 'se', 'z', 'p')):.2e}")


if __name__ == "__main__":
    main()
