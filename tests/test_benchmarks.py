"""The benchmark figures the README states: benchmarks/results.json follows its convention, every benchmark has an
entry, README.md is what nbs/index.ipynb gives and its numbers are those of results.json; run_all on stand-in
benchmarks. No speed is asserted here (a timing threshold in a test fails on a busy machine and passes on a fast
one): the figures live in results.json, with the conditions they were measured under. About 3 s."""
import ast
import json
import re
import statistics
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT/"benchmarks"
sys.path.insert(0, str(BENCH))
import benchlib  # noqa: E402
import readme  # noqa: E402
import run_all  # noqa: E402

RESULTS = json.loads((BENCH/"results.json").read_text())
README = (ROOT/"README.md").read_text()
NOTEBOOK = json.loads((ROOT/"nbs"/"index.ipynb").read_text())


def _figures():
    return [(name, key, f) for name, b in RESULTS["benchmarks"].items() for key, f in b["figures"].items()]


def test_results_follow_the_convention():
    m = RESULTS["machine"]
    assert RESULTS["schema"] == benchlib.SCHEMA and RESULTS["command"] == "python benchmarks/run_all.py"  # not --quick
    assert m["cpu"] and m["cores"] >= 1 and {"python", "torch", "numpy"} <= set(m["versions"]) and "gpu" in m
    for name, b in RESULTS["benchmarks"].items():
        c = b["conditions"]
        assert not b.get("quick"), f"{name}: measured with --quick"
        assert "error" not in b, f"{name} failed: {b.get('error')}"
        for k in ("load_before", "load_after"): assert len(c[k]) == 3 and all(v >= 0 for v in c[k]), (name, k)
        assert c["other_cores"] >= 0 and c["seconds"] > 0 and c["started"], name
        if "skipped" in b: assert b["skipped"].strip() and not b["figures"], name; continue
        assert b["figures"] and b["command"].startswith(f"python {b['script']}"), name
    assert _figures(), "no figures at all"
    for name, key, f in _figures():
        v = f["values"]
        assert f["repeats"] == len(v) >= benchlib.MIN_REPEATS, (name, key)
        assert (f["min"], f["max"]) == (min(v), max(v)) and f["median"] == pytest.approx(statistics.median(v), rel=1e-5, abs=1e-4), (name, key)
        if f["kind"] == "ratio":  # each repeat's ratio is that repeat's two measurements divided (as stored: rounded)
            for r, a, b in zip(v, f["numerator"]["values"], f["denominator"]["values"]):
                e = 5e-5 + 1e-5 * max(a, b)  # the rounding of the stored seconds: 4 decimals, or 6 significant digits
                assert (a - e) / (b + e) * (1 - 1e-5) <= r <= (a + e) / (b - e) * (1 + 1e-5), (name, key, r, a, b)


def _defines_run(path: Path) -> bool:
    return any(isinstance(n, ast.FunctionDef) and n.name == "run" for n in ast.parse(path.read_text()).body)


def test_every_benchmark_has_an_entry():
    scripts = run_all.discover()
    assert {p.stem for p in scripts} >= {"bench_seg_probe_cache", "bench_extraction", "bench_stats", "bench_indexing", "gpu_finetune"}
    missing = [p.stem for p in scripts if p.stem not in RESULTS["benchmarks"]]
    assert not missing, f"no figures for {missing}: run `python benchmarks/run_all.py --only {' '.join(missing)}`"
    stale = sorted(set(RESULTS["benchmarks"]) - {p.stem for p in scripts})
    assert not stale, f"results.json has entries for benchmarks that no longer exist: {stale}"
    for p in scripts:  # a benchmark given its run() since the last measurement is measured again
        if _defines_run(p): assert "has no run(" not in RESULTS["benchmarks"][p.stem].get("skipped", ""), p.name


def test_readme_is_what_the_home_notebook_gives():
    assert README == readme.readme_from_notebook(NOTEBOOK), "run `python benchmarks/readme.py`"
    cell = readme._performance_cell(NOTEBOOK)
    assert cell["outputs"] == readme.markdown_output(readme.performance_markdown(RESULTS)), "run `python benchmarks/readme.py`"


def _section() -> str:
    s = README[README.index("\n## Performance\n"):]
    return s[:s.index("\n## ", 1)]


def test_readme_numbers_are_those_of_results():
    "Read back from the README's table, independently of the renderer: each figure's median and range, conditions and command."
    rows = [r for r in _section().splitlines() if r.startswith("| `")]
    assert len(rows) == len(_figures())
    num = r"([0-9][0-9,]*(?:\.[0-9]+)?)"
    for name, key, f in _figures():
        row = next((r for r in rows if f"| {f['label']} |" in r), None)
        assert row, f"{name} {key}: no row in the README"
        med = re.search(r"\| \*\*" + num, row).group(1)
        lo, hi = re.search(r"\*\* \| " + num + "-" + num, row).groups()
        for text, value in ((med, f["median"]), (lo, f["min"]), (hi, f["max"])):
            decimals = len(text.split(".")[1]) if "." in text else 0
            assert float(text.replace(",", "")) == pytest.approx(value, abs=0.5 * 10 ** -decimals + 1e-9), (name, key, text, value)
        c = RESULTS["benchmarks"][name]["conditions"]
        assert f"load {c['load_before'][0]:.1f} before, {c['load_after'][0]:.1f} after" in row, (name, key)
        assert f"`{RESULTS['benchmarks'][name]['command']}`" in row, (name, key)
    for b in RESULTS["benchmarks"].values():
        if "skipped" in b: assert b["skipped"] in _section()


