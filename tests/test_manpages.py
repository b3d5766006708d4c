"""Man pages: one per lm-* tool, none missing an option that --help shows, and the generator itself."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from lmpipe.cli import manpages

ROOT = Path(__file__).resolve().parent.parent
TOOLS = manpages.tools()


def help_options(command: click.Command, name: str) -> set[str]:
    """Every -x / --long flag in the Options part of the tool's --help."""
    text = CliRunner().invoke(command, ["--help"], prog_name=name).output
    options = text.split("Options:", 1)[1]
    return set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", options)) & {
        flag for line in options.splitlines() if line.startswith("  -")
        for flag in re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", line.split("  ")[1] if "  " in line else line)}


def plain(roff: str) -> str:
    """The page's words: font changes and escapes out."""
    return re.sub(r"\\f[BIRP]|\\&", "", roff).replace("\\-", "-").replace("\\e", "\\")


def page_text(name: str) -> str:
    return plain((ROOT / "man" / f"{name}.1").read_text())


def test_the_pyproject_tools_are_found():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(TOOLS) == {name for name in scripts if name.startswith("lm-")}
    assert {"lm-generate", "lm-tokenize", "lm-cache-ls", "lm-cache-rm", "lm-pull", "lm-model-info"} <= set(TOOLS)


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_every_tool_has_a_man_page(name):
    assert (ROOT / "man" / f"{name}.1").is_file(), f"no man/{name}.1: run `make man`"


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_every_option_in_help_is_in_the_man_page(name):
    command = TOOLS[name].load()
    flags = help_options(command, name)
    assert "--help" in flags and len(flags) > 2
    text = page_text(name)
    missing = sorted(flag for flag in flags if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text))
    assert not missing, f"man/{name}.1 lacks {missing}: run `make man`"


def test_drift_is_caught(tmp_path):
    """The check above fails for a page made before an option was added."""
    @click.command()
    @click.option("--old", help="Was there.")
    def before(**_): """Do a thing."""

    @click.command()
    @click.option("--old", help="Was there.")
    @click.option("--new-thing", help="Added later.")
    def after(**_): """Do a thing."""

    import types
    page = plain(manpages.render("lm-x", before, types.ModuleType("m"), []))
    assert "--old" in page
    assert "--new-thing" in help_options(after, "lm-x") and "--new-thing" not in page


def test_sections_fields_examples_and_escapes():
    import types

    @click.command()
    @click.argument("prompt", required=False)
    @click.option("-m", "--model", default="smollm2", show_default=True, envvar="LMPIPE_MODEL", help="The `model`.")
    def command(**_):
        """Say things about a model.

        Second paragraph.

        \b
          echo hi | lm-x --model m
          .starts-with-a-dot
        """

    module = types.ModuleType("m", "lm-x: say things.")
    module.FIELDS_READ = {"text": "The input."}
    module.FIELDS_WRITTEN = {"said": "What was said."}
    page = manpages.render("lm-x", command, module, ["lm-y"])
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "FIELDS", "EXIT STATUS", "EXAMPLES", "SEE ALSO"):
        assert f"\n.SH {section}\n" in page
    assert "lm\\-x \\- say things\n" in page
    assert "\\fB\\-m, \\-\\-model TEXT\\fR\nThe \\fBmodel\\fR.  [default: smollm2] [env: LMPIPE_MODEL]" in page
    assert ".SS Read\n.TP\n\\fBtext\\fR\nThe input." in page and "\\fBsaid\\fR\nWhat was said." in page
    assert "echo hi | lm\\-x \\-\\-model m\n\\&.starts\\-with\\-a\\-dot\n" in page
    assert "\\fB130\\fR" in page and ".BR lm\\-y (1)" in page


def test_generated_pages_are_current(tmp_path):
    """`make man` output equals what is committed (for the tools this checkout has)."""
    written = manpages.write_all(tmp_path)
    assert sorted(p.name for p in written) == sorted(p.name for p in (ROOT / "man").glob("lm-*.1"))
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {p.stem for p in written} == {name for name in scripts if name.startswith("lm-")}
    for path in written:
        assert path.read_text() == (ROOT / "man" / path.name).read_text(), f"{path.name} is stale: run `make man`"


@pytest.mark.skipif(shutil.which("man") is None, reason="no man command here")
def test_man_renders_the_page():
    done = subprocess.run(["man", "-l", str(ROOT / "man" / "lm-generate.1")], capture_output=True, text=True,
                          env={"MANWIDTH": "100", "PATH": "/usr/bin:/bin", "MANPAGER": "cat", "PAGER": "cat"})
    assert done.returncode == 0, done.stderr
    text = re.sub(r".\x08", "", done.stdout)
    for heading in ("NAME", "SYNOPSIS", "OPTIONS", "FIELDS", "EXIT STATUS", "EXAMPLES", "SEE ALSO"):
        assert f"\n{heading}\n" in text
    assert "--max-new-tokens" in text and "lm-generate - generate text" in text


def test_installing_puts_the_pages_where_man_looks():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    assert data["share/man/man1"] == ["man/*.1"]
