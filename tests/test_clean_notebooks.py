"Executed notebooks are written as nbdev_clean leaves them: copy_report's copy is a fixed point of nbdev_clean, on real papermill output."
import shutil
from pathlib import Path

import pytest

from cxr_study.reports.report import copy_report

ROOT = Path(__file__).resolve().parents[1]
EXECUTED = sorted((ROOT / "nbs" / "study").rglob("*.ipynb"))  # papermill's output, as the demo wrote it


@pytest.mark.skipif(not EXECUTED, reason="no executed report in nbs/study")
def test_copy_report_writes_what_nbdev_clean_would_leave(tmp_path, monkeypatch):
    from nbdev.clean import nbdev_clean
    monkeypatch.chdir(ROOT)  # nbdev_clean reads this project's settings.ini
    report = tmp_path / "report"
    for p in EXECUTED:
        (report / p.relative_to(ROOT / "nbs" / "study")).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, report / p.relative_to(ROOT / "nbs" / "study"))
    dest = copy_report(report, tmp_path / "site" / "study")
    copied = sorted(dest.rglob("*.ipynb"))
    assert len(copied) == len(EXECUTED)
    ours = {p: p.read_bytes() for p in copied}
    raw = tmp_path / "raw"; shutil.copytree(report, raw)  # the executed notebooks, cleaned by nbdev itself
    for p in copied:
        nbdev_clean(fname=str(p))
        assert p.read_bytes() == ours[p], f"nbdev_clean changed {p.relative_to(dest)}"
        r = raw / p.relative_to(dest)
        nbdev_clean(fname=str(r))
        assert r.read_bytes() == ours[p], f"{p.relative_to(dest)} differs from what nbdev_clean makes of the executed notebook"
        assert (p.parent / ".notest").exists()
    assert b'"papermill"' not in b"".join(ours.values()) and b'"execution_count": null' in b"".join(ours.values())
