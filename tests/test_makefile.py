"""The Makefile's targets: `make demo` installs what lmpipe needs to run and nothing of the test harness;
`make test` and `make docs` add their extras on top."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
# What only the suite or the docs site needs: none of it may come with `make demo`.
HARNESS = {"pytest", "lm-eval", "llm", "openai", "pexpect", "import-linter", "mkdocs", "mkdocs-material", "ruff",
           "mypy"}

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="no make here")


def planned(target: str, tmp_path: Path) -> list[str]:
    """The commands `make TARGET` runs on a fresh clone (a .venv that does not exist yet)."""
    done = subprocess.run(["make", "-n", target, f"VENV={tmp_path / 'venv'}"], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    return done.stdout.splitlines()


def pip_installs(commands: list[str]) -> list[str]:
    return [c.split("pip install", 1)[1] for c in commands if "pip install" in c]


@needs_make
def test_demo_installs_lmpipe_without_an_extra(tmp_path):
    installs = pip_installs(planned("demo", tmp_path))
    assert any(re.search(r"-e \.$", i) for i in installs), installs
    assert not any("[" in i for i in installs), f"make demo installs an extra: {installs}"


@needs_make
@pytest.mark.parametrize("target, extra", [("test", "test"), ("docs", "docs")])
def test_test_and_docs_add_their_extra(tmp_path, target, extra):
    installs = pip_installs(planned(target, tmp_path))
    assert any(f"-e '.[{extra}]'" in i for i in installs), installs
    assert any(re.search(r"-e \.$", i) for i in installs)  # what demo installs, first


def test_the_suite_can_build_the_docs():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "lmpipe[docs]" in extras["test"]
    assert {canonicalize_name(Requirement(r).name) for r in extras["docs"]} >= {"mkdocs", "mkdocs-material"}


def closure(requirements: list[str]) -> set[str]:
    """Every distribution these requirements pull in, as installed here (markers evaluated, no extras)."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen or (req.marker and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        try:
            todo += [Requirement(r) for r in distribution(name).requires or []]
        except PackageNotFoundError:
            pass  # an optional dependency of a dependency that this machine does not have
    return seen


def test_lmpipes_own_dependencies_pull_in_no_test_package():
    """`pip list` after `make demo` has no lm_eval, llm or pytest: nothing lmpipe itself depends on brings them."""
    base = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pulled = closure(base)
    assert "torch" in pulled and "transformers" in pulled
    assert not pulled & HARNESS, sorted(pulled & HARNESS)
