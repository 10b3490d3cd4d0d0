"""dvc.yaml stays exact: each stage depends on precisely the files its script runs, reads precisely the
params it declares, and stage scripts are leaves over the cifar10 library."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, stage_env

STAGES = {"download", "normalize", "train", "evaluate", "gate", "export", "preview"}

pytestmark = pytest.mark.integration


def _module_file(module: str) -> Path:
    return ROOT / (module.replace(".", "/") + ".py")


def project_imports(module: str, seen: set[str] | None = None) -> set[str]:
    """The project modules (stages.*, cifar10.*) that `module` imports, transitively, itself included."""
    seen = set() if seen is None else seen
    if module in seen:
        return seen
    seen.add(module)
    for node in ast.walk(ast.parse(_module_file(module).read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for name in names:
            if name.split(".")[0] in ("stages", "cifar10") and _module_file(name).exists():
                project_imports(name, seen)
    return seen


def _stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_each_stage_depends_on_exactly_the_files_it_runs():
    stages = _stages()
    assert set(stages) == STAGES
    for name, stage in stages.items():
        module = re.search(r"python -m (stages\.\w+)", stage["cmd"]).group(1)
        modules = project_imports(module)
        expected = {m.replace(".", "/") + ".py" for m in modules}
        if any(m.startswith("cifar10.") for m in modules):
            expected.add("cifar10/__init__.py")  # runs before any cifar10 module
        declared = {d for d in stage["deps"] if d.startswith(("stages/", "cifar10/"))}
        assert declared == expected, f"{name}: missing {expected - declared}, extra {declared - expected}"


def test_train_does_not_depend_on_the_archive_reader_nor_on_normalize():
    # Editing the archive reader or the normalize stage must not rerun 125 epochs of training unless the
    # normalized arrays themselves change.
    deps = set(_stages()["train"]["deps"])
    assert not deps & {"cifar10/archive.py", "cifar10/preprocessing.py", "stages/normalize.py"}
    assert not set(_stages()["evaluate"]["deps"]) & {"cifar10/model.py", "cifar10/normalized.py"}


def _params_read_by_code(module: str) -> set[str]:
    """The params.yaml sections a stage script reads: start_stage's `section` (a name or a tuple of names), and
    `seed` when `seeded`."""
    calls = [
        node
        for node in ast.walk(ast.parse(_module_file(module).read_text()))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "start_stage"
    ]
    assert len(calls) == 1, module
    keywords = {k.arg: ast.literal_eval(k.value) for k in calls[0].keywords}
    section = keywords["section"]
    sections = set(section) if isinstance(section, tuple) else {section}
    return sections | ({"seed"} if keywords["seeded"] else set())


def test_each_stage_reads_only_the_params_it_declares():
    for name, stage in _stages().items():
        declared = {p.split(".")[0] for p in stage.get("params", [])}
        assert _params_read_by_code(f"stages.{name}") == declared, name
    assert {name: {p.split(".")[0] for p in s["params"]} for name, s in _stages().items()} == {
        "download": {"download", "dataset"},
        "normalize": {"seed", "normalize", "dataset"},
        "train": {"seed", "train"},
        "evaluate": {"evaluate", "dataset"},
        "gate": {"gate"},
        "export": {"export"},
        "preview": {"seed", "train"},
    }


def test_stage_scripts_are_leaves():
    scripts = {p.stem for p in (ROOT / "stages").glob("*.py")}
    assert scripts == STAGES  # stages/ holds the DVC stage scripts and nothing else
    for path in [
        *(ROOT / "cifar10").glob("*.py"),
        *(ROOT / "stages").glob("*.py"),
        *(ROOT / "benchmarks").glob("*.py"),
    ]:
        imported = project_imports(".".join(path.relative_to(ROOT).with_suffix("").parts)) - {
            ".".join(path.relative_to(ROOT).with_suffix("").parts)
        }
        assert not {m for m in imported if m.startswith("stages")}, f"{path} imports a stage script"


def test_download_normalize_the_gate_and_export_never_load_tensorflow():
    # export loads Keras only when export.formats asks for a file, inside main()
    code = (
        "import sys, stages.download, stages.normalize, stages.gate, stages.export; "
        "print(sorted({m.split('.')[0] for m in sys.modules}))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=stage_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    loaded = set(ast.literal_eval(result.stdout.strip()))
    assert {"cifar10", "stages", "numpy"} <= loaded  # the check saw the real imports
    assert not loaded & {"tensorflow", "keras", "jax", "torch", "matplotlib", "dvclive"}
