"""A segmentation linear probe trained on cached features (this library) against the same probe trained while the
frozen encoder runs again every epoch (what the study's code does), measured side by side in one run.

    python benchmarks/bench_seg_probe_cache.py [--encoder vit-small-patch16-224] [--images 32] [--epochs 20]
                                               [--repeats 3] [--quick] [--json PATH]

Data: synthetic radiographs with pneumothorax masks, prepared as a real run prepares a dataset
(`build_image_cache`: 8-bit PNGs at 1024 px, masks as RLE in the index), split 3:1 into training and
validation images. Each repeat times both arms, in alternating order; each builds its encoder under the
study's seed, and that is timed in both.

- cached (this library): `extract_features` into a fresh cache folder (everything included: building the
  encoder, hashing the files, reading in DataLoader workers, the forward pass, writing the cache), the masks
  read once (`load_masks`), then `fit_seg_probe` for exactly `--epochs` epochs (patience above that), with
  the validation loss every epoch, as in a study run.
- re-encoding (the study's per-epoch work: its `FMSegmentator` with `get_seg_dataloaders`): every epoch,
  every training batch (shuffled) and every validation batch is read from the files again, image and mask,
  through the same readers, DataLoader workers and preprocessing as the extraction; the frozen encoder runs
  on it (no gradients); the study's head (a 1x1 convolution, bilinear upsampling to the input size) and loss
  (cross entropy against (1 - mask, mask), class weights [1, 5]) take one AdamW step per training batch; the
  validation loss is computed every epoch. Reading is the same code in both arms, and faster than the study's
  MONAI/ITK transforms, so this arm is a lower bound on what the study's code costs per epoch.

Both arms use batch 16, AdamW (learning rate 1e-4, weight decay 1e-2) and the same torch threads.
Figures: total time of the re-encoding arm over total time of the cached arm at `--epochs` epochs, and
one re-encoding epoch over one cached epoch (what each further epoch costs); and the total ratio's share of its
bound E L / (L + (E - 1) p) (E epochs, L one re-encoding epoch, p one cached epoch: the ratio when extracting the
features costs one re-encoding epoch and nothing else is paid), which is 1 when the cached arm has no overhead.
A note gives the same share with the encoder's build counted in both arms, which each pays once: (B + E L) /
(B + L + (E - 1) p), B measured in the re-encoding arm.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import cxr_study  # noqa: F401  (first: its thread settings apply before torch starts, as in the command line)
import numpy as np
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CXR_STUDY_PROGRESS", "0")

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchlib, beside this file
import benchlib  # noqa: E402
from cxr_study.core import STUDY_SEED  # noqa: E402
from cxr_study.data.cohorts import make_cohort  # noqa: E402
from cxr_study.data.index import index_mask  # noqa: E402
from cxr_study.data.prepare import build_image_cache  # noqa: E402
from cxr_study.data.synthetic import SyntheticCfg, index_synthetic, make_synthetic_benchmark  # noqa: E402
from cxr_study.data.preprocess import load_masks, preprocess_mask  # noqa: E402
from cxr_study.encoders.registry import create_encoder, get_encoder_cfg  # noqa: E402
from cxr_study.features.cache import EncoderImages, default_workers, extract_features  # noqa: E402
from cxr_study.heads.probes import SegProbeCfg, fit_seg_probe  # noqa: E402

TITLE = "Segmentation linear probe: cached features against re-encoding every epoch"
CLASS_WEIGHTS = (1.0, 5.0)  # pneumothorax, as in the study


def prepare_images(d: Path, n: int, image_size: int = 1024) -> tuple:
    "`n` synthetic radiographs with pneumothorax masks, in an 8-bit PNG image cache as `prepare` builds it."
    raw = make_synthetic_benchmark(d/"synthetic", SyntheticCfg(n_images=int(n / 0.45) + 20, size=256, seed=11))
    idx, _ = index_synthetic(raw)
    cohort = make_cohort(idx, "pneumothorax-seg").iloc[:n].reset_index(drop=True)
    if len(cohort) < n: raise SystemExit(f"only {len(cohort)} images with pneumothorax masks; ask for fewer")
    cohort = cohort.assign(image_path=[str(raw/p) for p in cohort.image_path])
    cached, problems = build_image_cache(cohort, d/"prepared", image_size=image_size, workers=max(1, benchlib.cores() - 1))
    if problems: raise SystemExit(f"image cache: {problems[:3]}")
    return cached.sort_values("image_id").reset_index(drop=True), d/"prepared"


class StudyItems(torch.utils.data.Dataset):
    "Image and mask of each row, read from the files and preprocessed on every access, as the study's data loaders do."
    def __init__(self, rows, root, pcfg):
        self.images, self.rows, self.pcfg = EncoderImages(rows, root, pcfg), rows.reset_index(drop=True), pcfg
    def __len__(self): return len(self.rows)
    def __getitem__(self, i):
        m = preprocess_mask(index_mask(self.rows.iloc[i], "pneumothorax"), self.pcfg)
        return self.images[i], torch.from_numpy(m)


class StudyHead(torch.nn.Module):
    "The study's LinearProbe: a 1x1 convolution to 2 classes, bilinear upsampling (align_corners=True) to the input size."
    def __init__(self, channels: int, size: int):
        super().__init__(); self.conv, self.size = torch.nn.Conv2d(channels, 2, kernel_size=1), size
    def forward(self, g):
        return F.interpolate(self.conv(g), size=(self.size, self.size), mode="bilinear", align_corners=True)


def _low_priority(worker_id: int):
    "Readers at the lowest priority, as the extraction's readers beside a CPU forward."
    try: os.nice(19)
    except OSError: pass


def cached_arm(name, cohort, root, cache_dir, n_train, epochs, batch) -> dict:
    "Extract once, read the masks once, fit the probe on the cached grids; seconds of each part."
    t0 = time.perf_counter()
    feats = extract_features(name, cohort, root, cache_dir, batch_size=batch)
    grids = np.asarray(feats.grid[feats.rows(cohort.image_id.tolist())])
    t1 = time.perf_counter()
    masks = load_masks(cohort, "pneumothorax", get_encoder_cfg(name).preprocess)
    t2 = time.perf_counter()
    cfg = SegProbeCfg(batch_size=batch, max_epochs=epochs, patience=epochs + 1)
    _, hist = fit_seg_probe(grids[:n_train], masks[:n_train], grids[n_train:], masks[n_train:], CLASS_WEIGHTS, cfg, device="cpu")
    t3 = time.perf_counter()
    assert len(hist["train_loss"]) == epochs, "early stopping ended the cached arm before its epochs"
    return {"total": t3 - t0, "extraction": t1 - t0, "masks": t2 - t1, "fit": t3 - t2, "epoch": (t3 - t2) / epochs}


def reencoding_arm(name, cohort, root, n_train, epochs, batch, workers) -> dict:
    "The study's loop: per epoch, every image and mask read again and the frozen encoder run on it; seconds."
    t0 = time.perf_counter()
    torch.manual_seed(STUDY_SEED)
    enc = create_encoder(name).eval()
    build = time.perf_counter() - t0
    pcfg = enc.cfg.preprocess
    kw = dict(batch_size=batch, num_workers=workers, persistent_workers=workers > 0,
              worker_init_fn=_low_priority if workers else None)
    train = torch.utils.data.DataLoader(StudyItems(cohort.iloc[:n_train], root, pcfg), shuffle=True,
                                        generator=torch.Generator().manual_seed(STUDY_SEED), **kw)
    val = torch.utils.data.DataLoader(StudyItems(cohort.iloc[n_train:], root, pcfg), shuffle=False, **kw)
    head = StudyHead(enc.cfg.grid_dim, pcfg.size)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-4, weight_decay=1e-2)
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor(CLASS_WEIGHTS))
    target = lambda m: torch.stack([1 - m.float(), m.float()], 1)  # the study's (1 - mask, mask)
    epoch_s = []
    for _ in range(epochs):
        te = time.perf_counter()
        head.train()
        for x, m in train:
            with torch.no_grad(): g = enc(x).grid
            loss = loss_fn(head(g), target(m))
            opt.zero_grad(); loss.backward(); opt.step()
        head.eval()
        with torch.no_grad():
            val_loss = sum(loss_fn(head(enc(x).grid), target(m)).item() * len(x) for x, m in val)
        assert np.isfinite(val_loss)
        epoch_s.append(time.perf_counter() - te)
    del train, val  # stops the workers
    return {"total": time.perf_counter() - t0, "epoch": float(np.median(epoch_s)), "build": build}


def run(repeats: int = benchlib.MIN_REPEATS, quick: bool = False, encoder: str = "vit-small-patch16-224",
        images: int | None = None, epochs: int | None = None, batch: int = 16) -> dict:
    "Both arms `repeats` times, alternating which runs first; the ratios with their spread."
    images = images or (16 if quick else 32)
    epochs = epochs or (3 if quick else 20)
    torch.set_num_threads(benchlib.cores())
    workers = default_workers("cpu")
    n_train = images - images // 4
    cached, live = [], []
    with tempfile.TemporaryDirectory() as d:
        cohort, root = prepare_images(Path(d), images)
        few = cohort.iloc[:8]  # untimed: the first call of each path pays for lazy imports, not for its work
        cached_arm(encoder, few, root, Path(d)/"warm-up", 6, 1, batch); reencoding_arm(encoder, few, root, 6, 1, batch, workers)
        for r in range(repeats):
            arms = [("cached", lambda: cached_arm(encoder, cohort, root, Path(d)/f"cache{r}", n_train, epochs, batch)),
                    ("live", lambda: reencoding_arm(encoder, cohort, root, n_train, epochs, batch, workers))]
            for kind, arm in (arms if r % 2 == 0 else arms[::-1]):
                (cached if kind == "cached" else live).append(arm())
            print(f"  repeat {r + 1}: re-encoding {live[-1]['total']:.1f} s, cached {cached[-1]['total']:.1f} s "
                  f"(extraction {cached[-1]['extraction']:.1f} s, fit {cached[-1]['fit']:.2f} s); "
                  f"ratio {live[-1]['total'] / cached[-1]['total']:.1f}x", flush=True)
    disp = get_encoder_cfg(encoder).display or encoder
    what = f"{disp}, {images} images ({n_train} training, {images - n_train} validation), batch {batch}"
    figures = {
        "total": benchlib.ratio_figure(
            f"{epochs} epochs, {what}: re-encoding every epoch / cached features",
            (f"re-encoding every epoch, {epochs} epochs (s)", [x["total"] for x in live]),
            (f"extraction once + {epochs} epochs on the cached grids (s)", [x["total"] for x in cached])),
        "per_epoch": benchlib.ratio_figure(
            f"one more epoch, {what}: re-encoding / cached",
            ("one epoch re-encoding (s)", [x["epoch"] for x in live]),
            ("one epoch on the cached grids (s)", [x["epoch"] for x in cached])),
    }
    # the bound of the total ratio when extraction costs one re-encoding epoch: E L / (L + (E - 1) p), per repeat
    bound = [epochs * lv["epoch"] / (lv["epoch"] + (epochs - 1) * c["epoch"]) for lv, c in zip(live, cached)]
    share = [lv["total"] / c["total"] / b for lv, c, b in zip(live, cached, bound)]
    figures["bound"] = benchlib.value_figure(f"{epochs} epochs, {what}: the total ratio's share of its bound E L / (L + (E - 1) p) "
                                             f"(L one re-encoding epoch, p one cached epoch; median bound {np.median(bound):.1f}x)", share, "of bound")
    # both arms build the encoder once (B); the bound above leaves that out: counted in both, it is (B + E L) / (B + L + (E - 1) p)
    bound_b = [(lv["build"] + epochs * lv["epoch"]) / (lv["build"] + lv["epoch"] + (epochs - 1) * c["epoch"]) for lv, c in zip(live, cached)]
    share_b = [lv["total"] / c["total"] / b for lv, c, b in zip(live, cached, bound_b)]
    notes = [f"building the encoder (random weights under the study's seed) takes {np.median([x['build'] for x in live]):.2f} s, "
             f"paid once by each arm and outside the bound; counted in both, the bound is (B + E L) / (B + L + (E - 1) p) = "
             f"{np.median(bound_b):.1f}x and the total ratio is {np.median(share_b):.2f} of it ({min(share_b):.2f}-{max(share_b):.2f})"]
    print("  " + notes[0], flush=True)
    parts = {k: benchlib.summary([x[k] for x in cached]) for k in ("extraction", "masks", "fit")}
    return {**benchlib.result(TITLE, f"python benchmarks/bench_seg_probe_cache.py --images {images} --epochs {epochs}"
                              f" --repeats {repeats}",
                              {"encoder": encoder, "images": images, "train": n_train, "epochs": epochs, "batch": batch,
                               "image_size": 1024, "workers": workers, "torch_threads": torch.get_num_threads()}, figures, notes),
            "cached_parts_s": parts}


if __name__ == "__main__":
    def options(ap):
        ap.add_argument("--encoder", default="vit-small-patch16-224")
        ap.add_argument("--images", type=int, default=None, help="images in all (default 32; --quick 16), a quarter for validation")
        ap.add_argument("--epochs", type=int, default=None, help="epochs (default 20; --quick 3)")
        ap.add_argument("--batch", type=int, default=16)
    benchlib.cli(run, __doc__, extra=options)
