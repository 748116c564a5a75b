"""Fine-tuning throughput and peak GPU memory of the study's nine models at their study resolution,
batch 16, bf16 autocast, AdamW with the study's learning rates (the encoder unfrozen).

    python benchmarks/gpu_finetune.py [--models rad-dino ark-plus ...] [--task segmentation|classification|both]
                                      [--steps 10] [--warmup 3] [--grad-checkpointing] [--channels-last] [--out result.json]

Each model is built with `create_encoder(name)` (random init unless --pretrained: the weights do not change the
cost) and wrapped with the study's head (`build_finetune_model`); SegFormer-B4 is also measured as the end-to-end
baseline (`build_segformer`). Names not in the encoder registry are skipped with a message. Inputs are random
tensors of the model's input size; one step = forward, loss, backward, gradient clipping, optimiser step.
Reported: images per second over the timed steps, and the peak memory allocated by torch
(`torch.cuda.max_memory_allocated`), in GiB. A model that runs out of memory is reported as OOM.
Needs a CUDA GPU; `--device cpu` only checks that the script runs (its numbers mean nothing).
"""
import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CXR_STUDY_PROGRESS", "0")

import torch
import torch.nn.functional as F

STUDY_MODELS = ["rad-dino", "ark-plus", "medimageinsight", "biomedclip", "chexagent-vision", "medsiglip", "dinov2",
                "siglip2", "segformer-b4"]


def measure(model, size, kind, device, batch, steps, warmup, channels_last, amp=True):
    "Images/s and peak GiB of `steps` fine-tuning steps after `warmup` untimed ones."
    from cxr_study.train.finetune import FinetuneCfg, configure_adaptation
    from cxr_study.train.segformer import e2e_cfg
    cfg = e2e_cfg(kind) if hasattr(model, "model") and hasattr(model.model, "segformer") else FinetuneCfg()
    groups = configure_adaptation(model, cfg)
    model.to(device).train()
    if channels_last: model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    x = torch.randn(batch, 3, size, size, device=device)
    if channels_last: x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch,), device=device) if kind == "classification" else torch.rand(batch, size, size, device=device) > 0.9
    w = torch.tensor([1.0, 5.0], device=device)
    params = [p for g in groups for p in g["params"]]

    def step():
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            z = model(x) if kind == "classification" else model(x, size=(size, size))
        z = z.float()
        loss = F.binary_cross_entropy_with_logits(z, y.float()) if kind == "classification" else F.cross_entropy(z, y.long(), weight=w)
        opt.zero_grad(set_to_none=True); loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0); opt.step()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup): step()
    sync()
    if device.type == "cuda": torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(steps): step()
    sync()
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return batch * steps / dt, peak


