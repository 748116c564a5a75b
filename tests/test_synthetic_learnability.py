"""The synthetic pneumothorax can be seen, the way a real one can: a small-scale version of the methods
page "Learnability of the synthetic pneumothorax". Expected values come from outside the generator:
the size quartile edges the study published for SIIM-ACR (0.37 %, 0.78 %, 1.66 % of the image),
chance level (AUROC 0.5), and the radiographic signs themselves (a bright visceral pleural line, a
darker pleural space without lung markings)."""
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupShuffleSplit
from torch import nn

from cxr_study.data import synthetic as syn
from cxr_study.data.readers import read_image
from cxr_study.data.synthetic import SyntheticCfg, index_synthetic, make_synthetic_benchmark, synth_image

STUDY_QUARTILE_EDGES = (0.37, 0.78, 1.66)  # % of the image, SIIM-ACR positives (the study's Methods)
CHANCE = 0.5


def render(cfg, folder):
    "Write a benchmark to `folder` and read it back as the study does: images, labels, tube flags, sizes (% of the image), patients."
    root = make_synthetic_benchmark(folder, cfg)
    index, problems = index_synthetic(root)
    assert not problems, problems
    X = np.stack([read_image(root / p) for p in index.image_path]).astype(np.float32)
    return (X, index.pneumothorax.to_numpy(int), index.chest_tube.to_numpy(int), index.ptx_size_pct.to_numpy(float),
            index.patient_id.to_numpy())


def test_size_quartiles_match_siim(tmp_path):
    "The positives' size quartile edges, as the index reads them from the RLE CSV, are within 20 % of the study's SIIM-ACR edges."
    _, y, _, size, _ = render(SyntheticCfg(n_images=1600, size=96, seed=3), tmp_path / "bench")
    edges = np.quantile(size[y == 1], [0.25, 0.5, 0.75])
    assert (y == 1).sum() > 600
    np.testing.assert_allclose(edges, STUDY_QUARTILE_EDGES, rtol=0.2)


def painted_lungs(cfg, i):
    "Image `i`'s lungs as painted before ribs, heart and acquisition: image, pneumothorax regions, lung fields by side, parameters."
    rng = np.random.default_rng(cfg.seed)
    owner, pats = syn._patients(cfg, rng)
    a = syn._image_params(cfg, pats[owner[i]], np.random.default_rng([cfg.seed, i]))
    u, v = syn._grid(cfg.size, a)
    markings = np.clip(syn._smooth_noise(np.random.default_rng(i), u.shape, cfg.size / 170) - 0.6, 0, None) * 0.05
    img = np.zeros(u.shape)
    _, regions = syn._draw_lungs(img, u, v, a, markings)
    return img, regions, {s: syn._lung(u, v, s, a) for s in sorted(a["ptx"])}, a  # regions come in the same order of sides


def test_pleural_space_is_dark_uniform_and_bounded_by_a_bright_line():
    "In every pneumothorax: the pleural space is one uniform value darker than all aerated lung, the visceral line brighter."
    cfg = SyntheticCfg(n_images=60, size=256, seed=5)
    seen = 0
    for i in range(cfg.n_images):
        img, regions, lungs, a = painted_lungs(cfg, i)
        for region, (side, lung) in zip(regions, lungs.items()):
            tissue = lung & ~region
            line = region & ndimage.binary_dilation(tissue, iterations=2)  # 2 px at 256
            rim = region & ~line
            if not rim.any(): continue
            seen += 1
            assert np.ptp(img[rim]) == 0                        # no lung markings beyond the line
            assert img[rim].max() < img[tissue].min()            # darker than any aerated lung
            assert img[line].min() > img[tissue].mean()          # the visceral pleural line is bright
            assert line.sum() >= 0.5 * np.sqrt(region.sum())     # a line, not a dot
    assert seen >= 15


def test_line_and_dark_space_survive_acquisition():
    "On the rendered radiographs (blur, exposure, noise): line > aerated lung beside it > pleural space, on average."
    cfg = SyntheticCfg(n_images=80, size=256, seed=5)
    diffs = []
    for i in range(cfg.n_images):
        e = synth_image(cfg, i)
        if not e["ptx"].any() or 100 * e["ptx"].mean() < STUDY_QUARTILE_EDGES[1]: continue
        img, ptx, a = e["image"], e["ptx"], e["params"]
        u, v = syn._grid(cfg.size, a)
        lung = np.logical_or.reduce([syn._lung(u, v, s, a) for s in a["ptx"]])
        tissue = lung & ~ptx
        line = ptx & ndimage.binary_dilation(tissue, iterations=2)
        rim = ndimage.binary_erosion(ptx) & ~ndimage.binary_dilation(line)
        beside = tissue & ndimage.binary_dilation(ptx, iterations=6)
        if rim.sum() < 20: continue
        diffs.append((img[line].mean() - img[beside].mean(), img[beside].mean() - img[rim].mean()))
    diffs = np.array(diffs)
    assert len(diffs) >= 10
    assert (diffs > 0).mean(0).min() >= 0.9, diffs


