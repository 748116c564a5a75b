"""The command line's parser is light: `cxr-study --help` and every command's `--help` build the parser from declarations
alone, without torch, pandas, scipy, pyarrow, scikit-learn or any model library; and what that parser offers is what the
full registries implement (the protocols, the dataset adapters, the tasks, the run options, the label policies).
No timing here: the speed is measured in benchmarks/bench_cli_help.py."""
import json
import subprocess
import sys
from dataclasses import fields

import pytest

HEAVY = ("torch", "pandas", "scipy", "pyarrow", "sklearn", "timm", "transformers", "open_clip", "cxr_study.commands")

PROBE = r"""
import contextlib, io, json, sys
from cxr_study.cli import build_parser
p = build_parser()
sub = p._subparsers._group_actions[0].choices
helps = {}
for cmd in ["", *sub]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit): p.parse_args([cmd, "--help"] if cmd else ["--help"])
    helps[cmd] = buf.getvalue()
choices = {cmd: {a.dest: list(a.choices) for a in sp._actions if a.choices is not None} for cmd, sp in sub.items()}
flags = {cmd: sorted(o for a in sp._actions for o in a.option_strings) for cmd, sp in sub.items()}
print(json.dumps({"modules": sorted(m for m in sys.modules if m.split(".")[0] in HEAVY or m in HEAVY),
                  "helps": helps, "choices": choices, "flags": flags}))
"""


@pytest.fixture(scope="module")
def light():
    "The parser built and every help printed in a fresh process: the modules it loaded, the helps, choices and flags."
    code = f"HEAVY = {HEAVY!r}\n" + PROBE
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


def test_help_loads_no_heavy_library(light):
    assert light["modules"] == [], f"building the parser and printing every help loaded {light['modules']}"
    assert set(light["helps"]) == {"", "demo", "synthetic", "prepare", "plan", "grid", "run", "run-cell", "report", "summarise", "encoders"}
    for cmd, text in light["helps"].items(): assert text.startswith(f"usage: cxr-study {cmd}".rstrip()), cmd


def test_protocol_choices_are_the_registry(light):
    from cxr_study.study.protocols import PROTOCOLS, get_protocol, protocol_names
    for cmd, dest in (("run", "protocol"), ("grid", "protocols"), ("plan", "protocols")):
        assert light["choices"][cmd][dest] == protocol_names(), cmd
    assert all(not get_protocol(n).reference for n in light["choices"]["run"]["protocol"])
    assert [n for n, p in PROTOCOLS.items() if not p.reference] == light["choices"]["grid"]["protocols"]


def test_dataset_choices_are_the_registered_adapters(light):
    from cxr_study.data.prepare import ADAPTERS
    assert light["choices"]["prepare"]["dataset"] == sorted(ADAPTERS)
    for name, a in ADAPTERS.items(): assert "".join(a.description.split()) in "".join(light["helps"]["prepare"].split()), name  # argparse wraps at hyphens too


def test_task_choices_are_the_cohort_builder_s_tasks(light):
    from cxr_study.data.cohorts import get_task
    for cmd, dest in (("run", "task"), ("grid", "tasks"), ("demo", "tasks")):
        names = light["choices"][cmd][dest]
        assert len(names) == 4 and [get_task(n).name for n in names] == names, cmd


def test_every_run_option_has_its_flag(light):
    from cxr_study.study.options import RunOptions
    want = {f"--{f.name.replace('_', '-')}" for f in fields(RunOptions)}
    for cmd in ("run", "grid", "plan"): assert want <= set(light["flags"][cmd]), (cmd, want - set(light["flags"][cmd]))


def test_label_policy_and_mask_choices_are_what_the_readers_accept(light):
    "Each choice the `prepare` flags offer is one the label mapper, the index and the mask loader accept."
    import pandas as pd
    from cxr_study.data.adapters import map_observation
    from cxr_study.data.index import INDEX_COLUMNS
    c = light["choices"]["prepare"]
    s = pd.Series(["1", "0", "-1", ""])
    for u in c["uncertain"]:
        for b in c["blank"]: map_observation(s, "f.csv", "c", uncertain=u, blank=b)
    assert {u: map_observation(s, "f.csv", "c", uncertain=u)[0].iloc[2] for u in c["uncertain"]} == pytest.approx(
        {"zeros": 0.0, "ones": 1.0, "ignore": float("nan")}, nan_ok=True)
    assert all(f"{t}_mask" in INDEX_COLUMNS for t in c["mask_target"])
    from cxr_study.study.options import RunOptions
    for rule in light["choices"]["run"]["mask_resize"]: RunOptions(mask_resize=rule).check()


def test_the_command_bodies_keep_their_addresses_and_exit_codes(tmp_path):
    import cxr_study.cli as cli
    assert cli.cmd_prepare.__module__ == cli.study_from_args.__module__ == "cxr_study.commands"
    with pytest.raises(AttributeError): cli.no_such_command
    r = subprocess.run([sys.executable, "-m", "cxr_study.cli", "report", "--out", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "no complete runs" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "cxr_study.cli", "run", "--task", "nope"], capture_output=True, text=True)
    assert r.returncode == 2 and "invalid choice: 'nope'" in r.stderr, r.stderr
