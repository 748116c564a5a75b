"Fine-tuning really updates the encoder, probing never does; killed fine-tunes resume to the same result."
import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxr_study.data.cohorts import get_task, make_cohort, split_masks
from cxr_study.data.index import read_index
from cxr_study.data.preprocess import load_masks
from cxr_study.train.finetune import (AdaptImages, FinetuneCfg, TensorPairs, build_finetune_model, encoder_changed,
                                      fit_finetune, tiny_encoder)

ROOT = Path(__file__).resolve().parents[1]


def _fold_data(root, task, pcfg):
    t = get_task(task)
    cohort = make_cohort(read_index(root / "index.parquet"), task).reset_index(drop=True)
    s = split_masks(cohort["fold"], 0)

    def data(m, n):  # the first n images of a split keep it fast
        c = cohort[m].iloc[:n]
        return AdaptImages(c, root, pcfg, load_masks(c, t.label, pcfg, size=pcfg.size) if t.kind == "segmentation" else c["y"].values)
    return t, data(s["train"], 16), data(s["val"], 8)


@pytest.mark.parametrize("arch", ["vit", "resnet"])
@pytest.mark.parametrize("task", ["pneumothorax-cls", "pneumothorax-seg"])
def test_encoder_changes_under_finetuning_and_is_bit_identical_under_probing(tiny_benchmark, arch, task):
    t, train, val = _fold_data(tiny_benchmark, task, tiny_encoder(arch).cfg.preprocess)
    for mode in ("full", "frozen"):
        m = build_finetune_model(tiny_encoder(arch), t.kind)
        before = {k: v.clone() for k, v in m.encoder.state_dict().items()}  # buffers too: BatchNorm statistics
        head0 = m.head.weight.detach().clone()
        cfg = FinetuneCfg(mode=mode, max_epochs=1, batch_size=8)  # the study's learning rates
        m, _ = fit_finetune(m, train, val, t.kind, t.class_weights, cfg, device="cpu")
        assert not torch.equal(head0, m.head.weight)  # the head trains in both modes
        if mode == "full":
            assert encoder_changed(before, m), "fine-tuning left the encoder unchanged"
            # gradients reached the encoder's first layer (the study's Ark+ no_grad defect would leave none)
            first = next(p for p in m.encoder.parameters())
            assert first.grad is not None and first.grad.abs().sum() > 0
        else:
            after = m.encoder.state_dict()
            assert all(torch.equal(before[k], after[k]) for k in before), "probing changed the encoder"
            assert all(p.grad is None for p in m.encoder.parameters())


