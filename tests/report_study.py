"""A small study with references, two candidate encoders and a common-resolution ablation, and its built
report, shared by the report-page tests.

Built once per test session: the prior and raw pixels (references), ResNet-18 and ViT-S/16 (candidate
encoders) on cardiomegaly classification and heart segmentation over two folds, and ResNet-18 again at
64 px (`resnet18@64`, an ablation variant), masks scored at 64 px, then `build_report` with the HTML site."""
from cxr_study.cli import DEMO_PROBE

PROBE = {**DEMO_PROBE, "max_epochs": 10}
TASKS = ["cardiomegaly-cls", "heart-seg"]
FOLDS = [0, 1]
CANDIDATES = ["resnet18", "vit-small-patch16-224"]
REFERENCES = ["prior", "raw-pixels"]
_BUILT = {}


def built_study(data_dir, tmp_path_factory):
    "The study folder, its runs complete and its report built (made on the first call of the session)."
    if "out" not in _BUILT:
        from cxr_study.study.executors import run_grid
        from cxr_study.reports.report import build_report
        out = tmp_path_factory.mktemp("report_study")
        for encoders, options in (([*REFERENCES, *CANDIDATES], {"probe": PROBE, "mask_size": 64}),
                                  (["resnet18"], {"probe": PROBE, "mask_size": 64, "input_size": 64})):
            st = run_grid(encoders, TASKS, data_dir, out, folds=FOLDS, executor="inline", options=options, show_progress=False)
            assert set(st.status) == {"done"}, st
        build_report(out, html=True, n_boot=300, n_perm=300, show_progress=False)
        _BUILT["out"] = out
    return _BUILT["out"]
