"""How long `cxr-study --help` takes, and how much memory, beside `python -c "import torch"`, measured side by side in
one run.

The command line builds its parser from declarations alone and loads the command bodies (torch, pandas, the encoders)
only once a command is parsed, so `--help` of the command and of each subcommand answers without importing torch.
Each repeat runs, in a fresh process each and in alternating order, `cxr-study --help`, `cxr-study grid --help` (the
largest parser: the study flags and every run option) and `python -c "import torch"`; each process's wall time and
peak resident memory (`wait4`'s rusage) are recorded. One untimed run of each first fills the file cache.

Usage: python benchmarks/bench_cli_help.py [--repeats 3] [--quick] [--json PATH]
"""
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchlib, beside this file
import benchlib  # noqa: E402


def cli_command() -> list[str]:
    "The installed `cxr-study` script of this Python environment (else `python -m cxr_study.cli`)."
    script = Path(sys.executable).parent/"cxr-study"
    return [str(script)] if script.exists() else [sys.executable, "-m", "cxr_study.cli"]


def measure(cmd: list[str]) -> tuple[float, float]:
    "Wall seconds and peak resident memory (MB) of one process running `cmd`; it must exit with status 0."
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    seconds = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    err = p.stderr.read().decode(errors="replace"); p.stderr.close()
    if p.returncode != 0: raise RuntimeError(f"{' '.join(cmd)} exited with {p.returncode}: {err[-500:]}")
    return seconds, usage.ru_maxrss / 1024  # kB on Linux


def run(repeats: int = 3, quick: bool = False) -> dict:
    "Each command in a fresh process, `repeats` times in alternating order, after one untimed run of each."
    cli = cli_command()
    arms = {"help": [*cli, "--help"], "grid": [*cli, "grid", "--help"], "torch": [sys.executable, "-c", "import torch"]}
    for cmd in arms.values(): measure(cmd)
    t = {k: [] for k in arms}; mb = {k: [] for k in arms}
    for r in range(repeats):
        for k in (list(arms) if r % 2 == 0 else list(arms)[::-1]):
            s, m = measure(arms[k]); t[k].append(s); mb[k].append(m)
        print(f"  repeat {r + 1}: " + ", ".join(f"{k} {t[k][-1]:.2f} s {mb[k][-1]:.0f} MB" for k in arms), flush=True)
    name = "cxr-study" if len(cli) == 1 else "python -m cxr_study.cli"
    figures = {
        "help_vs_torch": benchlib.ratio_figure(f'Wall time: python -c "import torch" / {name} --help',
                                               ("import torch (s)", t["torch"]), (f"{name} --help (s)", t["help"])),
        "grid_help_vs_torch": benchlib.ratio_figure(f'Wall time: python -c "import torch" / {name} grid --help',
                                                    ("import torch (s)", t["torch"]), (f"{name} grid --help (s)", t["grid"])),
        "help_memory_vs_torch": benchlib.ratio_figure(f'Peak memory: python -c "import torch" / {name} grid --help',
                                                      ("import torch (MB)", mb["torch"]), (f"{name} grid --help (MB)", mb["grid"])),
        "help_seconds": benchlib.value_figure(f"{name} --help: wall time", t["help"], "s"),
        "grid_help_seconds": benchlib.value_figure(f"{name} grid --help: wall time", t["grid"], "s"),
    }
    return benchlib.result("Command line: --help without torch", f"python benchmarks/bench_cli_help.py --repeats {repeats}",
                           {"commands": [f"{name} --help", f"{name} grid --help", 'python -c "import torch"']}, figures)


if __name__ == "__main__":
    benchlib.cli(run, __doc__)
