"The documentation site's configuration states one output folder; the CI workflows exist and run the README's commands."
import configparser
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"


def _settings() -> configparser.SectionProxy:
    cfg = configparser.ConfigParser(delimiters=["="], interpolation=None)
    cfg.read(ROOT / "settings.ini", encoding="utf-8")
    return cfg["DEFAULT"]


def _readme_test_command() -> str:
    blocks = re.findall(r"```sh\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.S)
    assert len(blocks) >= 2, blocks
    return blocks[1].strip()


def _workflow(name: str) -> dict:
    path = WORKFLOWS / name
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing"
    wf = yaml.safe_load(path.read_text())
    assert isinstance(wf, dict) and wf.get("jobs"), f"{name} has no jobs"
    return wf


def _runs(wf: dict) -> list[str]:
    return [s["run"] for job in wf["jobs"].values() for s in job.get("steps", []) if "run" in s]


def _uses(wf: dict) -> list[str]:
    return [s["uses"] for job in wf["jobs"].values() for s in job.get("steps", []) if "uses" in s]


def _triggers(wf: dict) -> dict:
    # PyYAML reads the bare key `on` as True
    on = wf.get("on", wf.get(True))
    return {k: None for k in on} if isinstance(on, list) else dict(on or {})


def test_docs_output_dir_is_stated_once_and_agrees_with_doc_path():
    doc_path = Path(_settings()["doc_path"])
    quarto = yaml.safe_load((ROOT / "_quarto.yml").read_text())
    nbdev_yml = yaml.safe_load((ROOT / "nbs" / "nbdev.yml").read_text())
    assert "nbdev.yml" in quarto.get("metadata-files", []), "_quarto.yml must merge nbs/nbdev.yml"
    # nbdev_docs writes nbs/nbdev.yml with output-dir: <doc_path's name>, renders a copy of nbs/ in _proc/
    # and moves _proc/<that name> to the repository root; Quarto merges nbdev.yml over _quarto.yml.
    assert nbdev_yml["project"]["output-dir"] == doc_path.name
    assert "output-dir" not in quarto.get("project", {}), \
        "state the output folder only in nbs/nbdev.yml (nbdev rewrites it from settings.ini's doc_path)"


def test_nbdev_yml_is_what_nbdev_writes():
    "nbdev_docs rewrites nbs/nbdev.yml from settings.ini: the committed one must already be that."
    from nbdev.quarto import _nbdev_yml
    d = _settings()
    vals = {k: d[k] for k in ["title", "description", "branch", "git_url", "doc_host", "doc_baseurl"]}
    expected = _nbdev_yml.format(doc_path=Path(d["doc_path"]).name, **vals)
    assert yaml.safe_load((ROOT / "nbs" / "nbdev.yml").read_text()) == yaml.safe_load(expected)


def test_test_workflow_runs_the_readme_test_command():
    wf = _workflow("test.yml")
    assert {"push", "pull_request"} <= set(_triggers(wf))
    assert _readme_test_command() in "\n".join(_runs(wf))
    assert any(u.startswith("actions/setup-python@") for u in _uses(wf))
    setup = [s for job in wf["jobs"].values() for s in job["steps"] if s.get("uses", "").startswith("actions/setup-python@")]
    assert str(setup[0]["with"]["python-version"]) == "3.11"
    assert "apt-get install -y -qq chromium" in "\n".join(_runs(wf))
    env = {k: str(v) for job in wf["jobs"].values() for k, v in job.get("env", {}).items()}
    assert env.get("HF_HUB_OFFLINE") == "1"


def test_site_workflow_builds_docs_and_the_demo_report_and_deploys_them():
    wf = _workflow("site.yml")
    assert _triggers(wf)["push"]["branches"] == ["main"]
    runs, uses = "\n".join(_runs(wf)), _uses(wf)
    for cmd in ["cxr-study demo --out cxr_study_demo", "nbdev_docs", "quarto render cxr_study_demo/report",
                "_docs/study-demo"]:
        assert cmd in runs, cmd
    for action in ["quarto-dev/quarto-actions/setup@v2", "actions/upload-pages-artifact@", "actions/deploy-pages@"]:
        assert any(u.startswith(action) for u in uses), action
    upload = [s for job in wf["jobs"].values() for s in job["steps"] if s.get("uses", "").startswith("actions/upload-pages-artifact@")]
    assert upload[0]["with"]["path"] == _settings()["doc_path"]
    assert {"pages": "write", "id-token": "write"}.items() <= wf["permissions"].items()


def test_ci_script_installs_chromium_before_the_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    install, cmd = ci.find("apt-get install -y -qq chromium"), ci.find(_readme_test_command())
    assert 0 <= install < cmd, "the CI script must install chromium before running the tests"
    assert "nbdev_export" in ci[cmd:]


def test_workflows_install_the_cpu_build_of_torch_and_torchvision_before_the_requirements():
    cpu = "pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu"
    for name, then in [("test.yml", _readme_test_command()), ("site.yml", 'pip install -e ".[dev]"')]:
        runs = "\n".join(_runs(_workflow(name)))
        assert 0 <= runs.find(cpu) < runs.find(then), f"{name}: torch and torchvision from the CPU index before {then!r}"
