"""The architecture, checked: import-linter's contracts in pyproject.toml, one name per class, and
settings built from click options only in the CLI layer.

lint-imports reads the package from disk, and the editable install finds lmpipe.bin, lmpipe.tui
and lmpipe.filters outside lib/ (pyproject's package-dir), where import-linter does not look. So
the tests lay the package out as a wheel installs it (lib/ as lmpipe/, bin/, tui/ and filters/
inside it) and run lint-imports on that copy, in a process of its own.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from layout import installed_layout

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "pyproject.toml"
FOUNDATION = {"errors", "paths", "version", "data"}  # at the top of lmpipe, for every layer
CLICK_ALLOWED = {"cli", "bin", "filters"}


def lint_imports(where: Path, config: Path = CONFIG) -> subprocess.CompletedProcess:
    """lint-imports on the copy in `where` (its folder comes first on the path, before the install)."""
    code = ("import sys; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={str(config)!r}, no_cache=True, no_logo=True))")
    return subprocess.run([sys.executable, "-c", code], cwd=where, capture_output=True, text=True, timeout=300)


def contracts() -> dict[str, dict]:
    return {c["id"]: c for c in tomllib.loads(CONFIG.read_text())["tool"]["importlinter"]["contracts"]}


def top_level() -> set[str]:
    """lmpipe's own modules and subpackages, as installed."""
    names = {p.stem for p in (ROOT / "lib").glob("*.py") if p.stem != "__init__"}
    names |= {p.name for p in (ROOT / "lib").iterdir() if p.is_dir() and p.name != "__pycache__"}
    return names | {"bin", "tui", "filters"}


def test_the_import_contracts_are_kept(tmp_path):
    installed_layout(tmp_path)
    result = lint_imports(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 3 kept, 0 broken." in result.stdout


def test_a_wrong_import_breaks_them(tmp_path):
    """The contracts can fail: an upward import, click below the CLI layer and a cycle are each caught."""
    package = installed_layout(tmp_path)
    (package / "records" / "wrong.py").write_text("import click\n\nfrom ..tasks import generate\n")
    (package / "text" / "ping.py").write_text("from . import pong\n")
    (package / "text" / "pong.py").write_text("from . import ping\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1
    assert "Contracts: 0 kept, 3 broken." in result.stdout
    assert "lmpipe.records is not allowed to import lmpipe.tasks" in result.stdout
    assert "lmpipe.records is not allowed to import click" in result.stdout
    assert "No cycles are allowed in lmpipe.text" in result.stdout


def test_every_package_has_its_place():
    """A new subpackage joins a layer (or the foundation); every one but the CLI's keeps click out."""
    layered = {name.strip() for layer in contracts()["layers"]["layers"] for name in layer.split("|")}
    assert top_level() - FOUNDATION == layered
    assert contracts()["layers"]["containers"] == ["lmpipe"]
    click = contracts()["click"]
    assert click["forbidden_modules"] == ["click"]
    assert {m.removeprefix("lmpipe.") for m in click["source_modules"]} == top_level() - CLICK_ALLOWED - {"data"}


def classes(folder: Path) -> list[tuple[str, str]]:
    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                found.append((node.name, str(path.relative_to(ROOT))))
    return found


def test_no_two_classes_share_a_name():
    seen: dict[str, list[str]] = {}
    for name, where in classes(ROOT / "lib") + classes(ROOT / "tui"):
        seen.setdefault(name, []).append(where)
    assert {name: where for name, where in seen.items() if len(where) > 1} == {}


@pytest.mark.parametrize("folder", ["lib", "tui"])
def test_options_become_settings_only_in_the_cli_layer(folder):
    """No `*_from_options` below lmpipe.cli: the tools hand the library settings, never click's dict."""
    offenders = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        if path.is_relative_to(ROOT / "lib" / "cli"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.endswith("from_options"):
                offenders.append(f"{path.relative_to(ROOT)}: {node.name}")
    assert offenders == []
