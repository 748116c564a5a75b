"Study-file paths expand `~` and `$VAR` as a shell would; an unset variable is an error naming the file, the key and the variable."
import pytest

from cxr_study.core import CxrStudyError
from cxr_study.study.studyfile import expand_study, load_study

STUDY = """name: paths
data: {data}
out: {out}
encoders: [prior]
tasks: [pneumothorax-cls]
protocols: [linear-probe]
folds: [0]
"""


def test_home_and_variables_are_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CXR_DATA", str(tmp_path / "scratch"))
    f = tmp_path / "s.yaml"
    f.write_text(STUDY.format(data="$CXR_DATA/prepared", out="~/studies/paths"))
    cfg = load_study(f)
    assert cfg.data["pneumothorax-cls"] == str(tmp_path / "scratch" / "prepared")
    assert cfg.out == str(tmp_path / "home" / "studies" / "paths")
    spec = expand_study(cfg)[0]
    assert spec.data_dir == str(tmp_path / "scratch" / "prepared") and str(spec.out_dir).startswith(str(tmp_path / "home"))
    f.write_text(STUDY.format(data="{pneumothorax-cls: '${CXR_DATA}/siim'}", out="out"))
    assert load_study(f).data["pneumothorax-cls"] == str(tmp_path / "scratch" / "siim")


def test_an_unset_variable_names_the_file_the_key_and_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("CXR_NOT_SET", raising=False)
    f = tmp_path / "s.yaml"
    f.write_text(STUDY.format(data="$CXR_NOT_SET/prepared", out="out"))
    with pytest.raises(CxrStudyError, match=r"s\.yaml: data\.pneumothorax-cls: '\$CXR_NOT_SET/prepared' uses \$CXR_NOT_SET, which is not set"):
        load_study(f)
