"""What every benchmark shares: the result convention, ratio figures with their spread, and the conditions
of a run (machine, load, library versions). `run_all.py` collects the results; see `benchmarks/README.md`.

A benchmark's `run(repeats=3, quick=False)` returns `result(title, command, settings, figures)`, each
figure made by `ratio_figure` (a ratio measured side by side, once per repeat) or `value_figure` (a
measured quantity, e.g. images per second on a GPU), or `skipped(title, reason)` when it cannot run here.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

SCHEMA = 1
MIN_REPEATS = 3


def cores() -> int:
    "CPU cores this process may run on."
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"): return line.split(":", 1)[1].strip()
    except OSError: pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    "The 1, 5 and 15 minute load averages (None where the system has none)."
    try: return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError): return None


def gpu_name() -> str | None:
    try:
        import torch
        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception: return None


def versions() -> dict:
    "Versions of Python and of the libraries the timings depend on."
    from importlib.metadata import PackageNotFoundError, version
    out = {"python": platform.python_version()}
    for name in ("cxr_study", "torch", "torchvision", "timm", "numpy", "scipy", "pandas", "scikit-learn", "pillow", "pydicom"):
        try: out[name] = version(name)
        except PackageNotFoundError: pass
    return out


def machine() -> dict:
    "The conditions that do not change during a run: CPU, cores, torch threads (when torch is in use), GPU, platform, library versions."
    torch = sys.modules.get("torch")  # a benchmark that does not use torch does not pay for importing it
    return {"cpu": cpu_model(), "cores": cores(), "torch_threads": torch.get_num_threads() if torch else None,
            "gpu": gpu_name() if torch else None, "platform": platform.platform(terse=True), "versions": versions()}


class CpuUse:
    """Cores' worth of CPU used while the block runs: by the whole machine (/proc/stat) and by this process with its
    waited-for children; `other_cores` is what other programs used (NaN where /proc/stat is missing)."""
    def __enter__(self):
        self.t, self.sys, self.own = time.perf_counter(), self._busy(), self._own()
        return self

    def __exit__(self, *exc):
        self.seconds = dt = time.perf_counter() - self.t
        self.own_cores = (self._own() - self.own) / dt
        self.other_cores = max(0.0, (self._busy() - self.sys) / dt - self.own_cores) if self.sys is not None else float("nan")

    @staticmethod
    def _own():
        t = os.times(); return t.user + t.system + t.children_user + t.children_system

    @staticmethod
    def _busy():
        try: v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except OSError: return None
        return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def _sig(x: float, digits: int = 6) -> float: return float(f"{x:.{digits}g}")


def summary(values: list[float]) -> dict:
    "Median, minimum and maximum of the repeats, and the repeats themselves (6 significant digits)."
    v = [float(x) for x in values]
    return {"median": _sig(statistics.median(v)), "min": _sig(min(v)), "max": _sig(max(v)), "repeats": len(v),
            "values": [_sig(x) for x in v]}


def ratio_figure(label: str, numerator: tuple[str, list[float]], denominator: tuple[str, list[float]],
                 unit: str = "x", note: str = "") -> dict:
    """A ratio measured side by side: `numerator` and `denominator` are (what, one measurement per repeat), taken in
    the same repeat of the same run; the figure is their ratio per repeat, summarised over the repeats."""
    (nl, nv), (dl, dv) = numerator, denominator
    if len(nv) != len(dv): raise ValueError(f"{label}: {len(nv)} numerator and {len(dv)} denominator measurements")
    return {"label": label, "kind": "ratio", "unit": unit, **summary([a / b for a, b in zip(nv, dv)]),
            "numerator": {"what": nl, **summary(nv)}, "denominator": {"what": dl, **summary(dv)}, "note": note}


def value_figure(label: str, values: list[float], unit: str, note: str = "") -> dict:
    "A measured quantity (not a ratio), once per repeat."
    return {"label": label, "kind": "value", "unit": unit, **summary(values), "note": note}


def result(title: str, command: str, settings: dict, figures: dict, notes: list[str] | None = None) -> dict:
    "What `run` returns: the figures with what they compare and how to measure them again."
    return {"title": title, "command": command, "settings": settings, "figures": figures, "notes": list(notes or [])}


def skipped(title: str, reason: str, command: str = "") -> dict:
    "What `run` returns when the benchmark cannot run here (e.g. no GPU), with the reason."
    return {"title": title, "command": command, "skipped": reason, "figures": {}}


def check_result(res: dict, name: str = "benchmark") -> dict:
    "Raise ValueError naming what is wrong when `res` does not follow the convention; return it unchanged."
    if not isinstance(res, dict): raise ValueError(f"{name}: run() returned {type(res).__name__}, not a dict")
    for k in ("title", "figures"):
        if k not in res: raise ValueError(f"{name}: the result has no {k!r}")
    if "skipped" in res: return res
    if not res["figures"]: raise ValueError(f"{name}: the result has no figures (return skipped(title, reason) instead)")
    for key, f in res["figures"].items():
        missing = [k for k in ("label", "kind", "unit", "median", "min", "max", "values", "repeats") if k not in f]
        if missing: raise ValueError(f"{name}: figure {key!r} lacks {missing} (make it with ratio_figure or value_figure)")
        if not f["min"] <= f["median"] <= f["max"]: raise ValueError(f"{name}: figure {key!r}: median outside its range")
    return res


def cli(run, description: str, argv=None, extra=None):
    """The command line every benchmark shares: `--repeats`, `--quick` and `--json PATH`, plus the benchmark's own
    options (`extra(parser)` adds them; they are passed to `run` as keyword arguments). Prints the figures."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=MIN_REPEATS, help=f"repeats of each measurement (default {MIN_REPEATS})")
    ap.add_argument("--quick", action="store_true", help="smaller sizes: a check that it runs, in a minute or two")
    ap.add_argument("--json", type=Path, default=None, help="also write the result, with the conditions, as JSON here")
    if extra: extra(ap)
    a = vars(ap.parse_args(argv))
    out_path = a.pop("json")
    load_before = load_average()
    res = run(**a)
    res = {**res, "conditions": {**machine(), "load_before": load_before, "load_after": load_average(),
                                 "date": time.strftime("%Y-%m-%d %H:%M %Z")}}
    print(format_result(res))
    if out_path:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(res, indent=1) + "\n")
        print(f"-> {out_path}")
    return res


def format_result(res: dict) -> str:
    "A few lines of text: each figure with its median and range."
    lines = [res["title"]]
    if "skipped" in res: return "\n".join(lines + [f"  skipped: {res['skipped']}"])
    for f in res["figures"].values():
        lines.append(f"  {f['label']}: {f['median']:.3g} {f['unit']} (range {f['min']:.3g}-{f['max']:.3g}, {f['repeats']} repeats)")
        for part in ("numerator", "denominator"):
            if part in f: lines.append(f"      {part}: {f[part]['what']}: median {f[part]['median']:.4g}")
    lines += [f"  note: {n}" for n in res.get("notes", [])]
    c = res.get("conditions")
    if c: lines.append(f"  conditions: {c['cpu']}, {c['cores']} cores, {c['torch_threads']} torch threads, GPU {c['gpu'] or 'none'}; "
                       f"load average before {c['load_before']}, after {c['load_after']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit("benchlib is a helper module: run benchmarks/run_all.py or one bench_*.py")