STAND_INS = {
    "bench_ok.py": '''import benchlib
def run(repeats=3, quick=False):
    return benchlib.result("stand-in", "python bench_ok.py", {"n": 1},
                           {"main": benchlib.ratio_figure("old / new", ("old (s)", [2.0, 6.0, 3.0][:repeats]), ("new (s)", [1.0, 2.0, 1.0][:repeats]))})
''',
    "bench_later.py": "X = 1  # no run() yet\n",
    "bench_broken.py": "def run(repeats=3, quick=False):\n    raise RuntimeError('a broken stand-in')\n",
    "gpu_none.py": '''import benchlib
def run(repeats=3, quick=False): return benchlib.skipped("needs a GPU", "no CUDA GPU here")
''',
}


def test_run_all_on_stand_ins(tmp_path):
    for name, text in STAND_INS.items(): (tmp_path/name).write_text(text)
    (tmp_path/"helper.py").write_text("raise SystemExit('not a benchmark: never run')\n")
    res = run_all.run_all(tmp_path/"results.json", folder=tmp_path, log=lambda *a: None)
    assert res == json.loads((tmp_path/"results.json").read_text())
    b = res["benchmarks"]
    assert sorted(b) == ["bench_broken", "bench_later", "bench_ok", "gpu_none"]
    f = b["bench_ok"]["figures"]["main"]
    assert (f["values"], f["median"], f["min"], f["max"]) == ([2.0, 3.0, 3.0], 3.0, 2.0, 3.0)
    assert b["gpu_none"]["skipped"] == "no CUDA GPU here" and "has no run(" in b["bench_later"]["skipped"]
    assert "a broken stand-in" in b["bench_broken"]["error"]
    for x in b.values(): assert {"load_before", "load_after", "other_cores", "seconds"} <= set(x["conditions"])
    # measuring one again keeps the others
    (tmp_path/"bench_later.py").write_text(STAND_INS["gpu_none.py"])
    again = run_all.run_all(tmp_path/"results.json", folder=tmp_path, only=["bench_later"], log=lambda *a: None)
    assert again["benchmarks"]["bench_later"]["skipped"] == "no CUDA GPU here" and again["benchmarks"]["bench_ok"] == b["bench_ok"]
    md = readme.performance_markdown(again)
    assert "| **3.00x** | 2.00-3.00x | 3 |" in md and "failed: " in md and "no CUDA GPU here" in md
    with pytest.raises(ValueError, match="median outside"):
        benchlib.check_result({"title": "t", "figures": {"x": {**f, "median": 9.0}}})


MULTI = '''import os, benchlib
INVOCATIONS = 3
def run(repeats=3, quick=False):
    here = os.path.dirname(os.path.abspath(__file__))  # the i-th process leaves a mark beside this file, and gives figures of its own
    i = sum(p.startswith("invocation-") for p in os.listdir(here)); open(os.path.join(here, f"invocation-{i}"), "w").close()
    return benchlib.result("several processes", "python bench_multi.py", {}, {
        "r": benchlib.ratio_figure("old / new", ("old (s)", [2.0 * (i + 1)] * repeats), ("new (s)", [1.0] * repeats)),
        "v": benchlib.value_figure("images per second", [10.0 + i] * repeats, "img/s")}, [f"process {i}"])
'''


def test_run_all_measures_noisy_figures_in_several_processes(tmp_path):
    "A benchmark with INVOCATIONS = 3 runs in 3 processes; each figure spans the repeats of all of them."
    (tmp_path/"bench_multi.py").write_text(MULTI)
    res = run_all.run_all(tmp_path/"results.json", repeats=3, folder=tmp_path, log=lambda *a: None)
    assert run_all.invocations(tmp_path/"bench_multi.py") == 3 and run_all.invocations(BENCH/"bench_stats.py") == 1
    b = res["benchmarks"]["bench_multi"]
    assert b["conditions"]["invocations"] == 3 and sorted(b["notes"]) == ["process 0", "process 1", "process 2"]
    r, v = b["figures"]["r"], b["figures"]["v"]
    per = len(r["values"]) // 3
    assert per >= 2 and r["repeats"] == 3 * per and r["invocations"] == 3  # at least the repeats asked for, more than one per process
    assert sorted(set(r["values"])) == [2.0, 4.0, 6.0] and (r["min"], r["median"], r["max"]) == (2.0, 4.0, 6.0)
    assert r["invocation_medians"] == [2.0, 4.0, 6.0] and v["invocation_medians"] == [10.0, 11.0, 12.0]
    assert r["numerator"]["values"] == [2.0] * per + [4.0] * per + [6.0] * per
    md = readme.performance_markdown(res)
    assert f"| {3 * per} in 3 processes |" in md and "measured in 3 separate processes" in md
    assert "separate processes" not in readme.performance_markdown(RESULTS) or any(
        f.get("invocations", 1) > 1 for _, _, f in _figures())  # the sentence only where a figure was measured so
