"""The README and the docs site: a short README that starts with the two commands, a page per tool
in the nav, each with the reference its man page has, and a site that builds with --strict."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from lmpipe.cli import manpages

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BIN = Path(sys.executable).parent
SCRIPTS = sorted(name for name in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
                 if name.startswith("lm-"))


def nav_pages(entries: list) -> list[str]:
    """Every page mkdocs.yml's nav names."""
    found = []
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        found += nav_pages(value) if isinstance(value, list) else [value]
    return found


NAV = nav_pages(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"])


def test_the_readme_is_short_and_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    first = re.search(r"```\w*\n(.*?)```", text, re.S)
    assert first is not None
    commands = [line.split("#")[0].strip() for line in first.group(1).splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_tool_has_a_page_in_the_nav_with_its_reference(name):
    page = DOCS / "tools" / f"{name}.md"
    assert page.is_file(), f"{name} has no page: write docs/tools/{name}.md"
    assert f"tools/{name}.md" in NAV, f"docs/tools/{name}.md is not in mkdocs.yml's nav"
    text = page.read_text()
    assert text.startswith(f"# {name}\n")
    assert f"\n<!-- reference: {name} -->\n" in text, "the page must end with its generated reference"


def test_the_tools_table_of_the_readme_links_every_page():
    text = (ROOT / "README.md").read_text()
    assert set(re.findall(r"\(docs/tools/(lm-[a-z-]+)\.md\)", text)) == set(SCRIPTS)


def test_the_pages_check_fails_for_a_tool_without_a_page(tmp_path):
    """The check above, on a pyproject that names one tool more."""
    missing = "lm-nothing"
    assert not (DOCS / "tools" / f"{missing}.md").exists() and f"tools/{missing}.md" not in NAV
    with pytest.raises(AssertionError, match="has no page"):
        test_every_tool_has_a_page_in_the_nav_with_its_reference(missing)


@pytest.mark.parametrize("name", SCRIPTS)
def test_the_reference_shows_every_option_the_man_page_has(name):
    reference = manpages.tool_reference(name)
    options = (ROOT / "man" / f"{name}.1").read_text().split(".SH OPTIONS", 1)[1].split(".SH ", 1)[0]
    options = re.sub(r"\\f[BIRP]|\\&", "", options).replace("\\-", "-")  # roff's fonts and escapes out
    flags = set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", options))
    assert flags and not [flag for flag in flags if flag not in reference]
    assert "### Options" in reference and "### Exit status" in reference


def test_no_page_holds_a_hand_written_option_table():
    """Option tables come from the click definitions (the reference marker), not from a page."""
    for page in DOCS.rglob("*.md"):
        assert "| option | meaning |" not in page.read_text(), f"{page}: an option table written by hand"


def test_the_site_builds_strict(tmp_path):
    """`mkdocs build --strict`: a broken link or anchor, a page left out of the nav, a reference marker
    naming no tool, all fail. Offline: no plugin fetches anything."""
    done = subprocess.run([str(BIN / "mkdocs"), "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    page = (tmp_path / "site" / "tools" / "lm-generate" / "index.html").read_text()
    assert "--max-new-tokens" in page and "reference: lm-generate" not in page
    tour = (tmp_path / "site" / "tour" / "index.html").read_text()
    assert "lm-chunk" in tour and "--8&lt;--" not in tour  # the README's tour, included