def run(repeats: int = 3, quick: bool = False, models: list | None = None, task: str = "segmentation",
        batch: int = 16, steps: int = 10, warmup: int = 3, device: str = "cuda") -> dict:
    """For `run_all.py`: fine-tuning throughput of each model `repeats` times (images/s, a value per model, not a ratio);
    without a CUDA GPU, skipped with the reason. `quick` measures ViT-S/16 only, for 3 steps. (`device="cpu"` only
    checks that it runs.)"""
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import benchlib
    title = "GPU fine-tuning throughput of the study's models"
    command = "python benchmarks/gpu_finetune.py --task segmentation"
    if device == "cuda" and not torch.cuda.is_available():
        return benchlib.skipped(title, "no CUDA GPU here (torch.cuda.is_available() is False); run it on a machine with an "
                                       "NVIDIA GPU and a CUDA build of torch", command)
    from cxr_study.encoders.registry import create_encoder, list_encoders
    from cxr_study.train.finetune import build_finetune_model
    from cxr_study.train.segformer import build_segformer, segformer_preprocess
    device, registered = torch.device(device), set(list_encoders())
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{device} (numbers meaningless)"
    models = models or (["vit-small-patch16-224"] if quick else [m for m in STUDY_MODELS if m in registered or m.startswith("segformer-")])
    steps, warmup = (3, 1) if quick else (steps, warmup)
    figures, notes = {}, []
    for name in models:
        e2e = name.startswith("segformer-")
        ips, peaks = [], []
        try:
            for _ in range(repeats):
                model = build_segformer(task, name) if e2e else build_finetune_model(create_encoder(name), task)
                size = segformer_preprocess(name).size if e2e else model.encoder.cfg.preprocess.size
                i, p = measure(model, size, task, device, batch, steps, warmup, channels_last=False)
                ips.append(i); peaks.append(p)
                model = None; torch.cuda.empty_cache()
        except torch.cuda.OutOfMemoryError:
            notes.append(f"{name}: out of GPU memory at batch {batch}"); continue
        figures[name] = benchlib.value_figure(f"{name} ({'end to end' if e2e else 'fine-tune'}), {task}, {size} px, batch {batch}, "
                                              f"bf16 autocast, {steps} steps: images per second", ips, "img/s")
        notes.append(f"{name}: peak GPU memory {max(peaks):.1f} GiB")
    return benchlib.result(title + f" on {hw}", command,
                           {"models": models, "task": task, "batch": batch, "steps": steps, "warmup": warmup}, figures, notes)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=STUDY_MODELS)
    ap.add_argument("--task", choices=["segmentation", "classification", "both"], default="both")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--size", type=int, default=None, help="override every model's input size (default: the study's)")
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--pretrained", action="store_true", help="load the weights from the local HF cache")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_finetune: no CUDA GPU is available (torch.cuda.is_available() is False); this benchmark measures GPU "
              "fine-tuning and must run on a machine with an NVIDIA GPU and a CUDA build of torch.", file=sys.stderr)
        return 2
    from cxr_study.encoders.registry import create_encoder, list_encoders
    from cxr_study.train.finetune import build_finetune_model, enable_grad_checkpointing
    from cxr_study.train.segformer import build_segformer, segformer_preprocess
    registered = set(list_encoders())
    kinds = ["segmentation", "classification"] if a.task == "both" else [a.task]
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"# {hw}, torch {torch.__version__}, batch {a.batch}, bf16 autocast, {a.steps} timed steps after {a.warmup}")
    rows = []
    for name in a.models:
        builds = []
        if name in registered:
            builds.append(("fine-tune", lambda kind, n=name: build_finetune_model(create_encoder(n, pretrained=a.pretrained), kind)))
        else:
            print(f"skip {name}: not in the encoder registry (registered: {', '.join(sorted(registered))})", file=sys.stderr)
        if name.startswith("segformer-"):
            builds.append(("e2e", lambda kind, n=name: build_segformer(kind, n, pretrained=a.pretrained)))
        for protocol, build in builds:
            for kind in kinds:
                row = {"model": name, "protocol": protocol, "task": kind, "batch": a.batch}
                try:
                    model = build(kind)
                    size = a.size or (segformer_preprocess(name).size if protocol == "e2e" else model.encoder.cfg.preprocess.size)
                    row.update(input_size=size, params_m=round(sum(p.numel() for p in model.parameters()) / 1e6, 1))
                    if a.grad_checkpointing: row["grad_checkpointing"] = enable_grad_checkpointing(model.encoder)
                    ips, peak = measure(model, size, kind, device, a.batch, a.steps, a.warmup, a.channels_last)
                    row.update(images_per_s=round(ips, 2), peak_gib=round(peak, 2))
                except torch.cuda.OutOfMemoryError:
                    row.update(images_per_s=None, peak_gib="OOM")
                except Exception as e:  # one model's failure is reported, the others still run
                    row.update(images_per_s=None, peak_gib=None, error=f"{type(e).__name__}: {e}"[:300])
                finally:
                    model = None
                    if device.type == "cuda": torch.cuda.empty_cache()
                rows.append(row)
                print(json.dumps(row), flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"hardware": hw, "torch": torch.__version__, "rows": rows}, f, indent=2)
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
