"""A whole label-efficiency sweep of one encoder on cached features against one feature extraction of the same
images, measured side by side in one run.

    python benchmarks/bench_label_efficiency.py [--repeats 3] [--quick] [--json PATH] [--encoder vit-small-patch16-224]
                                                [--images 100] [--fractions 0.05 0.25 1] [--seeds 0 1] [--folds 0 1 2 3 4]
                                                [--tasks ...] [--probe JSON] [--mask-size 56] [--device cpu|cuda]

Data: synthetic radiographs prepared as a real run prepares a dataset (decoded once into the 8-bit PNG image
cache, `build_image_cache`, 1024 px), indexed; the study's cohorts and folds of its four tasks. Each repeat times
both arms, in alternating order, on the same images, threads and device:

- extraction: `extract_features` of the study's image set (every task's cohort) into an empty cache folder,
  everything included (building the encoder, hashing the files, reading, preprocessing, the forward, writing);
- sweep: `run_experiment` of every task's label-efficiency run into an empty study folder, from the cached features of the
  study's own extraction: the linear probe (and the kNN probe for classification) trained on every share x
  subset seed x test fold and scored on the test fold, everything included (cohorts, masks, the fits, scoring,
  writing the runs). The feature cache is checked to hold one entry: the sweep extracts nothing.

The figure is the sweep's time over the extraction's. The defaults keep a run near two minutes on two quiet
CPU cores: 80 images, shares 10 and 100%, two subset seeds, one test fold, and a CPU segmentation probe (the
demo's settings, at most 20 epochs, masks scored at 56 px); on a CPU the segmentation probes take most of the
sweep. A sweep's cost grows with its fits (test folds x (shares below 100% x seeds + 1)): the study's sweep
(five folds, seven shares, three seeds) has 95 per probe and task against these defaults' 3, so about thirty
times the sweep. The ratio also moves with the encoder: ViT-S/16 costs about 0.06 s per image on a CPU, the
study's encoders up to 6.5 s (see the environment notes), which divides the ratio by up to a hundred.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CXR_STUDY_PROGRESS", "0")

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchlib, beside this file
import benchlib  # noqa: E402
from cxr_study.cli import DEMO_PROBE  # noqa: E402
from cxr_study.core import STUDY_SEED  # noqa: E402

TITLE = "Label-efficiency sweep on cached features against one feature extraction"
TASKS = ("pneumothorax-cls", "cardiomegaly-cls", "pneumothorax-seg", "heart-seg")
CPU_PROBE = {**DEMO_PROBE, "max_epochs": 20}


def prepare(d: Path, n: int, image_size: int = 1024):
    "`n` synthetic radiographs in an 8-bit PNG image cache with its index, as `prepare` builds them; the study's images."
    from cxr_study.data.index import write_index
    from cxr_study.data.prepare import build_image_cache, index_dataset
    from cxr_study.data.synthetic import SyntheticCfg, make_synthetic_benchmark
    from cxr_study.study.protocols import study_cohorts, study_images
    raw = make_synthetic_benchmark(d/"synthetic", SyntheticCfg(n_images=n, size=256, seed=STUDY_SEED))
    idx, _ = index_dataset("synthetic", raw)
    cached, problems = build_image_cache(idx, d/"prepared", image_size=image_size, workers=max(1, benchlib.cores() - 1))
    if problems: raise SystemExit(f"image cache: {problems[:3]}")
    write_index(cached, d/"prepared"/"index.parquet")
    sizes = {t: len(c) for t, c in study_cohorts(cached, STUDY_SEED).items()}
    return d/"prepared", study_images(cached, STUDY_SEED), sizes


def time_extraction(encoder, images, root, cache, device) -> float:
    from cxr_study.features.cache import extract_features
    t0 = time.perf_counter()
    f = extract_features(encoder, images, root, cache, device=device)
    dt = time.perf_counter() - t0
    assert f.pooled.shape[0] == len(images)
    return dt


def time_sweep(encoder, tasks, root, study, sweep, folds, probe, mask_size, device) -> tuple[float, dict]:
    "Seconds of the whole sweep, and per task; `study/cache` already holds the features."
    from cxr_study.study.label_efficiency import efficiency_spec
    from cxr_study.study.runner import run_experiment
    per_task, t0 = {}, time.perf_counter()
    for t in tasks:
        t1 = time.perf_counter()
        r = run_experiment(efficiency_spec(encoder, t, root, study, folds=folds, probe=probe, mask_size=mask_size, device=device,
                                                 adapt=sweep), overwrite=True)
        per_task[t] = (time.perf_counter() - t1, len(r["results"]))
    dt = time.perf_counter() - t0
    assert len(list((study/"cache").glob(f"{encoder}-*"))) == 1, "the sweep extracted nothing more"
    return dt, per_task


def run(repeats: int = 3, quick: bool = False, encoder: str = "vit-small-patch16-224", images: int = 80,
        fractions=(0.1, 1.0), seeds=(0, 1), folds=(0,), tasks=TASKS, probe: dict | None = None,
        mask_size: int | None = 56, device: str | None = None) -> dict:
    import torch
    from cxr_study.core import get_device
    if quick: images, fractions, seeds, folds, tasks = 48, (0.25, 1.0), (0,), (0,), ("cardiomegaly-cls", "heart-seg")
    probe = CPU_PROBE if probe is None else probe
    dev = str(get_device(device))
    torch.set_num_threads(benchlib.cores())
    sweep = {"fractions": list(fractions), "seeds": list(seeds)}
    ext, swp, per_task = [], [], {t: [] for t in tasks}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        root, study_imgs, sizes = prepare(d, images)
        print(f"{images} synthetic radiographs, {len(study_imgs)} in the task cohorts ({', '.join(f'{t} {n}' for t, n in sizes.items())})")
        study = d/"study"
        time_extraction(encoder, study_imgs, root, study/"cache", dev)  # the study's own extraction, which the sweeps read
        for r in range(repeats):  # both arms in every repeat, alternating which goes first
            arms = ["extraction", "sweep"] if r % 2 == 0 else ["sweep", "extraction"]
            for arm in arms:
                if arm == "extraction":
                    with tempfile.TemporaryDirectory(dir=d) as cache: ext.append(time_extraction(encoder, study_imgs, root, Path(cache), dev))
                else:
                    s, pt = time_sweep(encoder, tasks, root, study, sweep, list(folds), probe, mask_size, dev); swp.append(s)
                    for t, (sec, _) in pt.items(): per_task[t].append(sec)
            print(f"  repeat {r + 1}: extraction {ext[-1]:.1f} s, sweep {swp[-1]:.1f} s, ratio {swp[-1] / ext[-1]:.2f} "
                  f"({', '.join(f'{t} {v[-1]:.1f} s' for t, v in per_task.items())})")
    fits = {t: len(folds) * ((len(fractions) - (1.0 in fractions)) * len(seeds) + (1.0 in fractions)) for t in tasks}
    label = (f"{encoder}, {len(study_imgs)} images; sweep of {len(tasks)} tasks x {len(fractions)} shares x {len(seeds)} seeds x "
             f"{len(folds)} folds on cached features / one extraction")
    return benchlib.result(
        TITLE,
        "python benchmarks/bench_label_efficiency.py --repeats 3" + (" --quick" if quick else ""),
        {"encoder": encoder, "images": images, "cohort_images": len(study_imgs), "cohorts": sizes, "tasks": list(tasks),
         "fractions": list(fractions), "seeds": list(seeds), "folds": list(folds), "probe": probe, "mask_size": mask_size,
         "device": dev, "fits_per_probe": fits},
        {"sweep_vs_extraction": benchlib.ratio_figure(label, ("label-efficiency sweep (s)", swp), ("one extraction (s)", ext))},
        [f"sweep seconds per task (median over repeats): " + ", ".join(f"{t} {sorted(v)[len(v) // 2]:.1f}" for t, v in per_task.items()),
         "the linear probe and, for classification, the kNN probe at every point; one fit per distinct training subset "
         "(100% is the whole training fold whatever the seed)",
         "a sweep reads the features its study extracted once; without the cache every fit would need the encoder again",
         "the study's sweep (5 folds, 7 shares, 3 seeds) has 95 fits per probe and task; these settings have "
         f"{next(iter(fits.values()))}: its cost grows about in proportion"])


def _extra(ap):
    ap.add_argument("--encoder", default="vit-small-patch16-224")
    ap.add_argument("--images", type=int, default=80, help="synthetic radiographs (default 80)")
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.1, 1.0], help="shares (the study's: 0.01 0.02 0.05 0.1 0.25 0.5 1)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="subset seeds (the study's: 0 1 2)")
    ap.add_argument("--folds", nargs="+", type=int, default=[0], help="test folds (the study's: 0 1 2 3 4)")
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    ap.add_argument("--probe", type=json.loads, default=None, help="segmentation probe settings (default: the demo's, at most 20 epochs; '{}': the study's)")
    ap.add_argument("--mask-size", type=int, default=56, help="segmentation evaluation size (default 56)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: the best available)")


if __name__ == "__main__":
    benchlib.cli(run, __doc__, extra=_extra)
