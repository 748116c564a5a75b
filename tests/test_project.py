"Project-level contracts: the README's two commands, the site configuration, the experiment templates."
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)\n```", readme, flags=re.S)
    assert len(blocks) == 2, blocks
    assert blocks[0].strip().endswith("cxr-study demo")
    assert blocks[1].strip().endswith("nbdev_test && pytest")
    assert blocks[1].strip() in (ROOT / ".ci" / "run").read_text()


def test_readme_is_generated_from_the_index_notebook():
    nb = json.loads((ROOT / "nbs" / "index.ipynb").read_text())
    readme = (ROOT / "README.md").read_text()
    for cell in nb["cells"]:
        src = "".join(cell["source"])
        if src.startswith(("#| hide", "#| echo: false")): continue  # echo: false cells show their output (tests/test_benchmarks.py)
        assert src in readme, src[:80]


def test_site_configuration_is_one_file_and_its_pages_exist():
    link = ROOT / "nbs" / "_quarto.yml"
    assert link.is_symlink() and link.resolve() == (ROOT / "_quarto.yml").resolve()
    cfg = yaml.safe_load((ROOT / "_quarto.yml").read_text())
    pages = []
    def walk(x):
        if isinstance(x, str): pages.append(x)
        elif isinstance(x, list): [walk(i) for i in x]
        elif isinstance(x, dict):
            for k in ("contents", "href"): 
                if k in x: walk(x[k])
    walk(cfg["website"]["sidebar"]["contents"]); walk(cfg["website"]["navbar"]["left"])
    assert pages
    for p in pages:
        assert list((ROOT / "nbs").glob(p)), f"_quarto.yml lists {p}, which does not exist under nbs/"
    for f in cfg.get("metadata-files", []): assert (ROOT / "nbs" / f).exists()


def test_experiment_templates_have_one_tagged_parameters_cell():
    for nb_path in (ROOT / "nbs" / "experiments").glob("*.ipynb"):
        nb = json.loads(nb_path.read_text())
        tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, nb_path
        assert {"encoder", "task", "protocol", "folds", "seed", "data_dir", "out_dir"} <= set(re.findall(r"^(\w+)(?::[^=]+)? =", "".join(tagged[0]["source"]), flags=re.M))


def test_experiment_template_runs_under_papermill(tiny_benchmark, tmp_path):
    import papermill as pm
    from cxr_study.study.runner import experiment_template, is_complete
    out_nb = tmp_path / "executed.ipynb"
    pm.execute_notebook(str(experiment_template()), str(out_nb), kernel_name="python3", progress_bar=False,
                        parameters=dict(encoder="raw-pixels", task="heart-seg", folds=[0], data_dir=str(tiny_benchmark),
                                        out_dir=str(tmp_path / "out"), options={"probe": {"lr": 0.05, "max_epochs": 5}}))
    assert is_complete(tmp_path / "out", "raw-pixels", "heart-seg", "linear-probe")
    executed = json.loads(out_nb.read_text())
    assert any(o.get("output_type") == "display_data" for c in executed["cells"] for o in c.get("outputs", []))