def test_tube_changes_nothing_but_its_own_pixels():
    "The same radiograph with and without its tube: the same masks, and pixels differ only within the tube's blur radius."
    cfg = SyntheticCfg(size=128, seed=5)
    owner, pats = syn._patients(cfg, np.random.default_rng(cfg.seed))
    seen = 0
    for i in range(30):
        a = syn._image_params(cfg, pats[owner[i]], np.random.default_rng([cfg.seed, i]))
        if not a["ptx"]: continue
        img_t, heart_t, ptx_t, _ = syn._render(cfg, dict(a, tube=True), np.random.default_rng(99))
        img_n, heart_n, ptx_n, _ = syn._render(cfg, dict(a, tube=False), np.random.default_rng(99))
        np.testing.assert_array_equal(ptx_t, ptx_n); np.testing.assert_array_equal(heart_t, heart_n)
        tube = np.zeros((cfg.size, cfg.size)); syn._draw_tube(tube, a)
        changed = img_t != img_n
        assert changed.any()
        near = ndimage.binary_dilation(tube > 0, np.ones((3, 3)), iterations=4)  # the separable blur: sigma <= 0.65 px at 128, cut at 4 sigma
        assert not (changed & ~near).any()
        seen += 1
    assert seen >= 8


class TinyCNN(nn.Module):
    "Four conv-BN-ReLU-pool blocks, global average and max pooling, one logit."
    def __init__(self, w=8):
        super().__init__()
        ch = [1, w, 2 * w, 4 * w, 4 * w]
        self.f = nn.Sequential(*[nn.Sequential(nn.Conv2d(ch[k], ch[k + 1], 3, padding=1, bias=False), nn.BatchNorm2d(ch[k + 1]),
                                               nn.ReLU(), nn.MaxPool2d(2)) for k in range(4)])
        self.head = nn.Linear(2 * ch[-1], 1)

    def forward(self, x):
        h = self.f(x)
        return self.head(torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1)).squeeze(1)


def fit_predict(Xtr, ytr, Xte, epochs=10, seed=0, bs=32, lr=3e-3):
    "Train the tiny CNN on (Xtr, ytr) and return its probabilities on Xte."
    torch.manual_seed(seed)
    net = TinyCNN()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * -(-len(Xtr) // bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    X, Y = torch.from_numpy(Xtr)[:, None], torch.from_numpy(ytr).float()
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(X), generator=g).split(bs):
            loss = F.binary_cross_entropy_with_logits(net(X[idx]), Y[idx])
            opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    net.eval()
    with torch.no_grad(): return torch.sigmoid(net(torch.from_numpy(Xte)[:, None])).numpy()


def test_small_cnn_sees_large_pneumothoraces_without_a_tube(tmp_path):
    "A tiny CNN trained on the pixels: tube-free AUROC of the larger half is clearly above chance and above the smaller half."
    cfg = SyntheticCfg(n_images=900, size=64, shortcut=0.0, seed=21)  # shortcut 0: the tube tells nothing; only the pixels of the pneumothorax can
    X, y, tube, size, patient = render(cfg, tmp_path / "bench")
    tr, te = next(GroupShuffleSplit(n_splits=1, test_size=1 / 3, random_state=0).split(X, y, groups=patient))  # by patient
    threads = torch.get_num_threads(); torch.set_num_threads(min(2, threads))
    try: p = fit_predict(X[tr], y[tr], X[te])
    finally: torch.set_num_threads(threads)
    yt, tt, st = y[te], tube[te], size[te]
    neg = p[(yt == 0) & (tt == 0)]
    median = np.nanmedian(size[y == 1])
    def auroc(sel):
        pos = p[(yt == 1) & (tt == 0) & sel]
        assert len(pos) >= 15
        return roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg])
    small, large = auroc(st <= median), auroc(st > median)
    print(f"tube-free AUROC: smaller half {small:.3f}, larger half {large:.3f}")
    assert large > CHANCE + 0.25, (small, large)
    assert large > small, (small, large)
