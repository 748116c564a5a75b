"""Timings of the statistics, measured side by side in one run, and the check that the fast bootstrap draws from the
same distribution as the direct one.

1. Patient-clustered, label-stratified bootstrap replicates (200 by default) of AUROC, AUPRC and Dice for 8 encoders
   on the same ~10,000 images: `bootstrap_replicates` (replicates computed from each patient's count in the
   resample) vs a naive loop that resamples patients and calls scikit-learn (`roc_auc_score`,
   `average_precision_score`) or takes the mean Dice, per replicate and encoder.
2. DeLong's test at n = 10,000: the O(n log n) midrank algorithm (`delong_test`) vs the direct O(n^2)
   structural-components sum (`delong_test_direct`).
3. The same distribution: on 2,000 images (one encoder), 2,000 replicates of each metric both ways. Their
   standard deviations and their 2.5, 50 and 97.5 % quantiles are compared with their Monte Carlo errors (the
   standard error of a standard deviation, sd / sqrt(2 (B - 1)); of a quantile, sd sqrt(p (1 - p) / B) / phi(z_p)
   for a near-normal distribution), and by a two-sample Kolmogorov-Smirnov test. The run fails if a difference
   exceeds 4 of its standard errors.

Both arms of each comparison run on the same data with the same number of replicates in each repeat, alternating
which goes first. The naive loop runs once per repeat (seconds: its replicates after the first few run warm); the
library runs 5 times back to back and its figure is their median (tens of milliseconds: a single call right after the
naive loop's seconds finds the caches cold and costs up to twice as much).

Usage: python benchmarks/bench_stats.py [--images 10000] [--encoders 8] [--boot 200] [--check-boot 2000] [--repeats 3] [--quick] [--json PATH]
"""
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats
from sklearn.metrics import average_precision_score, roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchlib, beside this file
import benchlib  # noqa: E402

from cxr_study.stats.bootstrap import bootstrap_replicates  # noqa: E402
from cxr_study.stats.paired import delong_test, delong_test_direct  # noqa: E402

METRICS = {"auroc": roc_auc_score, "auprc": average_precision_score, "dice": None}  # dice: the mean of the per-image values


FAST_CALLS = 5  # the library's calls per repeat, back to back: its figure is their median


def _seconds(f) -> float:
    t0 = time.perf_counter(); f(); return time.perf_counter() - t0


def make_data(n_images, n_encoders, seed=0):
    "Labels, scores of `n_encoders` encoders and patient ids (about 1.3 images per patient, a patient effect in the scores)."
    rng = np.random.default_rng(seed)
    n_pat = int(n_images / 1.3)
    pid = np.repeat(np.arange(n_pat), 1 + rng.poisson(0.3, n_pat))[:n_images]
    y = (rng.random(pid.size) < 0.5).astype(int)
    u = rng.normal(0, 0.5, n_pat)[pid]
    scores = np.column_stack([rng.uniform(0.5, 2.0) * y + u + rng.normal(0, 1, pid.size) for _ in range(n_encoders)])
    return y, scores, pid


def dice_values(scores):
    "Per-image Dice-like values in (0, 1) from scores (what the Dice bootstrap averages)."
    return 1 / (1 + np.exp(-scores))


def naive_bootstrap(y, scores, pid, n_boot, seed=1, metric="auroc"):
    "Resample patients with replacement within strata (patients with a positive image, or none), then the metric per replicate."
    rng = np.random.default_rng(seed)
    patients, inv = np.unique(pid, return_inverse=True)
    has_pos = np.zeros(patients.size, bool); has_pos[inv[y == 1]] = True
    images_of = [[] for _ in patients]
    for i, g in enumerate(inv): images_of[g].append(i)
    strata = [np.flatnonzero(has_pos), np.flatnonzero(~has_pos)] if METRICS[metric] else [np.arange(patients.size)]
    out = np.empty((n_boot, scores.shape[1]))
    for b in range(n_boot):
        drawn = np.concatenate([rng.choice(s, s.size, replace=True) for s in strata])
        idx = np.concatenate([images_of[g] for g in drawn])
        if METRICS[metric] is None: out[b] = scores[idx].mean(0)
        else:
            for j in range(scores.shape[1]): out[b, j] = METRICS[metric](y[idx], scores[idx, j])
    return out


def fast_bootstrap(y, scores, pid, n_boot, metric="auroc", seed=1):
    "The library's replicates of the same metric."
    return bootstrap_replicates(metric, scores, None if metric == "dice" else y, clusters=pid, n_boot=n_boot, seed=seed)


def same_distribution(a: np.ndarray, b: np.ndarray) -> dict:
    "The two samples' SDs and 2.5/50/97.5 % quantiles, their differences in Monte Carlo standard errors, and the KS p-value."
    B, sd = min(a.size, b.size), (a.std(ddof=1) + b.std(ddof=1)) / 2
    out = {"sd": (a.std(ddof=1), b.std(ddof=1)), "z_sd": (a.std(ddof=1) - b.std(ddof=1)) / (sd * np.sqrt(2 / (2 * (B - 1))))}
    for p in (0.025, 0.5, 0.975):
        se = sd * np.sqrt(p * (1 - p) / B) / stats.norm.pdf(stats.norm.ppf(p))
        out[f"z_q{p * 100:g}"] = (np.quantile(a, p) - np.quantile(b, p)) / (np.sqrt(2) * se)
    out["ks_p"] = stats.ks_2samp(a, b).pvalue
    return out


