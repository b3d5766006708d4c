"""The package laid out as a wheel installs it: lib/ as lmpipe/, with bin/, tui/ and filters/ inside.

The editable install finds lmpipe.bin, lmpipe.tui and lmpipe.filters outside lib/ (pyproject's
package-dir), where import-linter and mypy do not look; both run on this copy instead. Used by
tests/test_architecture.py, tests/test_lint.py and `make lint` (`python tests/layout.py DIR`).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("bin", "tui", "filters")


def installed_layout(into: Path) -> Path:
    """A copy of the package as it is installed, in `into`: lmpipe/ with bin/, tui/ and filters/ inside."""
    package = into / "lmpipe"
    shutil.copytree(ROOT / "lib", package, ignore=shutil.ignore_patterns("__pycache__"))
    for sub in PARTS:
        shutil.copytree(ROOT / sub, package / sub, ignore=shutil.ignore_patterns("__pycache__"))
    return package


if __name__ == "__main__":
    where = Path(sys.argv[1])
    shutil.rmtree(where / "lmpipe", ignore_errors=True)
    where.mkdir(parents=True, exist_ok=True)
    installed_layout(where)
