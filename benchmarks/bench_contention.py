"""How much other busy programs slow the study's work: each workload alone and beside two busy single-threaded
competitor processes, side by side in one run, on the same machine.

    python benchmarks/bench_contention.py [--repeats 3] [--quick] [--competitors 2] [--images 96] [--json PATH]

Each workload runs in a fresh Python process (so that the thread settings apply before torch starts, as in the
command line, its workers and the notebook kernels), twice per repeat: alone, and with `--competitors` processes
spinning `while True: pass` beside it (started before, stopped after). The figure is the slowdown: seconds
beside the competitors over seconds alone. On 2 cores with two competitors a fair share of the machine gives a
2-thread workload half of it, a slowdown of 2; the goal is at most 2.5.

- fit: `fit_seg_probe` on the demo's shapes (288 training and 96 validation grids of 14 x 14 x 256, masks at
  224 px, loss at 56 px, batch 32, learning rate 0.05), 20 epochs, with the library's thread settings
  (`cxr_study.core.steady_threads`: threads from the cores available, waiting threads asleep);
- fit, as before: the fit this library replaced (`bench_seg_probe.autograd_fit`), with torch imported before the
  library, so OpenMP keeps its default waiting (threads spin before they sleep): what the demo did before;
- run: a demo-like run, `run_experiment` of ResNet-18 on the heart segmentation task of a small synthetic
  benchmark (`--images` radiographs at 256 px, two test folds, the demo's probe), everything included: reading,
  the feature extraction into an empty cache, the probe fits, the predictions and the written results;
- control: a single-threaded Python loop, which no thread setting can help: what the machine's scheduler gives one
  thread beside the competitors (about 1.5 on 2 otherwise idle cores). On a machine that other programs already
  keep busy, the control's slowdown is larger, and the workloads' figures are to be read against it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CXR_STUDY_PROGRESS", "0")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # benchlib, beside this file
import benchlib  # noqa: E402

TITLE = "Slowdown beside two busy programs: the probe fit and a demo-like run"
SPIN = "while True: pass"


def _fit(before: bool, epochs: int) -> float:
    "Seconds of one probe fit on the demo's shapes (in the child process)."
    if before: import torch  # noqa: F401  (torch first: OpenMP starts with its default waiting, as before)
    import bench_seg_probe as b
    from cxr_study.heads.probes import SegProbeCfg, fit_seg_probe
    G, M = b.make_grids(288 + 96, 256, 14)
    cfg = SegProbeCfg(lr=0.05, batch_size=32, loss_size=56, max_epochs=epochs, patience=epochs + 1)
    fit = b.autograd_fit if before else (lambda *a: fit_seg_probe(*a, device="cpu"))
    t = time.perf_counter(); fit(G[:288], M[:288], G[288:], M[288:], (1.0, 1.0), cfg)
    return time.perf_counter() - t


def _run(data: Path, out: Path) -> float:
    "Seconds of one demo-like run into an empty study folder (in the child process)."
    from cxr_study.cli import DEMO_PROBE
    from cxr_study.study.runner import RunSpec, run_experiment
    t = time.perf_counter()
    run_experiment(RunSpec.of("resnet18", "heart-seg", "linear-probe", data, out, folds=(0, 1), probe=DEMO_PROBE))
    return time.perf_counter() - t


def _control(n: int = 20_000_000) -> float:
    "Seconds of a single-threaded Python loop (in the child process)."
    t = time.perf_counter(); s = 0
    for i in range(n): s += i
    return time.perf_counter() - t


def child(argv: list) -> None:
    "`--workload fit|fit-before|run|control ...`: run one workload here and print its seconds as JSON."
    kind, arg = argv[1], argv[2:]
    if kind == "run": s = _run(Path(arg[0]), Path(arg[1]))
    elif kind == "control": s = _control()
    else: s = _fit(kind == "fit-before", int(arg[0]))
    print(json.dumps({"seconds": s}))


def measure(args: list, competitors: int) -> float:
    "Seconds of one workload in a fresh process, with `competitors` spinning processes beside it."
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(competitors)]
    try:
        time.sleep(0.2 if competitors else 0)  # the competitors are running before the workload starts
        env = dict(os.environ)
        if args[0] == "fit-before":  # as before: none of the library's thread settings (importing it sets them for its children)
            for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_WAIT_POLICY", "KMP_BLOCKTIME"): env.pop(k, None)
        out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--workload", *args], cwd=HERE.parent,
                             capture_output=True, text=True, env=env)
    finally:
        for p in spinners: p.kill()
        for p in spinners: p.wait()
    if out.returncode != 0: raise RuntimeError(f"workload {args[0]} failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


def prepare(d: Path, images: int) -> Path:
    "A small synthetic benchmark, indexed, for the demo-like run."
    from cxr_study.data.index import write_index
    from cxr_study.data.prepare import index_dataset
    from cxr_study.data.synthetic import SyntheticCfg, make_synthetic_benchmark
    raw = make_synthetic_benchmark(d/"synthetic", SyntheticCfg(n_images=images, size=256, seed=11))
    idx, _ = index_dataset("synthetic", raw)
    write_index(idx, raw/"index.parquet")
    return raw


def run(repeats: int = benchlib.MIN_REPEATS, quick: bool = False, competitors: int = 2, images: int | None = None,
        epochs: int | None = None) -> dict:
    "Each workload alone and beside the competitors, `repeats` times, alternating which goes first; the slowdowns."
    images, epochs = images or (24 if quick else 96), epochs or (2 if quick else 20)
    kinds = ("control", "fit", "run") if quick else ("control", "fit", "fit-before", "run")  # --quick: a check that it runs
    times = {k: {"alone": [], "beside": []} for k in kinds}
    with tempfile.TemporaryDirectory() as d:
        data = prepare(Path(d), images)
        for r in range(repeats):
            for kind in times:
                for cond in (("alone", "beside") if r % 2 == 0 else ("beside", "alone")):
                    args = ([kind, str(data), str(Path(d)/f"out-{kind}-{r}-{cond}")] if kind == "run" else
                            [kind, str(epochs // 2 if kind == "fit-before" else epochs)])  # the replaced fit: half the epochs (it is slow)
                    s = measure(args, competitors if cond == "beside" else 0)
                    times[kind][cond].append(s)
                a, b = times[kind]["alone"][-1], times[kind]["beside"][-1]
                print(f"  repeat {r + 1}, {kind}: alone {a:.2f} s, beside {competitors} busy processes {b:.2f} s ({b / a:.2f}x)", flush=True)
    what = {"control": "control: a single-threaded Python loop (what the scheduler gives one thread)",
            "fit": f"fit_seg_probe, 288 + 96 grids of 14 x 14 x 256, loss at 56 px, {epochs} epochs",
            "fit-before": f"the replaced fit with OpenMP's default waiting (torch imported first), same grids, {epochs // 2} epochs",
            "run": f"demo-like run: run_experiment of ResNet-18 on heart-seg, {images} synthetic radiographs, 2 folds, extraction included"}
    figures = {k.replace("-", "_"): benchlib.ratio_figure(
        f"{what[k]}: beside {competitors} busy single-threaded processes / alone", (f"beside {competitors} busy processes (s)", v["beside"]),
        ("alone (s)", v["alone"])) for k, v in times.items()}
    slow = {k: [b / a for a, b in zip(v["alone"], v["beside"])] for k, v in times.items()}
    for k in ("fit", "run"):  # how much more than one thread's share of the machine: 1 is as steady as a program can be
        figures[f"{k}_over_control"] = benchlib.ratio_figure(
            f"{what[k].split(':')[0] if k == 'run' else 'fit_seg_probe'}: its slowdown / the control's slowdown (1: no more than a "
            "single thread loses to the competitors)", (f"{k} slowdown (x)", slow[k]), ("control slowdown (x)", slow["control"]))
    cores = benchlib.cores()
    notes = [f"{cores} cores: a fair share beside {competitors} busy processes is a slowdown of "
             f"{(cores + competitors) / cores if cores >= 2 else competitors + 1:.1f} for a workload using every core; the goal is 2.5 at most",
             "'alone' is this run's quiet measurement: other programs on the machine, if any, ran during both (see the load)"]
    return benchlib.result(TITLE, f"python benchmarks/bench_contention.py --competitors {competitors} --repeats {repeats}",
                           {"competitors": competitors, "images": images, "epochs": epochs, "cores": cores}, figures, notes)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--workload": child(sys.argv[1:]); sys.exit(0)
    def options(ap):
        ap.add_argument("--competitors", type=int, default=2, help="busy single-threaded processes beside the workload (default 2)")
        ap.add_argument("--images", type=int, default=None, help="synthetic radiographs of the demo-like run (default 96; --quick 48)")
        ap.add_argument("--epochs", type=int, default=None, help="epochs of each fit (default 20; --quick 3)")
    benchlib.cli(run, __doc__, extra=options)
