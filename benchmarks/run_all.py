"""Run every benchmark and write `benchmarks/results.json`, then the README's performance section from it.

    python benchmarks/run_all.py [--quick] [--repeats 3] [--only bench_stats ...] [--out PATH] [--no-readme]

Every `bench_*.py` and `gpu_*.py` in this folder is a benchmark. Each runs in its own Python process (fresh
torch threads and memory), one after the other, through its `run(repeats, quick)` function; the convention
that function follows is in `benchmarks/README.md` and `benchlib.py`. A benchmark whose figures move between
processes more than between repeats of one process (the extraction ratio: memory layout, which cores its
threads land on) sets `INVOCATIONS = 3` at module level: it then runs in that many separate processes, and each
figure's median and range are over the repeats of all of them (with each process's median beside them). A benchmark that cannot run here (no GPU)
is recorded as skipped with its reason; one that fails is recorded with its error, the others still run, and
the command exits with status 1.

`--quick` writes its results to the temporary folder unless `--out` says otherwise, and leaves the README alone.
`results.json` holds, besides each benchmark's figures: the machine (CPU model, cores, GPU, library versions),
and for each benchmark the torch threads it ran with, the load average before and after it, the CPU that other programs
used meanwhile (in cores, from /proc/stat), when it ran and how long it took. `--only` measures the named
benchmarks again and keeps the other entries of an existing file.

The defaults take about 10 minutes on a quiet 2-core machine; `--quick` runs every benchmark at small sizes, once
each (a check that they run; its figures are not the README's).
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import benchlib  # noqa: E402

RESULTS = HERE/"results.json"
PATTERNS = ("bench_*.py", "gpu_*.py")


def discover(folder: Path = HERE) -> list[Path]:
    "The benchmark scripts of `folder`, in name order."
    return sorted({p for pat in PATTERNS for p in folder.glob(pat)}, key=lambda p: p.name)


def run_one(path: Path, repeats: int, quick: bool) -> dict:
    "Import one benchmark and call its `run`; in the process `run_all` starts for it."
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not callable(getattr(mod, "run", None)):  # not (yet) following the convention: recorded, not run
        return {**benchlib.skipped(path.stem, f"{path.name} has no run(repeats, quick) function yet (see benchmarks/README.md)"),
                "machine": benchlib.machine()}
    res = benchlib.check_result(mod.run(repeats=repeats, quick=quick), path.name)
    return {**res, "machine": benchlib.machine()}


def invocations(path: Path) -> int:
    "How many separate processes a benchmark asks to be measured in: its module-level `INVOCATIONS` (default 1), read without importing it."
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "INVOCATIONS" for t in node.targets):
            try: return max(1, int(ast.literal_eval(node.value)))
            except (ValueError, TypeError): pass
    return 1


def _merged_figure(figs: list[dict]) -> dict:
    "One figure from the same figure of several invocations: every repeat of each, with each invocation's median."
    f = figs[0]
    def values(key): return [v for g in figs for v in g[key]["values"]]
    if f["kind"] == "ratio":
        out = benchlib.ratio_figure(f["label"], (f["numerator"]["what"], values("numerator")),
                                    (f["denominator"]["what"], values("denominator")), f["unit"], f.get("note", ""))
    else: out = benchlib.value_figure(f["label"], [v for g in figs for v in g["values"]], f["unit"], f.get("note", ""))
    return {**out, "invocations": len(figs), "invocation_medians": [g["median"] for g in figs]}


def merge_invocations(results: list[dict]) -> dict:
    "The result of a benchmark measured in several processes: figures over all their repeats, conditions over all of them."
    first = results[0]
    if len(results) == 1 or any("figures" not in r or not r["figures"] for r in results): return first
    figures = {k: _merged_figure([r["figures"][k] for r in results]) for k in first["figures"] if all(k in r["figures"] for r in results)}
    conds = [r["conditions"] for r in results]
    seconds = sum(c["seconds"] for c in conds)
    cond = {**conds[0], "seconds": round(seconds, 1), "load_after": conds[-1]["load_after"], "invocations": len(results),
            "other_cores": round(sum(c["other_cores"] * c["seconds"] for c in conds) / max(seconds, 1e-9), 2)}
    notes = list(dict.fromkeys(n for r in results for n in r.get("notes", [])))
    return {**first, "figures": figures, "conditions": cond, "notes": notes}


def measure(path: Path, repeats: int, quick: bool, log=print) -> dict:
    "Run one benchmark in a fresh Python process (in `INVOCATIONS` of them, one after the other); its result with its conditions."
    k = 1 if quick else invocations(path)
    if k == 1: return _measure_once(path, repeats, quick, log)
    per = max(1, -(-repeats // k) + 1)  # at least `repeats` in all, and more than one in each process
    results = []
    for i in range(k):
        log(f"   process {i + 1} of {k}")
        results.append(_measure_once(path, per, quick, log))
        if "error" in results[-1]: return results[-1]
    return merge_invocations(results)


def _measure_once(path: Path, repeats: int, quick: bool, log=print) -> dict:
    "Run one benchmark in a fresh Python process; its result with the conditions it ran under."
    with tempfile.TemporaryDirectory() as d:
        out = Path(d)/"result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(path), "--repeats", str(repeats),
               "--child-out", str(out)] + (["--quick"] if quick else [])
        load_before, started = benchlib.load_average(), time.strftime("%Y-%m-%d %H:%M %Z")
        with benchlib.CpuUse() as use:
            proc = subprocess.run(cmd, cwd=HERE.parent, stderr=subprocess.PIPE, text=True)  # its progress goes to our stdout
        cond = {"started": started, "seconds": round(use.seconds, 1), "load_before": load_before,
                "load_after": benchlib.load_average(), "other_cores": round(use.other_cores, 2)}
        if proc.returncode == 0 and out.exists():
            res = json.loads(out.read_text())
            machine = res.pop("machine")
            return {**res, "conditions": {**cond, "torch_threads": machine["torch_threads"]}, "machine": machine}
        err = (proc.stderr or "").strip().splitlines()
        log(proc.stderr[-3000:] if proc.stderr else f"{path.name}: exit status {proc.returncode}")
        return {"title": path.stem, "error": err[-1] if err else f"exit status {proc.returncode}", "figures": {}, "conditions": cond}


def run_all(out: Path = RESULTS, repeats: int = benchlib.MIN_REPEATS, quick: bool = False, only: list | None = None,
            folder: Path = HERE, log=print) -> dict:
    "Run the benchmarks (all, or those named in `only`) and write `out`; returns what was written."
    scripts = discover(folder)
    if only:
        names = {Path(n).stem for n in only}
        unknown = names - {p.stem for p in scripts}
        if unknown: raise SystemExit(f"no benchmark named {sorted(unknown)} in {folder} (there are: {', '.join(p.stem for p in scripts)})")
        scripts = [p for p in scripts if p.stem in names]
    old = json.loads(out.read_text()) if only and out.exists() else {}
    t0, machine = time.perf_counter(), None
    benchmarks = dict(old.get("benchmarks", {}))
    for p in scripts:
        log(f"== {p.name}" + (" (quick)" if quick else ""))
        res = measure(p, repeats, quick, log)
        m = res.pop("machine", None)
        if m and (machine is None or machine.get("torch_threads") is None): machine = m  # prefer one that saw torch (GPU name)
        benchmarks[p.stem] = {**res, "script": f"benchmarks/{p.name}", "quick": quick}
        state = "skipped: " + res["skipped"] if "skipped" in res else ("ERROR: " + res["error"] if "error" in res else
                                                                       f"{len(res['figures'])} figure(s)")
        log(f"   {p.stem}: {state} ({res['conditions']['seconds']:.0f} s, load {res['conditions']['load_before']} -> "
            f"{res['conditions']['load_after']})")
    machine = {k: v for k, v in (machine or benchlib.machine()).items() if k != "torch_threads"}  # per benchmark, in its conditions
    results = {"schema": benchlib.SCHEMA, "command": "python benchmarks/run_all.py" + (" --quick" if quick else ""),
               "machine": machine, "finished": old.get("finished") if old else time.strftime("%Y-%m-%d %H:%M %Z"),
               "seconds": round(time.perf_counter() - t0, 1) if not old else old.get("seconds"),
               "benchmarks": dict(sorted(benchmarks.items()))}
    if old: results.update(updated=sorted({*old.get("updated", []), *(p.stem for p in scripts)}),
                           updated_at=time.strftime("%Y-%m-%d %H:%M %Z"))  # the whole run's finish stays as it was
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n"); tmp.replace(out)
    log(f"-> {out} ({results['seconds']} s in all)" if not old else f"-> {out} (updated {', '.join(p.stem for p in scripts)})")
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 2)[2])
    ap.add_argument("--quick", action="store_true", help="small sizes: checks that every benchmark runs")
    ap.add_argument("--repeats", type=int, default=benchlib.MIN_REPEATS, help=f"repeats per figure (default and minimum {benchlib.MIN_REPEATS})")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="measure only these benchmarks again (e.g. bench_stats)")
    ap.add_argument("--out", type=Path, default=None,
                    help="results file (default benchmarks/results.json; with --quick, one in the temporary folder)")
    ap.add_argument("--no-readme", action="store_true", help="do not regenerate README.md from the new results")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:  # inside the process run_all starts for one benchmark
        try: res = run_one(a.child, a.repeats, a.quick)
        except Exception as e:
            traceback.print_exc()
            print(f"{a.child.name}: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        a.child_out.write_text(json.dumps(res))
        return 0
    if a.repeats < benchlib.MIN_REPEATS: ap.error(f"--repeats must be at least {benchlib.MIN_REPEATS}")
    if a.out is None:  # a --quick check leaves the README's figures alone
        a.out = Path(tempfile.gettempdir())/"cxr_study-benchmarks-quick.json" if a.quick else RESULTS
    res = run_all(a.out, a.repeats, a.quick, a.only)
    if not a.no_readme and a.out.resolve() == RESULTS:
        import readme
        readme.update(log=print)
    return 1 if any("error" in b for b in res["benchmarks"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
