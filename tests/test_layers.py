"""The layers point one way (README, Layout): each package imports only from the packages below it, and nothing
outside tests/ imports tests/. Read from the source with ast, so a new cross import fails here, not in review."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Each package may import the ones listed (and itself); first-party packages not listed are forbidden.
ALLOWED = {
    "phototag": set(),
    "handler": {"phototag"},
    "client": {"phototag"},
    "training": {"phototag", "client"},
    "serving": {"phototag", "client"},
    "loadtests": {"phototag", "client", "training", "handler", "serving"},
}
FIRST_PARTY = set(ALLOWED) | {"tests"}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & FIRST_PARTY


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_the_layers_below_it(package):
    wrong = {}
    for path in sorted((REPO / package).rglob("*.py")):
        forbidden = imported_packages(path) - ALLOWED[package] - {package}
        if forbidden:
            wrong[str(path.relative_to(REPO))] = sorted(forbidden)
    assert not wrong, f"imports against the layering: {wrong}"


def test_the_checker_sees_a_cross_import(tmp_path):
    module = tmp_path / "bad.py"
    module.write_text("import os\nfrom training.synth import render\nfrom tests import conftest\nfrom . import x\n")
    assert imported_packages(module) == {"training", "tests"}