def test_lora_trains_adapters_only():
    torch.manual_seed(0)
    X, M = torch.randn(8, 3, 64, 64), torch.rand(8, 64, 64) > 0.7
    m = build_finetune_model(tiny_encoder("vit"), "segmentation")
    before = {k: v.clone() for k, v in m.encoder.state_dict().items()}
    m, _ = fit_finetune(m, TensorPairs(X, M), TensorPairs(X, M), "segmentation",
                        cfg=FinetuneCfg(mode="lora", max_epochs=2, batch_size=4, encoder_lr=1e-3), device="cpu")
    after = m.encoder.state_dict()
    base = {k.replace(".base_layer", ""): v for k, v in after.items() if "lora_" not in k}
    assert set(base) == set(before) and all(torch.equal(before[k], base[k]) for k in before)
    lora_b = [v for k, v in after.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: nonzero means it trained


def test_early_stopping_stops_and_restores_the_best_epoch():
    torch.manual_seed(0)
    X, Y = torch.randn(16, 3, 64, 64), torch.randint(0, 2, (16,))  # random labels: validation loss soon rises
    Xv, Yv = torch.randn(8, 3, 64, 64), torch.randint(0, 2, (8,))
    cfg = FinetuneCfg(max_epochs=40, patience=2, batch_size=8, head_lr=3e-2, encoder_lr=1e-3)
    m, h = fit_finetune(build_finetune_model(tiny_encoder("vit"), "classification"), TensorPairs(X, Y), TensorPairs(Xv, Yv),
                        "classification", cfg=cfg, device="cpu")
    assert len(h["val_loss"]) == h["best_epoch"] + 1 + cfg.patience < cfg.max_epochs
    with torch.no_grad():
        v = torch.nn.functional.binary_cross_entropy_with_logits(m(Xv), Yv.float()).item()
    assert v == pytest.approx(h["val_loss"][h["best_epoch"]], abs=1e-5)


class _Interrupt(Exception):
    pass


def test_interrupted_fit_resumes_to_the_identical_result(tmp_path):
    "Stop mid-epoch (after 5 steps, 3 per epoch), rerun with the same checkpoint folder: bit-identical to an uninterrupted run."
    torch.manual_seed(0)
    X, M = torch.randn(16, 3, 64, 64), torch.rand(16, 64, 64) > 0.7
    cfg = FinetuneCfg(max_epochs=3, batch_size=4, encoder_lr=1e-3, augment=True)  # augmentation: its RNG must resume too
    run = lambda ckpt=None, on_step=None: fit_finetune(build_finetune_model(tiny_encoder("resnet"), "segmentation"),
                                                     TensorPairs(X[:12], M[:12]), TensorPairs(X[12:], M[12:]), "segmentation",
                                                     cfg=cfg, device="cpu", ckpt_dir=ckpt, on_step=on_step)
    ref, h_ref = run()

    def stop(step):
        if step == 5: raise _Interrupt
    with pytest.raises(_Interrupt): run(tmp_path / "ckpt", stop)
    assert (tmp_path / "ckpt" / "last.pt").exists()
    res, h = run(tmp_path / "ckpt")
    assert h["resumed_from"] == 1  # one whole epoch was checkpointed before the interruption
    assert h["train_loss"] == h_ref["train_loss"] and h["val_loss"] == h_ref["val_loss"]
    a, b = ref.state_dict(), res.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


_SCRIPT = textwrap.dedent("""
    import dataclasses, os, signal, sys
    from cxr_study.encoders.registry import register_encoder
    from cxr_study.study import protocols
    from cxr_study.train.finetune import fit_finetune, tiny_encoder
    from cxr_study.study.runner import RunSpec, run_experiment

    register_encoder(tiny_encoder("vit").cfg)
    kill_at, calls = int(sys.argv[3]), []
    if kill_at:  # killed by a signal in fold 1 (the second fit) after `kill_at` optimiser steps, in the middle of an epoch
        def fit(*a, **kw):
            calls.append(1)
            if len(calls) == 2: kw["on_step"] = lambda step: os.kill(os.getpid(), signal.SIGKILL) if step == kill_at else None
            return fit_finetune(*a, **kw)
        protocols.fit_finetune = fit
    run_experiment(RunSpec.of("tiny-vit", "pneumothorax-cls", "fine-tune", sys.argv[1], sys.argv[2], folds=[0, 1], device="cpu",
                   adapt=ADAPT))
""")
ADAPT = {"max_epochs": 2, "batch_size": 8, "encoder_lr": 1e-4}


def test_killed_finetune_run_resumes_to_the_same_result(tiny_benchmark, tmp_path):
    "The same command, killed with SIGKILL mid-epoch in fold 1 and rerun, ends with the uninterrupted run's results."
    script = tmp_path / "run.py"; script.write_text(_SCRIPT.replace("ADAPT", repr(ADAPT)))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CXR_STUDY_PROGRESS": "0", "HF_HUB_OFFLINE": "1"}
    go = lambda out, kill: subprocess.run([sys.executable, str(script), str(tiny_benchmark), str(out), str(kill)], env=env,
                                          capture_output=True, text=True, timeout=300)
    from cxr_study.encoders import registry
    from cxr_study.study.runner import RunSpec, run_experiment
    registry.register_encoder(tiny_encoder("vit").cfg)
    try: run_experiment(RunSpec.of("tiny-vit", "pneumothorax-cls", "fine-tune", tiny_benchmark, tmp_path / "ref", folds=[0, 1], device="cpu", adapt=ADAPT))
    finally: registry._REGISTRY.pop("tiny-vit")  # the uninterrupted reference, in this process
    n_train = int(pd.read_csv(tmp_path / "ref/runs/tiny-vit/pneumothorax-cls/fine-tune/results.csv").n_train.iloc[1])
    steps_per_epoch = -(-n_train // 8)
    kill_at = steps_per_epoch + 2
    assert steps_per_epoch > 2  # so step kill_at is inside epoch 2 of fold 1
    r = go(tmp_path / "out", kill_at)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-2000:])
    ckpts = list((tmp_path / "out" / "checkpoints").rglob("last.pt"))
    assert ckpts and not (tmp_path / "out/runs/tiny-vit/pneumothorax-cls/fine-tune/run.json").exists()
    r = go(tmp_path / "out", 0)
    assert r.returncode == 0, r.stderr[-2000:]
    run = lambda o: o / "runs/tiny-vit/pneumothorax-cls/fine-tune"
    ref, res = pd.read_parquet(run(tmp_path / "ref") / "predictions.parquet"), pd.read_parquet(run(tmp_path / "out") / "predictions.parquet")
    pd.testing.assert_frame_equal(ref, res, check_exact=True)
    a, b = pd.read_csv(run(tmp_path / "ref") / "results.csv"), pd.read_csv(run(tmp_path / "out") / "results.csv")
    pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"), check_exact=True)
    assert not list((tmp_path / "out" / "checkpoints").rglob("*.pt"))  # removed once complete


