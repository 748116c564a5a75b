"""The built report as a reader sees it, in headless Chromium at 1400 px: every page carries the banner of a
synthetic study, the findings quote numbers that are in the tables they link, no reference or ablation variant
enters a Friedman, Nemenyi or rank table, every ECE lies in its interval, every table fits the page, and every
CSV the report writes parses with pandas. Uses the small study of report_study.py (references, two candidate
encoders and an ablation variant)."""
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from report_study import CANDIDATES, built_study
from site_browser import evaluate_pages

NUMBER = re.compile(r"(?<![\w.])-?\d+\.\d+")
PAGE = """() => ({
  banner: document.querySelectorAll('.cxr-banner').length,
  findings: [...document.querySelectorAll('.cxr-findings li')].map(li => ({
      text: li.innerText, links: [...li.querySelectorAll('a')].map(a => a.getAttribute('href'))})),
  tables: [...document.querySelectorAll('table')].map(t => ({width: Math.round(t.getBoundingClientRect().width),
      caption: (t.closest('.jp-OutputArea-output') || document.body).querySelector('strong, summary')?.innerText || '',
      text: t.innerText})),
  width: document.documentElement.clientWidth})"""


@pytest.fixture(scope="module")
def study(tiny_benchmark, tmp_path_factory):
    return built_study(tiny_benchmark, tmp_path_factory)


@pytest.fixture(scope="module")
def pages(study):
    return evaluate_pages(study / "report" / "html", PAGE)


def table(study, name):
    return pd.read_csv(study / "report" / "tables" / f"{name}.csv")


def test_every_page_carries_the_banner(pages):
    assert len(pages) >= 10  # ten report pages, and a page per run notebook where the runs kept one
    missing = [p for p, v in pages.items() if v["banner"] != 1]
    assert not missing, f"pages without exactly one banner: {missing}"


def _numbers_in(csvs):
    vals = []
    for df in csvs:
        for c in df.columns:
            vals += pd.to_numeric(df[c], errors="coerce").dropna().tolist()
    return np.array(vals, float)


def test_the_findings_quote_numbers_of_the_tables_they_link(study, pages):
    found = pages["index.html"]["findings"]
    assert 5 <= len(found) <= 8, [f["text"] for f in found]
    checked = 0
    for f in found:
        csvs = [pd.read_csv(study / "report" / "html" / href) for href in f["links"] if href.endswith(".csv")]
        assert csvs, f["text"]
        values = _numbers_in(csvs)
        for s in NUMBER.findall(f["text"]):
            tol = 0.5 * 10 ** -len(s.split(".")[1]) + 1e-9
            assert np.any(np.abs(values - float(s)) <= tol), f"{s} of '{f['text']}' is in none of {f['links']}"
            checked += 1
    assert checked >= 10
    text = " ".join(f["text"] for f in found)
    assert "ranked first of 2 candidate encoders" in text and "(reference) ranked" not in text
    assert "synthetic data" in text  # on synthetic data the findings say what the run cannot show


def test_no_reference_or_ablation_variant_competes(study, pages):
    cands = set(table(study, "main_results").query("role == 'candidate'").model)
    assert len(cands) == len(CANDIDATES)
    fr = table(study, "friedman")
    assert all(set(m.split(", ")) <= cands for m in fr.models.dropna())
    for name, cols in (("mean_ranks", ["model"]), ("rank_summary", ["model"]), ("nemenyi", ["a", "b"]),
                       ("paired_vs_best", ["model", "best"]), ("all_pairs", ["a", "b"])):
        t = table(study, name)
        for c in cols: assert set(t[c].dropna()) <= cands, (name, c, set(t[c].dropna()) - cands)
    shown = [t["text"] for p in ("comparisons.html", "index.html") for t in pages[p]["tables"]
             if re.search(r"Friedman|Nemenyi|rank", t["caption"])]
    assert len(shown) >= 3
    for t in shown: assert "(reference)" not in t and "@ 64 px" not in t, t[:300]
    assert "@ 64 px" in " ".join(t["text"] for t in pages["ablations.html"]["tables"])  # the variant is on its own page


def test_every_ece_lies_in_its_interval(study, pages):
    cal = table(study, "calibration")
    assert len(cal) == 4 and cal.ece.notna().all()
    assert ((cal.ece_lo <= cal.ece) & (cal.ece <= cal.ece_hi)).all(), cal[["model", "ece", "ece_lo", "ece_hi"]]
    shown = next(t["text"] for t in pages["calibration.html"]["tables"] if "ECE" in t["text"])
    head, *rows = [r.split("\t") for r in shown.strip().splitlines()]
    i, lo, hi = (head.index(h) for h in ("ECE (bias-corrected)", "ECE 95% CI low", "ECE 95% CI high"))
    assert len(rows) == 4 and all(float(r[lo]) <= float(r[i]) <= float(r[hi]) for r in rows)


def test_every_table_fits_1400_pixels(pages):
    wide = [(p, t["caption"][:60], t["width"]) for p, v in pages.items() for t in v["tables"] if t["width"] > v["width"]]
    assert not wide, wide


def test_every_csv_parses(study):
    files = sorted((study / "report").rglob("*.csv"))
    assert len(files) > 25
    for f in files:
        df = pd.read_csv(f)
        assert len(df.columns), f
        if not len(df) or df.drop(columns="reason", errors="ignore").isna().all().all():
            assert "reason" in df and df.reason.notna().all(), f"{f.name}: an empty table says why"


def test_the_report_records_each_page_s_time(study):
    import json
    t = json.loads((study / "report" / "timings.json").read_text())
    assert {"index", "comparisons", "published", "html"} <= set(t) and all(v > 0 for v in t.values())
