"""dvc.yaml stays exact: each stage depends on precisely the project modules its script imports."""

from __future__ import annotations

import ast
import re

import yaml

from tests.conftest import ROOT


def project_imports(module: str, seen: set[str] | None = None) -> set[str]:
    """The `stages.*` modules that `module` imports, transitively, itself included."""
    seen = set() if seen is None else seen
    if module in seen:
        return seen
    seen.add(module)
    tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for name in names:
            if name.startswith("stages.") and (ROOT / (name.replace(".", "/") + ".py")).exists():
                project_imports(name, seen)
    return seen


def test_each_stage_depends_on_exactly_the_modules_it_imports():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert set(stages) == {"download", "normalize", "train", "evaluate", "preview"}
    for name, stage in stages.items():
        module = re.search(r"python -m (stages\.\w+)", stage["cmd"]).group(1)
        expected = {m.replace(".", "/") + ".py" for m in project_imports(module)}
        declared = {d for d in stage["deps"] if d.startswith("stages/")}
        assert declared == expected, f"{name}: missing {expected - declared}, extra {declared - expected}"


def test_each_stage_reads_only_its_params_and_the_seed():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    sections = {name: {p.split(".")[0] for p in stage.get("params", [])} for name, stage in stages.items()}
    assert sections == {
        "download": {"download"},
        "normalize": {"seed", "normalize"},
        "train": {"seed", "train"},
        "evaluate": {"evaluate"},
        "preview": {"seed", "train"},
    }