def test_protocols_in_the_runner_and_grid(tiny_benchmark, tmp_path):
    from cxr_study.study.executors import run_grid
    from cxr_study.study.runner import RunSpec, grid_runs, is_complete, run_experiment
    # a grid only holds the cells a protocol applies to
    assert grid_runs(["resnet18", "segformer-b4"], ["cardiomegaly-cls", "heart-seg"], ["multiscale-probe", "e2e"]) == [
        ("resnet18", "heart-seg", "multiscale-probe"), ("segformer-b4", "cardiomegaly-cls", "e2e"),
        ("segformer-b4", "heart-seg", "multiscale-probe"), ("segformer-b4", "heart-seg", "e2e")]
    small = {"max_epochs": 1, "input_size": 64, "config": {"hidden_sizes": [16, 32, 64, 128], "depths": [1, 1, 1, 1], "decoder_hidden_size": 64}}
    st = run_grid(["segformer-b0"], ["pneumothorax-cls", "heart-seg"], tiny_benchmark, tmp_path, protocols=["e2e"], folds=[0],
                  executor="inline", options={"adapt": small, "mask_size": 64, "device": "cpu"}, show_progress=False)
    assert st.status.tolist() == ["done", "done"], st.message.tolist()
    st = run_grid(["segformer-b0"], ["pneumothorax-cls", "heart-seg"], tiny_benchmark, tmp_path, protocols=["e2e"], folds=[0],
                  executor="inline", options={"adapt": small, "mask_size": 64, "device": "cpu"}, show_progress=False)
    assert st.status.tolist() == ["skipped (complete)"] * 2
    # other settings make another run
    assert not is_complete(tmp_path, "segformer-b0", "heart-seg", "e2e", {"folds": [0], "adapt": {**small, "max_epochs": 2}})
    r = run_experiment(RunSpec.of("resnet18", "pneumothorax-seg", "multiscale-probe", tiny_benchmark, tmp_path, folds=[0], mask_size=64, device="cpu",
                       adapt={"layers": ["layer1", "layer2"], "lr": 1e-2, "max_epochs": 3, "loss_size": 32}))
    assert {"dice", "iou", "pred_mask"} <= set(r["predictions"].columns) and r["results"].protocol.iloc[0] == "multiscale-probe"
    with pytest.raises(Exception, match="encoder must be one of"):
        run_experiment(RunSpec.of("resnet18", "heart-seg", "e2e", tiny_benchmark, tmp_path))
    with pytest.raises(Exception, match="is for segmentation"):
        run_experiment(RunSpec.of("resnet18", "cardiomegaly-cls", "multiscale-probe", tiny_benchmark, tmp_path))


def _encoders_to_check():
    from cxr_study.encoders.registry import get_encoder_cfg, list_encoders
    return [n for n in list_encoders() if get_encoder_cfg(n).params != 0]  # raw-pixels has nothing to train


def _build(name):
    "The entry's reduced member of its family (same code paths, fewer and narrower layers) at 224 px, where it has one;\n    with CXR_STUDY_ALL_ENCODERS=1 the full-size model at the study's resolution (slow on a CPU, meant for a GPU machine)."
    import inspect
    from cxr_study.encoders.registry import create_encoder, get_encoder_cfg
    if os.environ.get("CXR_STUDY_ALL_ENCODERS") == "1": return create_encoder(name)
    accepts = inspect.signature(get_encoder_cfg(name).builder).parameters
    return create_encoder(name, **{k: v for k, v in (("reduced", True), ("input_size", 224)) if k in accepts})


@pytest.mark.parametrize("name", _encoders_to_check())
@pytest.mark.parametrize("kind", ["classification", "segmentation"])
def test_gradients_reach_every_registered_encoder(name, kind):
    "Contract for every registry entry with parameters: both heads back-propagate into the encoder's first layer (no no_grad inside)."
    torch.manual_seed(0)
    m = build_finetune_model(_build(name), kind).train()
    size = m.encoder.cfg.preprocess.size
    x = torch.randn(1, m.encoder.cfg.preprocess.channels, size, size)
    out = m(x) if kind == "classification" else m(x, size=32)
    out.float().square().mean().backward()
    first = next(p for p in m.encoder.parameters() if p.requires_grad and p.ndim == 4)  # the stem / patch embedding: a convolution in every architecture here
    assert first.grad is not None and first.grad.abs().sum() > 0, f"{name}: no gradient reaches the encoder from the {kind} head"
