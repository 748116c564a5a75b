"""The shape of the package, read from its source: modules import only their own layer or the layers
below (and never in a cycle), package imports sit at the top of each module, and no function is
over 60 lines (but the one deferred import: the command line's parser loads the command bodies only once a command line
is parsed, so `--help` needs no torch). The layers, lowest first, are the house's order of dependence."""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "cxr_study"
LAYERS = [  # a module may import its own layer and those above it in this list, never one below
    ["cxr_study", "core", "declarations"],  # the names and defaults the command line shows, without torch or pandas
    ["metrics", "results"],
    ["data"],
    ["encoders"],
    ["features"],
    ["heads"],
    ["train"],
    ["stats"],
    # the upper floor, in two wings (WINGS below): the study's (how runs are made) and the reports' (what is read from them)
    ["study", "study.options"],  # the run's options, below the protocols that read them
    ["study.protocols", "study.runner", "study.label_efficiency"],
    ["study.studyfile", "study.plan", "study.executors"],
    ["reports", "reports.summary"],  # the summary tables, below the report that shows them
    ["reports.report", "reports.curves", "reports.site"],
    ["reports.ablations", "reports.overlays"],
    ["cli", "commands"],  # the parser, and the command bodies it loads once a command line is parsed
]
TOP = ("cli", "commands")  # what runs both wings
# the one import of the package inside a function: `cli.main` loads the command bodies after parsing (`importlib.import_module`)
DEFERRED = [("cxr_study.cli", "cxr_study.commands")]
# The two wings of the upper floor: neither imports the other; what the reports know of a run they read from the run store
# (`results`) or from the lower floors below, never from the modules that made it.
WINGS = {"study": ["study"], "reports": ["reports"]}
# what the reports' wing may import besides its own modules: the run store and the floors that know no model code
# (and the encoder registry, for an encoder's name and tags; never an encoder, its features or a head)
REPORTS_READ = ["cxr_study", "core", "metrics", "results", "data", "encoders.registry", "stats"]
MAX_LINES = 60


def _modules() -> dict:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        if p.name == "_modidx.py": continue
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__": parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _resolve(name: str) -> str:
    "The package module an import names (a name imported from a package may be a submodule)."
    while name and name not in MODULES: name = name.rpartition(".")[0]
    return name


def _deferred(n) -> str | None:
    "The package module an `importlib.import_module(\"cxr_study...\")` (or `__import__`) call loads, else None."
    f = n.func if isinstance(n, ast.Call) else None
    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
    if name not in ("import_module", "__import__") or not n.args or not isinstance(n.args[0], ast.Constant): return None
    target = str(n.args[0].value)
    return _resolve(target) if target.split(".")[0] == "cxr_study" else None


def _imports(mod: str, path: Path):
    "(module imported, line, inside a function: True, or \"deferred\" for an `import_module` call) for every import of the package's own modules."
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    inner = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(f)}
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom):
            if n.level:
                base = pkg.split(".")[:len(pkg.split(".")) - (n.level - 1)]
                root = ".".join(base + ([n.module] if n.module else []))
            elif (n.module or "").split(".")[0] == "cxr_study": root = n.module
            else: continue
            targets = {_resolve(f"{root}.{a.name}") if f"{root}.{a.name}" in MODULES else _resolve(root) for a in n.names}
        elif isinstance(n, ast.Import):
            targets = {_resolve(a.name) for a in n.names if a.name.split(".")[0] == "cxr_study"}
        elif _deferred(n):
            if _deferred(n) != mod: yield _deferred(n), n.lineno, "deferred" if id(n) in inner else False
            continue
        else: continue
        for t in targets - {mod, ""}: yield t, n.lineno, id(n) in inner


def _short(mod: str) -> str: return mod.split(".", 1)[1] if "." in mod else mod


def _in(mod: str, names) -> bool:
    "A module is one of `names` when its name is one or starts with one (a package)."
    short = _short(mod)
    return any(short == n or short.startswith(n + ".") for n in names)


def _layer(mod: str) -> int:
    best = [(len(n), i) for i, names in enumerate(LAYERS) for n in names if _in(mod, [n])]
    if best: return max(best)[1]
    raise AssertionError(f"{mod}: not in any layer; add it to LAYERS in {Path(__file__).name}")


def _wing(mod: str) -> str | None:
    return next((w for w, names in WINGS.items() if _in(mod, names)), None)


def test_every_module_has_a_layer():
    for m in MODULES: _layer(m)


def test_every_upper_module_is_in_a_wing():
    "Everything above the statistics (but the command line, which runs both) belongs to the study's wing or the reports'."
    top = next(i for i, names in enumerate(LAYERS) if "stats" in names)
    loose = [m for m in MODULES if _layer(m) > top and _wing(m) is None and _short(m) not in TOP]
    assert not loose, "not in a wing (add to WINGS): " + ", ".join(loose)


