"The rendered report site in a real browser: every page loads offline without console errors, images decode, links resolve."
from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest

from site_browser import CHROMIUM, INSTALL_HINT, browse_site, require_chromium

RUN = "runs/resnet18/heart-seg/linear-probe/experiment.ipynb"


def _png() -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1, 2], [0, 1, 4])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _figure_cell(src: str):
    from nbformat.v4 import new_code_cell, new_output
    return new_code_cell(src, execution_count=1, outputs=[new_output(
        "display_data", data={"image/png": base64.b64encode(_png()).decode(), "text/plain": "<Figure>"})])


def tiny_report(study: Path):
    "A study folder with a three-page report (tables, figures, a math cell) and two nested run notebooks."
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output
    report = study / "report"
    (report / "tables").mkdir(parents=True)
    (report / "figures").mkdir()
    (report / "tables" / "main.csv").write_text("model,dice\nresnet18,0.9\n")
    (report / "figures" / "summary.png").write_bytes(_png())
    run2 = "runs/vit-s16/pneumothorax-cls/linear-probe/experiment.ipynb"
    nbformat.write(new_notebook(cells=[
        new_markdown_cell("# Overview\n\nPages: [cohorts](cohorts.ipynb), [results](results.ipynb#Summary). "
                          f"Runs: [one]({RUN}), [two]({run2}#Folds). Table: [main](tables/main.csv). "
                          "Math: $\\mathrm{AUROC} = \\int_0^1 \\mathrm{TPR}\\, d\\mathrm{FPR}$.\n\n"
                          '<img src="figures/summary.png" alt="summary" width="300">\n\n![summary](figures/summary.png)'),
        new_code_cell("#| echo: false\nprint('ok')", execution_count=1,
                      outputs=[new_output("stream", name="stdout", text="ok\n")])]), report / "index.ipynb")
    nbformat.write(new_notebook(cells=[new_markdown_cell("# Cohorts\n\nBack to [the overview](index.ipynb)."),
                                       _figure_cell("plot()")]), report / "cohorts.ipynb")
    nbformat.write(new_notebook(cells=[
        new_markdown_cell("# Results\n\n## Summary\n\n[The table](tables/main.csv), [a run](" + RUN + ")."),
        new_code_cell("df", execution_count=2, outputs=[new_output("execute_result", execution_count=2, data={
            "text/html": "<table><tr><th>model</th><td>0.9</td></tr></table>", "text/plain": "df"})])]),
        report / "results.ipynb")
    for i, run in enumerate([RUN, run2]):
        where = report if i == 0 else study  # one copied into the report, one only in the study folder
        (where / run).parent.mkdir(parents=True)
        nbformat.write(new_notebook(cells=[
            new_markdown_cell("# Experiment\n\n## Folds\n\n[Report](../../../../index.ipynb), "
                              "[table](../../../../tables/main.csv)"),
            _figure_cell("fig = plot_run(run)")]), where / run)
    pages = [("index.ipynb", "Overview"), ("cohorts.ipynb", "Cohorts"), ("results.ipynb", "Results")]
    return report, pages, [(RUN, "resnet18 / heart-seg / linear-probe"), (run2, "vit-s16 / pneumothorax-cls / linear-probe")]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    from cxr_study.reports.site import render_html
    report, pages, runs = tiny_report(tmp_path_factory.mktemp("study"))
    return render_html(report, pages, runs)


def test_chromium_is_installed():
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: {INSTALL_HINT}"
    assert require_chromium() == Path(CHROMIUM)
    with pytest.raises(RuntimeError, match="apt-get install -y chromium"): require_chromium("/nonexistent/chromium")


def test_site_passes_the_static_checks(site):
    from cxr_study.reports.site import check_site
    assert check_site(site) == []
    assert (site / "runs/vit-s16/pneumothorax-cls/linear-probe/experiment.html").is_file()


def test_every_page_loads_in_a_browser(site):
    assert browse_site(site) == []


def test_browser_check_reports_problems(site, tmp_path):
    "The check is not vacuous: a CDN script, a broken image, dead links and a script error are each reported."
    import shutil
    bad = tmp_path / "html"
    shutil.copytree(site, bad)
    page = bad / "cohorts.html"
    page.write_text(page.read_text().replace(
        "</body>", '<script src="https://cdn.example.org/x.js"></script><img src="figures/nope.png">'
                   '<a href="gone.html">gone</a><a href="results.html#no-such-section">s</a>'
                   '<script>undefinedFunction()</script></body>'))
    problems = "\n".join(browse_site(bad))
    for expected in ["cdn.example.org", "figures/nope.png", "gone.html", "no-such-section", "undefinedFunction"]:
        assert expected in problems, problems
    assert "cohorts.html" in problems and "index.html:" not in problems
