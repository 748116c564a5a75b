"""The segmentation probe's fit (`fit_seg_probe`) against the implementation it replaced, on the same grids, side by
side in one run, with one epoch's FLOP bound at this machine's measured matrix-product rate beside it.

    python benchmarks/bench_seg_probe.py [--train 288] [--val 96] [--channels 256] [--grid 14] [--epochs 20]
                                         [--repeats 3] [--quick] [--json PATH]

Grids and masks have the demo's shapes (ResNet-18's 14 x 14 x 256 grid of a 224 px image, heart masks at 224 px,
288 training and 96 validation images of one fold); the grids are synthetic, with one channel carrying the mask
(so the probe has something to learn). Two settings, each for a fixed number of epochs (early stopping set beyond
them, so both arms do the same number of steps):

- the demo's: loss at 56 px against area-averaged soft targets, batch 32, learning rate 0.05, class weights [1, 1];
- the study's: loss at the mask size (224 px, hard labels), batch 16, learning rate 1e-4, class weights [1, 5].

The replaced implementation ("autograd") is written out below as it was: the 1x1 convolution as a matrix product
on channels-last grids, `F.interpolate` of the two logits to the loss size, `F.cross_entropy`, autograd, AdamW.
The library's computes the same loss and gradient at the grid (`heads.probes.upsampled_ce`). Both are called
once, untimed, on a few images before the repeats (the first call of each pays for lazy initialisation). Each
repeat fits both, alternating which goes first; the figure is autograd / library seconds. Every repeat checks that they are
the same probe: the same validation losses (relative 1e-4) and test-set Dice within 0.005.

The FLOP bound of one epoch counts the arithmetic the library's epoch needs (the projections of the grids onto
the logit difference and back, the separable upsampling and its adjoint, a few operations per loss pixel, and
the validation pass) and divides it by the rate of a large float32 matrix product measured here. Most of that
arithmetic is matrix-vector products and element-wise passes, which memory bandwidth limits well below the
matrix-product rate: the bound is what the arithmetic alone would allow, not a target. The memory bound beside it
divides the float32 grid bytes an epoch must read (each training grid twice: its projection, then its share of the
gradient; each validation grid once) by the rate one thread reads memory in a matrix-vector product measured here.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("CXR_STUDY_PROGRESS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchlib, beside this file
import benchlib  # noqa: E402
import cxr_study  # noqa: E402,F401  (first: its thread settings precede torch's start)
from cxr_study.heads.probes import EarlyStopping, SegProbe, SegProbeCfg, _targets, fit_seg_probe, predict_seg  # noqa: E402
from cxr_study.metrics import dice_iou  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

TITLE = "Segmentation probe fit: the loss computed at the grid against autograd through the upsampled logits"
SETTINGS = {  # name: (SegProbeCfg fields, class weights)
    "demo": ({"lr": 0.05, "batch_size": 32, "loss_size": 56}, (1.0, 1.0)),
    "study": ({"lr": 1e-4, "batch_size": 16, "loss_size": None}, (1.0, 5.0)),
}


def make_grids(n: int, channels: int, grid: int, size: int = 224, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    "fp16 grids (as the feature cache holds them) and elliptical masks; one channel is the mask's area fraction plus noise."
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    cy, cx, ry, rx = (rng.uniform(a, b, (n, 1, 1)) for a, b in ((0.45, 0.6), (0.4, 0.6), (0.15, 0.25), (0.2, 0.3)))
    M = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    G = rng.standard_normal((n, channels, grid, grid)).astype(np.float32)
    G[:, 0] += 2 * F.adaptive_avg_pool2d(torch.from_numpy(M[:, None].astype(np.float32)), grid)[:, 0].numpy()
    return G.astype(np.float16), M


def autograd_fit(Gt, Mt, Gv, Mv, class_weights, cfg: SegProbeCfg):
    "The replaced fit, as it was: autograd through F.interpolate of the logits and F.cross_entropy."
    torch.manual_seed(cfg.seed); rng = np.random.default_rng(cfg.seed)
    G32, Gv32 = torch.as_tensor(np.asarray(Gt, np.float32)), torch.as_tensor(np.asarray(Gv, np.float32))
    probe = SegProbe(G32.shape[1], G32.mean((0, 2, 3)), G32.std((0, 2, 3)) + 1e-6)
    opt = torch.optim.AdamW(probe.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    weight, T, Tv = torch.tensor(class_weights, dtype=torch.float32), _targets(Mt, cfg.loss_size), _targets(Mv, cfg.loss_size)
    with torch.no_grad(): Z, Zv = (probe.standardise(g).permute(0, 2, 3, 1).contiguous() for g in (G32, Gv32))
    loss_of = lambda z, t: F.cross_entropy(probe.head_channels_last(z, size=t.shape[-2:]), t, weight=weight)
    hist, stopper = {"train_loss": [], "val_loss": []}, EarlyStopping(cfg.patience, cfg.min_delta)
    for epoch in range(cfg.max_epochs):
        probe.train(); tot = 0.0
        perm = torch.as_tensor(rng.permutation(len(Z)))
        Zp, Tp = Z.index_select(0, perm), T.index_select(0, perm)
        for i in range(0, len(Zp), cfg.batch_size):
            loss = loss_of(Zp[i:i + cfg.batch_size], Tp[i:i + cfg.batch_size])
            opt.zero_grad(); loss.backward(); opt.step(); tot += loss.item() * len(Zp[i:i + cfg.batch_size])
        probe.eval()
        with torch.no_grad(): val = sum(loss_of(Zv[i:i + 64], Tv[i:i + 64]).item() * len(Zv[i:i + 64]) for i in range(0, len(Zv), 64)) / len(Zv)
        hist["train_loss"].append(tot / len(Z)); hist["val_loss"].append(val)
        if stopper.step(val, probe, epoch): break
    return stopper.restore(probe).eval(), hist


def gemm_rate(n: int = 2048, tries: int = 5) -> float:
    "FLOP/s of a float32 n x n matrix product here, the best of `tries`."
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(tries))
    return 2 * n ** 3 / best


def mv_bandwidth(mb: int = 128, tries: int = 5) -> float:
    "Bytes/s one thread reads in a float32 matrix-vector product over `mb` MB (the probe's own kind of pass), the best of `tries`."
    a, v = torch.randn(mb * 2 ** 20 // 4 // 256, 256), torch.randn(256)
    n = torch.get_num_threads(); torch.set_num_threads(1)
    try:
        torch.mv(a, v)
        return a.numel() * 4 / min(_timed(lambda: torch.mv(a, v)) for _ in range(tries))
    finally: torch.set_num_threads(n)


def epoch_bytes(n_train: int, n_val: int, channels: int, grid: int) -> float:
    "Float32 grid bytes one epoch reads: each training grid twice (projection, then gradient), each validation grid once."
    return 4 * grid * grid * channels * (2 * n_train + n_val)


def _timed(f) -> float:
    t = time.perf_counter(); f(); return time.perf_counter() - t


def epoch_flops(n_train: int, n_val: int, channels: int, grid: int, loss: int) -> float:
    "Arithmetic of one epoch of the library's fit: projections, separable upsampling and adjoint, loss pixels, validation."
    hw, up = grid * grid, 2 * (loss * grid * grid + loss * loss * grid)  # (L x h)(h x w), then (L x w)(w x L)
    train = 2 * hw * channels + up + 8 * loss * loss + up + 2 * hw * channels  # forward, loss and its gradient, back
    val = 2 * hw * channels + up + 4 * loss * loss
    return n_train * train + n_val * val


def one_setting(name: str, data: tuple, epochs: int, repeats: int) -> dict:
    "Both fits `repeats` times on the same grids; seconds, the check that they agree, the epoch's FLOP bound."
    (Gt, Mt), (Gv, Mv), (Gs, Ms) = data
    fields, weights = SETTINGS[name]
    cfg = SegProbeCfg(**fields, max_epochs=epochs, patience=epochs + 1)
    slow, fast, gaps = [], [], []
    for r in range(repeats):
        arms = [("autograd", autograd_fit), ("library", lambda *a: fit_seg_probe(*a, device="cpu"))]
        out = {}
        for arm, fit in (arms if r % 2 == 0 else arms[::-1]):
            t = time.perf_counter(); out[arm] = fit(Gt, Mt, Gv, Mv, weights, cfg); out[arm + "_s"] = time.perf_counter() - t
        (p0, h0), (p1, h1) = out["autograd"], out["library"]
        rel = max(abs(a - b) / abs(a) for a, b in zip(h0["val_loss"], h1["val_loss"]))
        dice = [dice_iou(predict_seg(p, Gs, Ms.shape[-1], device="cpu")[0], Ms)[0].mean() for p in (p0, p1)]
        assert len(h0["val_loss"]) == len(h1["val_loss"]) == epochs and rel < 1e-4, f"{name}: validation losses differ by {rel:.2e}"
        assert abs(dice[0] - dice[1]) <= 0.005, f"{name}: test Dice {dice[0]:.4f} (autograd) against {dice[1]:.4f} (library)"
        slow.append(out["autograd_s"]); fast.append(out["library_s"]); gaps.append((rel, dice[0], dice[1]))
        print(f"  {name}, repeat {r + 1}: autograd {slow[-1]:.2f} s, library {fast[-1]:.2f} s ({slow[-1] / fast[-1]:.1f}x); "
              f"validation losses within {rel:.1e}; test Dice {dice[0]:.4f} / {dice[1]:.4f}", flush=True)
    return {"slow": slow, "fast": fast, "gaps": gaps, "cfg": cfg, "weights": weights}


def run(repeats: int = benchlib.MIN_REPEATS, quick: bool = False, train: int | None = None, val: int | None = None,
        channels: int = 256, grid: int = 14, epochs: int | None = None, study_epochs: int | None = None) -> dict:
    "Both settings, both fits per repeat; the speed-up with its spread, the agreement, and the FLOP bound of an epoch."
    train, val = train or (96 if quick else 288), val or (32 if quick else 96)
    epochs, study_epochs = epochs or (3 if quick else 20), study_epochs or (2 if quick else 4)
    G, M = make_grids(train + 2 * val, channels, grid)
    data = ((G[:train], M[:train]), (G[train:train + val], M[train:train + val]), (G[train + val:], M[train + val:]))
    rate, bw = gemm_rate(), mv_bandwidth()
    figures, notes = {}, []
    k = min(16, len(G) // 2)
    for name in SETTINGS:  # untimed: the first call of each arm pays for lazy initialisation (over a second in autograd's), not for its work
        fields, weights = SETTINGS[name]
        for fit in (autograd_fit, lambda *a: fit_seg_probe(*a, device="cpu")):
            fit(G[:k], M[:k], G[k:2 * k], M[k:2 * k], weights, SegProbeCfg(**fields, max_epochs=1))
    for name, ep in (("demo", epochs), ("study", study_epochs)):
        res = one_setting(name, data, ep, repeats)
        c = res["cfg"]; loss = c.loss_size or M.shape[-1]
        what = (f"{train} + {val} images of a {grid} x {grid} x {channels} grid, masks {M.shape[-1]} px, loss at {loss} px, "
                f"batch {c.batch_size}, {ep} epochs")
        figures[name] = benchlib.ratio_figure(f"segmentation probe fit ({name} settings), {what}: autograd through the upsampled "
                                              "logits / the loss at the grid", ("autograd (s)", res["slow"]), ("fit_seg_probe (s)", res["fast"]))
        bound = epoch_flops(train, val, channels, grid, loss) / rate
        epoch_s = float(np.median(res["fast"])) / ep
        notes.append(f"{name} settings: one epoch of fit_seg_probe {epoch_s * 1e3:.1f} ms (fit set-up included); its FLOP bound "
                     f"{bound * 1e3:.2f} ms ({epoch_flops(train, val, channels, grid, loss) / 1e6:.0f} MFLOP at the measured "
                     f"{rate / 1e9:.0f} GFLOP/s of a 2048 x 2048 float32 matrix product): {bound / epoch_s:.0%} of the bound")
        print("  " + notes[-1], flush=True)
        mem = epoch_bytes(train, val, channels, grid) / bw
        notes.append(f"{name} settings: its memory bound {mem * 1e3:.1f} ms ({epoch_bytes(train, val, channels, grid) / 1e6:.0f} MB of "
                     f"float32 grids read, the training grids twice, at the measured {bw / 1e9:.1f} GB/s of a one-thread matrix-vector "
                     f"product over 128 MB): {mem / epoch_s:.0%} of the bound")
        print("  " + notes[-1], flush=True)
        notes.append(f"{name} settings: the same probe in every repeat: validation losses within "
                     f"{max(g[0] for g in res['gaps']):.1e} (relative), test Dice {res['gaps'][0][1]:.4f} (autograd) and "
                     f"{res['gaps'][0][2]:.4f} (library) on {val} held-out images")
        print("  " + notes[-1], flush=True)
    return benchlib.result(TITLE, f"python benchmarks/bench_seg_probe.py --epochs {epochs} --repeats {repeats}",
                           {"train": train, "val": val, "channels": channels, "grid": grid, "epochs": epochs, "study_epochs": study_epochs,
                            "mask_size": int(M.shape[-1]), "gemm_gflops": round(rate / 1e9, 1), "mv_gb_per_s": round(bw / 1e9, 1), "torch_threads": torch.get_num_threads()},
                           figures, notes)


if __name__ == "__main__":
    def options(ap):
        ap.add_argument("--train", type=int, default=None, help="training images (default 288; --quick 96)")
        ap.add_argument("--val", type=int, default=None, help="validation images, and as many test images (default 96; --quick 32)")
        ap.add_argument("--channels", type=int, default=256)
        ap.add_argument("--grid", type=int, default=14)
        ap.add_argument("--epochs", type=int, default=None, help="epochs of the demo's setting (default 20; --quick 3)")
        ap.add_argument("--study-epochs", type=int, default=None, help="epochs of the study's setting (default 4; --quick 2)")
    benchlib.cli(run, __doc__, extra=options)