def test_the_wings_do_not_import_each_other():
    bad = [f"{m}:{line} imports {t} ({_wing(m)} wing imports the {_wing(t)} wing)" for m, p in MODULES.items()
           for t, line, _ in _imports(m, p) if _wing(m) and _wing(t) and _wing(m) != _wing(t)]
    assert not bad, "\n".join(bad)


def test_the_reports_read_runs_only_through_the_run_store():
    "The reports' wing imports its own modules, the run store and the floors without model code, never an encoder, features or a head."
    bad = [f"{m}:{line} imports {t}" for m, p in MODULES.items() if _wing(m) == "reports"
           for t, line, _ in _imports(m, p) if _wing(t) != "reports" and not (_in(t, REPORTS_READ) or t == "cxr_study")]
    assert not bad, "\n".join(bad)


def test_no_module_imports_a_layer_above_its_own():
    bad = [f"{m}:{line} imports {t} (layer {_layer(t)} > {_layer(m)})" for m, p in MODULES.items()
           for t, line, _ in _imports(m, p) if _layer(t) > _layer(m)]
    assert not bad, "\n".join(bad)


def test_the_import_graph_has_no_cycle():
    graph = {m: {t for t, _, inner in _imports(m, p) if t != "cxr_study" and inner != "deferred"} for m, p in MODULES.items()}
    state, path = {}, []
    def visit(m):
        state[m] = "open"; path.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == "open": raise AssertionError("import cycle: " + " -> ".join(path[path.index(t):] + [t]))
            if t not in state: visit(t)
        state[m] = "done"; path.pop()
    for m in sorted(graph):
        if m not in state: visit(m)


def test_package_imports_are_at_the_top_of_each_module():
    "Every import of the package's own modules is at the top of its module, but the deferred ones of `DEFERRED`, each once."
    inside = [(m, t, line, inner) for m, p in MODULES.items() for t, line, inner in _imports(m, p) if inner]
    bad = [f"{m}:{line} imports {t} inside a function" for m, t, line, inner in inside if not (inner == "deferred" and (m, t) in DEFERRED)]
    assert not bad, "\n".join(bad)
    assert sorted((m, t) for m, t, _, _ in inside) == sorted(DEFERRED), "each deferred import once: " + repr(inside)


def test_a_module_level_import_module_is_not_deferred(tmp_path):
    "An `import_module` call at a module's top is an ordinary import (and so in the layer and cycle checks); in a function, deferred."
    p = tmp_path / "probe.py"; p.write_text('import importlib\nX = importlib.import_module("cxr_study.core")\n'
                                            'def f(): return importlib.import_module("cxr_study.commands")\n')
    MODULES["cxr_study.probe"] = p
    try: assert sorted(_imports("cxr_study.probe", p)) == [("cxr_study.commands", 3, "deferred"), ("cxr_study.core", 2, False)]
    finally: del MODULES["cxr_study.probe"]


def test_no_function_is_over_60_lines():
    long = []
    for m, p in MODULES.items():
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > MAX_LINES:
                long.append(f"{m}.{n.name}: {n.end_lineno - n.lineno + 1} lines ({p.name}:{n.lineno})")
    assert not long, "\n".join(long)


@pytest.mark.parametrize("mod, layer, wing", [
    ("cxr_study.core", ["cxr_study", "core", "declarations"], None),
    ("cxr_study.commands", ["cli", "commands"], None),
    ("cxr_study.study.options", ["study", "study.options"], "study"),
    ("cxr_study.study.runner", ["study.protocols", "study.runner", "study.label_efficiency"], "study"),
    ("cxr_study.reports.curves", ["reports.report", "reports.curves", "reports.site"], "reports"),
    ("cxr_study.data.readers", ["data"], None),
])
def test_layers_and_wings_are_read_from_module_names(mod, layer, wing):
    "A module's layer is the most specific entry naming it or its package, and its wing likewise."
    assert LAYERS[_layer(mod)] == layer and _wing(mod) == wing


@pytest.mark.parametrize("source, expected", [
    ("from cxr_study.study.runner import run_experiment", {"cxr_study.study.runner"}),
    ("from . import core", {"cxr_study.core"}),
    ("from .data.preprocess import load_masks", {"cxr_study.data.preprocess"}),
    ("def f():\n    import cxr_study.reports.report\n", {"cxr_study.reports.report"}),
    ("import importlib\ndef f():\n    return importlib.import_module('cxr_study.study.runner')\n", {"cxr_study.study.runner"}),
    ("from importlib import import_module\ndef f():\n    return import_module('cxr_study.reports.report')\n", {"cxr_study.reports.report"}),
])
def test_the_checks_read_every_form_of_import(tmp_path, source, expected):
    "The reader of imports sees absolute, relative and in-function imports (so the checks above can fail)."
    p = tmp_path / "probe.py"; p.write_text(source)
    MODULES["cxr_study.probe"] = p
    try: assert {t for t, _, _ in _imports("cxr_study.probe", p)} == expected
    finally: del MODULES["cxr_study.probe"]