def distribution_checks(n_images: int, n_boot: int) -> list[str]:
    "Notes on each metric's fast against naive replicates; raises AssertionError when a difference exceeds 4 standard errors."
    y, scores, pid = make_data(n_images, 1, seed=5)
    notes = []
    for metric in METRICS:
        s = dice_values(scores) if metric == "dice" else scores
        fast, slow = fast_bootstrap(y, s, pid, n_boot, metric, seed=2)[:, 0], naive_bootstrap(y, s, pid, n_boot, seed=3, metric=metric)[:, 0]
        d = same_distribution(fast, slow)
        zs = {k: v for k, v in d.items() if k.startswith("z_")}
        notes.append(f"same distribution, {metric.upper() if metric != 'dice' else 'Dice'} ({n_images:,} images, {n_boot:,} replicates each "
                     f"way): SD {d['sd'][0]:.5f} (library) and {d['sd'][1]:.5f} (naive loop); SD and 2.5/50/97.5% quantiles differ by "
                     + ", ".join(f"{v:+.1f}" for v in zs.values()) + f" Monte Carlo standard errors; Kolmogorov-Smirnov p = {d['ks_p']:.2f}")
        print("  " + notes[-1], flush=True)
        assert all(abs(v) < 4 for v in zs.values()), notes[-1]
    return notes


def run(repeats: int = 3, quick: bool = False, images: int | None = None, encoders: int = 8, boot: int | None = None,
        check_boot: int | None = None) -> dict:
    "Each pair of implementations back to back on the same data, `repeats` times; then the distribution check."
    images, boot, check_boot = images or (2_000 if quick else 10_000), boot or (50 if quick else 200), check_boot or (300 if quick else 2_000)
    y, scores, pid = make_data(images, encoders)
    dice = dice_values(scores)
    t = {f"{m}_{arm}": [] for m in METRICS for arm in ("fast", "slow")} | {"delong_fast": [], "delong_slow": []}
    for r in range(repeats):
        for m in METRICS:
            s = dice if m == "dice" else scores
            arms = [("fast", lambda: fast_bootstrap(y, s, pid, boot, m)), ("slow", lambda: naive_bootstrap(y, s, pid, boot, metric=m))]
            for arm, f in (arms if r % 2 == 0 else arms[::-1]):
                t[f"{m}_{arm}"].append(float(np.median([_seconds(f) for _ in range(FAST_CALLS if arm == "fast" else 1)])))
        t0 = time.perf_counter(); r_fast = delong_test(y, scores[:, 0], scores[:, 1]); t["delong_fast"].append(time.perf_counter() - t0)
        t0 = time.perf_counter(); r_dir = delong_test_direct(y, scores[:, 0], scores[:, 1]); t["delong_slow"].append(time.perf_counter() - t0)
        gap = max(abs(getattr(r_fast, f) - getattr(r_dir, f)) for f in ("auc_a", "auc_b", "se", "z", "p"))
        assert gap < 1e-9, f"DeLong: the two algorithms differ by {gap}"
        print(f"  repeat {r + 1}: bootstrap naive / library: " + ", ".join(f"{m} {t[f'{m}_slow'][-1]:.2f} / {t[f'{m}_fast'][-1]:.3f} s"
                                                                          for m in METRICS) +
              f"; DeLong direct {t['delong_slow'][-1] * 1e3:.0f} ms / fast {t['delong_fast'][-1] * 1e3:.1f} ms", flush=True)
    what = {"auroc": "AUROC (sklearn roc_auc_score per replicate)", "auprc": "AUPRC (sklearn average_precision_score per replicate)",
            "dice": "mean Dice (numpy mean per replicate)"}
    figures = {("bootstrap" if m == "auroc" else f"bootstrap_{m}"): benchlib.ratio_figure(
        f"{boot} patient-clustered bootstrap replicates of {what[m].split(' (')[0]}, {encoders} encoders, {images:,} images: "
        f"naive loop ({what[m].split('(')[1]} / bootstrap_replicates", ("naive loop (s)", t[f"{m}_slow"]),
        (f"bootstrap_replicates, median of {FAST_CALLS} calls (s)", t[f"{m}_fast"])) for m in METRICS}
    figures["delong"] = benchlib.ratio_figure(f"DeLong test, {images:,} images: direct O(n^2) / midrank O(n log n)",
                                              ("delong_test_direct (s)", t["delong_slow"]), ("delong_test (s)", t["delong_fast"]))
    notes = distribution_checks(2_000 if not quick else 500, check_boot)
    return benchlib.result("Statistics: clustered bootstrap (AUROC, AUPRC, Dice) and DeLong's test",
                           f"python benchmarks/bench_stats.py --images {images} --boot {boot} --repeats {repeats}",
                           {"images": images, "patients": int(np.unique(pid).size), "encoders": encoders, "boot": boot,
                            "check_images": 2_000 if not quick else 500, "check_boot": check_boot}, figures, notes)


if __name__ == "__main__":
    def options(ap):
        ap.add_argument("--images", type=int, default=None, help="images (default 10,000; --quick 2,000)")
        ap.add_argument("--encoders", type=int, default=8)
        ap.add_argument("--boot", type=int, default=None, help="bootstrap replicates, the same in both arms (default 200; --quick 50)")
        ap.add_argument("--check-boot", type=int, default=None, help="replicates of the distribution check, each way (default 2,000; --quick 300)")
    benchlib.cli(run, __doc__, extra=options)
