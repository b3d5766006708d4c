"""MkDocs hook: a page's `<!-- reference: lm-NAME -->` line becomes that tool's reference (synopsis,
options, fields, exit status), rendered by lmpipe.cli.manpages from the click definitions its man
page comes from, so the site never holds an option table written by hand. An unknown tool fails
the build."""

from __future__ import annotations

import re
from typing import Any

from lmpipe.cli.manpages import tool_reference

MARK = re.compile(r"^<!-- reference: (lm-[a-z0-9-]+) -->$", re.M)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    return MARK.sub(lambda found: tool_reference(found.group(1)), markdown)
