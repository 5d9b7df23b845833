"""One direction of dependencies: every module belongs to a layer, and no module imports a higher one.

    core  <-  format  <-  ingestion, analysis  <-  training  <-  top (CLI, figures)

A module may import its own layer and the layers below it; ingestion and analysis are peers that
never import each other. Every import counts, function-local and ``TYPE_CHECKING`` ones too, and
so does a string that is a module's full name (what ``importlib.import_module`` is given): the point
is that a lower layer never reaches a higher one, not only at import time. A module missing from
``LAYERS`` fails the test.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# folder -> the import name it is installed under (pyproject.toml's package-dir), and figures' scripts
PACKAGES = {"filterdb": "filterdb", "analysis": "filterdb.analysis", "training": "filterdb.training",
            "figures": "figures"}

# Model libraries: only ingestion (to extract), training and the top load them; reading a database never does.
MODEL_LIBRARIES = {"torch", "torchvision", "robustbench", "timm", "autoattack", "pyautoattack"}
NO_MODEL_LIBRARIES = {"core", "format", "analysis"}

RANK = {"core": 0, "format": 1, "ingestion": 2, "analysis": 2, "training": 3, "top": 4}
PEERS = {("ingestion", "analysis"), ("analysis", "ingestion")}
# The package's public face: `filterdb.add_module` / `filterdb.add_state_dict` are attributes that
# `filterdb.__getattr__` imports on first use, so `import filterdb` stays light; nothing else goes up.
PUBLIC_FACE = {("filterdb", "filterdb.own_models")}
# Within a layer, two directions are still wrong: a source importing the build that consumes sources,
# and a module of the package importing the package root (its public face is for users; the version
# every file records is filterdb.versions.TOOL_VERSION).
CONSUMERS_OF_SOURCES = {"filterdb.build", "filterdb.dask_build"}

# module -> layer; "pkg.*" covers a package's modules.
LAYERS = {
    # core: what every layer shares (no numerics beyond numpy)
    "filterdb.errors": "core",
    "filterdb.paths": "core",
    "filterdb.atomic": "core",
    "filterdb.ids": "core",
    "filterdb.progress": "core",
    "filterdb.output": "core",
    "filterdb.workers": "core",
    "filterdb.eps": "core",
    "filterdb.versions": "core",
    # format: the database files, their tables, their readers and writers (h5py, numpy, pandas)
    "filterdb": "format",
    "filterdb.schema": "format",
    "filterdb.h5table": "format",
    "filterdb.integrity": "format",
    "filterdb.npy_records": "format",
    "filterdb.lock": "format",
    "filterdb.shards": "format",
    "filterdb.master": "format",
    "filterdb.layout": "format",
    "filterdb.strays": "format",
    "filterdb.reading": "format",
    "filterdb.directory": "format",
    "filterdb.reader": "format",
    "filterdb.writer": "format",
    "filterdb.store": "format",
    "filterdb.model_pairs": "format",
    "filterdb.evaluation_files": "format",
    "filterdb.packed": "format",
    "filterdb.summary": "format",
    # ingestion: models in, filters out (torch)
    "filterdb.admission": "ingestion",
    "filterdb.compat": "ingestion",
    "filterdb.extract": "ingestion",
    "filterdb.records": "ingestion",
    "filterdb.outcomes": "ingestion",
    "filterdb.build": "ingestion",
    "filterdb.dask_build": "ingestion",
    "filterdb.data.refresh_robustbench": "ingestion",
    "filterdb.sources": "ingestion",
    "filterdb.sources.base": "ingestion",
    "filterdb.sources.pretrained": "ingestion",
    "filterdb.sources.robustbench": "ingestion",
    "filterdb.sources.cnn_filter_db": "ingestion",
    "filterdb.sources.direct_io": "ingestion",
    "filterdb.sources.pandas_hdf": "ingestion",
    "filterdb.sources.state_dict": "ingestion",
    "filterdb.sources.onnx_model": "ingestion",
    "filterdb.sources.trusted": "ingestion",
    # analysis: metrics and comparisons of what the database holds
    "filterdb.analysis": "analysis",
    "filterdb.analysis.basis": "analysis",
    "filterdb.analysis.blas": "analysis",
    "filterdb.analysis.cache": "analysis",
    "filterdb.analysis.compare": "analysis",
    "filterdb.analysis.metrics_table": "analysis",
    "filterdb.analysis.divergence": "analysis",
    "filterdb.analysis.filter_plots": "analysis",
    "filterdb.analysis.groups": "analysis",
    "filterdb.analysis.kept_draws": "analysis",
    "filterdb.analysis.layer_sums": "analysis",
    "filterdb.analysis.metrics": "analysis",
    "filterdb.analysis.projection_kernels": "analysis",
    "filterdb.analysis.subset_sums": "analysis",
    "filterdb.analysis.rendering": "analysis",
    "filterdb.analysis.report": "analysis",
    "filterdb.analysis.stats": "analysis",
    # training: models, methods, attacks, evaluation
    "filterdb.training": "training",
    "filterdb.training.attacks": "training",
    "filterdb.training.attack_specs": "training",
    "filterdb.training.autoattack": "training",
    "filterdb.training.checkpoint": "training",
    "filterdb.training.checkpoint_source": "training",
    "filterdb.training.curriculum": "training",
    "filterdb.training.data": "training",
    "filterdb.training.demo": "training",
    "filterdb.training.ddp": "training",
    "filterdb.training.evaluation": "training",
    "filterdb.training.evaluation_config": "training",
    "filterdb.training.methods": "training",
    "filterdb.training.pair_training": "training",
    "filterdb.training.perturbation": "training",
    "filterdb.training.precision": "training",
    "filterdb.training.registry": "training",
    "filterdb.training.spatial": "training",
    "filterdb.training.trainer": "training",
    "filterdb.training.models": "training",
    "filterdb.training.models.*": "training",
    # top: the command line and the figures
    "filterdb.entry": "top",
    "filterdb.own_models": "top",
    "filterdb.cli": "top",
    "filterdb.cli.*": "top",
    "figures.*": "top",
}


def module_files() -> dict[str, Path]:
    """Import name -> file of every module of the package folders and figures/."""
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def layer_of(module: str) -> str | None:
    if module in LAYERS:
        return LAYERS[module]
    package = module
    while "." in package:
        package = package.rsplit(".", 1)[0]
        if f"{package}.*" in LAYERS:
            return LAYERS[f"{package}.*"]
    return None


def imported_modules(module: str, path: Path, known: set[str]) -> set[str]:
    """Every project module that ``path`` imports, wherever in the file the import stands."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def add(name: str) -> None:
        while name and name not in known:  # `import filterdb.x.y` of a name inside a module: its module
            name = name.rpartition(".")[0]
        if name:
            found.add(name)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(_script_module(alias.name, module) or alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            base = _script_module(base, module) or base
            for alias in node.names:  # `from filterdb import paths` imports the module filterdb.paths
                add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value:
            if node.value in known:
                add(node.value)  # a module named for importlib (a registry of source modules, say)
    found.discard(module)
    return found


def third_party_imports(path: Path) -> set[str]:
    """The top-level names of every package ``path`` imports (function-local imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and node.value.split(".")[0] in MODEL_LIBRARIES and node.value.isidentifier()):
            names.add(node.value)  # importlib.import_module("torch")
    return names


def _script_module(name: str, importer: str) -> str | None:
    """figures/ scripts import their siblings (``import _style``) by the script folder on sys.path."""
    if importer.startswith("figures.") and name and (ROOT / "figures" / f"{name.split('.')[0]}.py").is_file():
        return f"figures.{name}"
    return None


def allowed(importer: str, imported: str) -> bool:
    if importer == imported:
        return True
    if (importer, imported) in PEERS:
        return False
    return RANK[imported] <= RANK[importer]


def back_edges() -> list[str]:
    files = module_files()
    known = set(files)
    problems = []
    for module, path in sorted(files.items()):
        for target in sorted(imported_modules(module, path, known)):
            a, b = layer_of(module), layer_of(target)
            if a is not None and b is not None and not allowed(a, b) and (module, target) not in PUBLIC_FACE:
                problems.append(f"{module} ({a}) imports {target} ({b})")
    return problems


def test_every_module_has_a_layer():
    missing = sorted(m for m in module_files() if layer_of(m) is None)
    assert not missing, ("modules without a layer (add each to LAYERS in tests/test_import_layers.py): "
                         + ", ".join(missing))


def test_no_module_imports_a_higher_layer():
    problems = back_edges()
    assert not problems, "imports against the layers:\n  " + "\n  ".join(problems)


def test_reading_layers_never_load_a_model_library():
    problems = [f"{module} ({layer_of(module)}) imports {', '.join(sorted(found))}"
                for module, path in sorted(module_files().items())
                if layer_of(module) in NO_MODEL_LIBRARIES and (found := third_party_imports(path) & MODEL_LIBRARIES)]
    assert not problems, "model libraries below ingestion:\n  " + "\n  ".join(problems)


def test_sources_never_import_the_build_that_consumes_them():
    files = module_files()
    problems = [f"{module} imports {', '.join(sorted(found))}" for module, path in sorted(files.items())
                if module.startswith("filterdb.sources")
                and (found := imported_modules(module, path, set(files)) & CONSUMERS_OF_SOURCES)]
    assert not problems, "sources importing their consumer:\n  " + "\n  ".join(problems)


def test_no_module_of_the_package_imports_its_root():
    files = module_files()
    problems = [module for module, path in sorted(files.items())
                if module.startswith("filterdb.") and "filterdb" in imported_modules(module, path, set(files))]
    assert not problems, "modules importing the package root 'filterdb' (import the module itself):\n  " + \
        "\n  ".join(problems)


@pytest.mark.parametrize("importer, imported, ok", [
    ("format", "core", True), ("format", "ingestion", False), ("ingestion", "analysis", False),
    ("analysis", "ingestion", False), ("analysis", "training", False), ("training", "ingestion", True),
    ("training", "analysis", True), ("top", "training", True), ("core", "format", False),
])
def test_layer_rule(importer, imported, ok):
    assert allowed(importer, imported) is ok


def test_scan_sees_function_local_and_relative_imports(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text("from .sibling import x\n\ndef f():\n    from filterdb.store import FilterDB\n"
                      "    import importlib\n    return importlib.import_module('filterdb.build')\n")
    known = {"filterdb.store", "filterdb.build", "filterdb.sources.sibling", "filterdb.sources.mod"}
    assert imported_modules("filterdb.sources.mod", source, known) == {
        "filterdb.store", "filterdb.build", "filterdb.sources.sibling"}
