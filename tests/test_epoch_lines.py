"Probes and fine-tuning write one line per epoch to a log (epoch, training loss, validation loss, time), and nothing when progress is off."
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np, torch
    from cxr_study.heads.probes import SegProbeCfg, fit_seg_probe
    from cxr_study.heads.multiscale import MultiscaleCfg, fit_multiscale_probe
    from cxr_study.train.finetune import FinetuneCfg, TensorPairs, build_finetune_model, fit_finetune, tiny_encoder
    rng = np.random.default_rng(0)
    G, Gv = rng.normal(size=(12, 8, 4, 4)).astype("float32"), rng.normal(size=(6, 8, 4, 4)).astype("float32")
    M, Mv = rng.random((12, 16, 16)) > 0.7, rng.random((6, 16, 16)) > 0.7
    hist = {}
    _, hist["segmentation probe"] = fit_seg_probe(G, M, Gv, Mv, cfg=SegProbeCfg(max_epochs=4, patience=10, batch_size=4), device="cpu")
    _, hist["multi-scale probe"] = fit_multiscale_probe([G, G[:, :4, :2, :2]], M, [Gv, Gv[:, :4, :2, :2]], Mv,
                                                        cfg=MultiscaleCfg(max_epochs=3, patience=10, batch_size=4), device="cpu")
    torch.manual_seed(0)
    X, Y = torch.randn(8, 3, 64, 64), torch.randint(0, 2, (8,))
    m = build_finetune_model(tiny_encoder("resnet"), "classification")
    _, hist["fine-tuning (classification)"] = fit_finetune(m, TensorPairs(X, Y), TensorPairs(X[:4], Y[:4]), "classification",
                                                           cfg=FinetuneCfg(max_epochs=2, patience=10, batch_size=4), device="cpu")
    print(json.dumps({k: {"train": h["train_loss"], "val": h["val_loss"]} for k, h in hist.items()}))
""")


def _run(extra_env: dict):
    env = {k: v for k, v in os.environ.items() if k not in ("TQDM_DISABLE", "CXR_STUDY_PROGRESS")}
    r = subprocess.run([sys.executable, "-c", SCRIPT], env={**env, "HF_HUB_OFFLINE": "1", **extra_env},
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr


def test_one_line_per_epoch_with_the_losses_of_the_history():
    hist, err = _run({})
    line = re.compile(r"^(?P<what>.+): epoch (?P<e>\d+)/(?P<max>\d+): train loss (?P<tr>\S+), val loss (?P<va>\S+), (?P<s>\d+\.\d) s$")
    seen = {}
    for l in err.splitlines():
        if (m := line.match(l)): seen.setdefault(m["what"], []).append(m)
    assert set(seen) == set(hist), err[-2000:]
    for what, h in hist.items():
        ms = seen[what]
        assert [int(m["e"]) for m in ms] == list(range(1, len(h["train"]) + 1))  # every epoch once, in order
        assert [float(m["tr"]) for m in ms] == pytest.approx(h["train"], rel=1e-3)  # 4 significant digits
        assert [float(m["va"]) for m in ms] == pytest.approx(h["val"], rel=1e-3)
        assert all(float(m["s"]) >= 0 for m in ms)


@pytest.mark.parametrize("env", [{"TQDM_DISABLE": "1"}, {"CXR_STUDY_PROGRESS": "0"}])
def test_no_epoch_lines_when_progress_is_off(env):
    hist, err = _run(env)
    assert len(hist) == 3 and " epoch " not in err, err[-2000:]
