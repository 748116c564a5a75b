"""Untrusted checkpoints: a file that carries a pickle with code is refused, and the code does not run (the
marker file its payload would create is never there), whether it is given as encoder weights (in Python or on
the command line) or planted as a fine-tuning checkpoint. And the package's own source never loads a pickle
that could run code: every `torch.load` is weights-only, `trust_remote_code` is never switched on, and no other
unpickling reader (pickle, numpy's allow_pickle, yaml.load, torch.hub) is used."""
from __future__ import annotations

import ast
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import cxr_study
from cxr_study.core import CxrStudyError
from cxr_study.encoders.weights import load_checkpoint
from cxr_study.train.finetune import load_training_checkpoint, resume_state

pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol")


def _payloads(marker: Path):
    "Objects whose unpickling would create `marker`: through os.system, subprocess, exec and a plain method."
    class System:
        def __reduce__(self): return (os.system, (f"touch {marker}",))
    class Popen:
        def __reduce__(self): return (subprocess.Popen, (["touch", str(marker)],))
    class Exec:
        def __reduce__(self): return (exec, (f"open({str(marker)!r}, 'w').close()",))
    class Touch:
        def __reduce__(self): return (Path.touch, (marker,))
    return {"os.system": System(), "subprocess.Popen": Popen(), "builtins.exec": Exec(), "pathlib.Path.touch": Touch()}


def _hostile_files(d: Path, marker: Path) -> dict:
    "Checkpoints as an attacker would ship them: torch.save'd (zip), and bare pickles of protocol 2 and 4."
    files = {}
    for name, obj in _payloads(marker).items():
        sd = {"teacher": {"w": torch.zeros(2)}, "extra": obj}  # weights beside the payload, as a real release would look
        torch.save(sd, d / f"{name}.pth"); files[f"{name} (torch.save)"] = d / f"{name}.pth"
        for proto in (2, 4):
            (d / f"{name}.p{proto}.pt").write_bytes(pickle.dumps(sd, protocol=proto)); files[f"{name} (pickle {proto})"] = d / f"{name}.p{proto}.pt"
    return files


def test_pickles_with_code_are_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "payload-ran"
    files = _hostile_files(tmp_path, marker)
    for what, f in files.items():
        with pytest.raises(CxrStudyError) as e: load_checkpoint(f, key="teacher")
        msg = str(e.value)
        assert str(f) in msg, msg
        if "torch.save" in what:  # the format torch writes: the refused global is named
            assert "refused" in msg and what.split(" ")[0].split(".")[-1] in msg, msg
        else: assert "weights-only" in msg or "refused" in msg, msg
        assert not marker.exists(), f"{what}: the payload ran"
    # the same files planted as a fine-tuning checkpoint: refused (torch.save'd) or not used (others), never run
    for what, f in files.items():
        ck = tmp_path / "ckpt" / what.replace(" ", "_"); ck.mkdir(parents=True)
        (ck / "last.pt").write_bytes(f.read_bytes())
        if "torch.save" in what:
            with pytest.raises(CxrStudyError, match="refused"): load_training_checkpoint(ck / "last.pt")
        else:  # a bare pickle: refused when its first foreign object is named, else not readable weights-only: never resumed from
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                try: r, refused = resume_state(ck), None
                except CxrStudyError as e: r, refused = None, str(e)
            said = refused or " ".join(str(x.message) for x in w)
            assert r is None and str(ck / "last.pt") in said and ("refused" in said or "damaged checkpoint" in said), said
        assert not marker.exists(), f"{what}: the payload ran"


def test_hostile_weights_on_the_command_line(tiny_benchmark, tmp_path):
    "`cxr-study run --pretrained hostile.pth`: a clear error, exit status 2, and the payload never ran."
    marker = tmp_path / "payload-ran"
    f = _hostile_files(tmp_path, marker)["os.system (torch.save)"]
    r = subprocess.run([sys.executable, "-m", "cxr_study.cli", "run", "--encoder", "resnet18", "--task", "cardiomegaly-cls",
                        "--data", str(tiny_benchmark), "--out", str(tmp_path / "out"), "--folds", "0", "--pretrained", str(f)],
                       capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "CXR_STUDY_PROGRESS": "0"}, timeout=600)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "refused" in r.stderr and "posix.system" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not marker.exists()


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            yield node, owner, name


def test_package_never_unpickles_code():
    "Every module of the package, read as code: weights-only torch.load, no trust_remote_code, no other unpickling reader."
    bad, loads, files = [], [], sorted(Path(cxr_study.__file__).parent.rglob("*.py"))
    assert len(files) > 20
    for py in files:
        tree = ast.parse(py.read_text())
        for node, owner, name in _calls(tree):
            kw = {k.arg: k.value for k in node.keywords}
            where = f"{py.relative_to(py.parents[1])}:{node.lineno}"
            if owner == "torch" and name == "load":
                loads.append(py.relative_to(Path(cxr_study.__file__).parent).as_posix())
                v = kw.get("weights_only")
                if not (isinstance(v, ast.Constant) and v.value is True): bad.append(f"{where}: torch.load without weights_only=True")
            if "trust_remote_code" in kw and not (isinstance(kw["trust_remote_code"], ast.Constant) and kw["trust_remote_code"].value is False):
                bad.append(f"{where}: trust_remote_code is not False")
            if "allow_pickle" in kw and not (isinstance(kw["allow_pickle"], ast.Constant) and kw["allow_pickle"].value is False):
                bad.append(f"{where}: allow_pickle")
            if owner in ("pickle", "dill", "joblib", "cloudpickle") and name in ("load", "loads"): bad.append(f"{where}: {owner}.{name}")
            if owner == "yaml" and name in ("load", "unsafe_load", "full_load"): bad.append(f"{where}: yaml.{name}")
        for node in ast.walk(tree):  # torch.hub (it runs a repository's hubconf.py); trust_remote_code set through a dict
            if isinstance(node, ast.Attribute) and node.attr == "hub" and isinstance(node.value, ast.Name) and node.value.id == "torch":
                bad.append(f"{py.name}:{node.lineno}: torch.hub")
            if isinstance(node, ast.Dict):
                for k, v in zip(node.keys, node.values):
                    if isinstance(k, ast.Constant) and k.value == "trust_remote_code" and not (isinstance(v, ast.Constant) and v.value is False):
                        bad.append(f"{py.name}:{node.lineno}: trust_remote_code in a dict")
    # the scan sees the one torch.load of the package: the weights-only reader that released weights and
    # fine-tuning checkpoints both go through (`encoders.weights.torch_load_weights_only`)
    assert loads == ["encoders/weights.py"], loads
    assert bad == [], bad
