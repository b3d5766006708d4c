"""ruff and mypy, configured in pyproject.toml, find nothing; and each can fail: an error planted in a
copy is reported, as tests/test_architecture.py plants layer violations.

mypy runs on the package laid out as installed (tests/layout.py), with its cache under the test home,
so a second run reads the installed libraries' types from it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from layout import ROOT, installed_layout

CONFIG = ROOT / "pyproject.toml"
SOURCES = ("lib", "bin", "tui", "filters", "tests")
RUFF = shutil.which("ruff", path=str(Path(sys.executable).parent))


def ruff(*paths: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([RUFF, "check", "--no-cache", "--config", str(CONFIG), *map(str, paths)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def mypy(tree: Path, cache: Path, package: str = "lmpipe") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mypy", "-p", package, "--config-file", str(CONFIG),
                           "--cache-dir", str(cache), "--python-executable", sys.executable, "--no-error-summary"],
                          cwd=tree, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def cache(lmpipe_home) -> Path:
    return lmpipe_home / "mypy-cache"


@pytest.mark.skipif(RUFF is None, reason="ruff is in the test extra")
def test_ruff_finds_nothing():
    result = ruff(*SOURCES)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(RUFF is None, reason="ruff is in the test extra")
def test_ruff_reports_a_planted_error(tmp_path):
    """An unused import, imports out of order and a line past 120 characters are each caught."""
    wrong = tmp_path / "wrong.py"
    wrong.write_text("import sys\nimport os\n\nprint(os.sep, " + "1 + " * 30 + "1)\n")
    result = ruff(wrong)
    assert result.returncode == 1
    for code in ("F401", "I001", "E501"):
        assert code in result.stdout, result.stdout


def test_mypy_finds_nothing(lmpipe_home, cache):
    tree = lmpipe_home / "lint-tree"  # one place, so that the cache's entries for lmpipe stay valid
    shutil.rmtree(tree, ignore_errors=True)
    installed_layout(tree)
    result = mypy(tree, cache)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_reports_a_planted_error(tmp_path, cache):
    """A wrong assignment is caught anywhere; an unannotated function in a strict layer (records)."""
    package = installed_layout(tmp_path)
    (package / "records" / "wrong.py").write_text('count: int = "one"\n\n\ndef untyped(x):\n    return x\n')
    result = mypy(tmp_path, cache, "lmpipe.records")
    assert result.returncode == 1
    assert 'wrong.py:1: error: Incompatible types in assignment (expression has type "str", variable has type ' \
           '"int")  [assignment]' in result.stdout, result.stdout
    assert "wrong.py:4: error: Function is missing a type annotation  [no-untyped-def]" in result.stdout
