"""The docs' runnable examples: found, run, and their output's shape compared with what the page shows.

A `console` or `sh` block is runnable when the line just before its fence is `<!-- runnable -->`
(an HTML comment: MkDocs and GitHub show nothing). Each block runs in a fresh folder, with no
stdin but the one its commands give themselves:

- `console`: each `$ ` line is a command (a line ending in `\\` goes on to the next), and the lines
  up to the next `$ ` are what it prints, stdout and stderr together. A `$ cat FILE` whose FILE does
  not exist yet writes the lines shown to FILE first, so a block shows its input files as a reader
  would see them.
- `sh`: each line is a command that must succeed; its output is not compared.

The output's shape is compared, never floats or generated text: the JSON objects (records and
progress events: the same count and keys, nested objects too; `{...}` on the page matches any
object), bare numbers exactly (`echo $?`, `wc -l`), lines of a tool's own (`lm-x: ...`, and
`lm-x: error: ...` apart) and other lines by count. Everything the page shows must be printed,
and stdout must print nothing the page does not show (stderr may say more: a library's warning).
A `...` line on the page stands for more lines of the same kinds. A command exits 0 unless the
page shows it failing (an `lm-x: error:` line or a `records failed` summary).

    python tests/docs_examples.py docs/tools/lm-tokenize.md   # run a page's blocks, print what they print
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARK = "<!-- runnable -->"
FENCE = re.compile(r"^```(\w+)\s*$")
TIMEOUT = 180  # seconds a command may take: a loaded 2-core machine loading a model
# What a tool says on stderr when it finds the warm lm-serve the examples' runner starts: the page
# shows the output of a plain run.
WARM = re.compile(r"^lm-[a-z-]+: (answering through|posting to) the lm-serve running at ")
TOOL_LINE = re.compile(r"^(lm-[a-z0-9-]+): (error: )?")


@dataclass
class Command:
    line: str
    shown: list[str] = field(default_factory=list)


@dataclass
class Block:
    path: Path
    lineno: int
    lang: str
    commands: list[Command]

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.lineno}"


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def blocks(path: Path) -> list[Block]:
    """The runnable blocks of a page, in order."""
    lines = path.read_text().splitlines()
    found = []
    for i, line in enumerate(lines):
        if line.strip() != MARK:
            continue
        fence = FENCE.match(lines[i + 1]) if i + 1 < len(lines) else None
        if not fence or fence.group(1) not in ("console", "sh"):
            raise ValueError(f"{path}:{i + 1}: {MARK} must come just before a ```console or ```sh fence")
        end = next(j for j in range(i + 2, len(lines)) if lines[j].startswith("```"))
        body = lines[i + 2:end]
        found.append(Block(path, i + 3, fence.group(1), parse(body, fence.group(1))))
    return found


def parse(body: list[str], lang: str) -> list[Command]:
    commands: list[Command] = []
    continued = False
    for line in body:
        if continued:
            commands[-1].line += "\n" + line
        elif lang == "sh":
            if line.strip() and not line.lstrip().startswith("#"):
                commands.append(Command(line))
        elif line.startswith("$ "):
            commands.append(Command(line[2:]))
        elif commands:
            commands[-1].shown.append(line)
        continued = bool(commands) and line.endswith("\\") and (lang == "sh" or not commands[-1].shown)
    return commands


# -- shapes ---------------------------------------------------------------------------------------

def as_object(line: str) -> dict | None:
    """A line's JSON object (a page's `{...}` and `[...]` read as an empty object and list), or None."""
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        value = json.loads(text.replace("{...}", "{}").replace("[...]", "[]"))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def fits(shown: object, got: object) -> bool:
    """Whether `got` has the shape of `shown`: objects the same keys (an empty one shown: any),
    lists a list (their first objects compared), anything else anything but an object or list."""
    if isinstance(shown, dict):
        return isinstance(got, dict) and (not shown or (
            set(shown) == set(got) and all(fits(shown[k], got[k]) for k in shown)))
    if isinstance(shown, list):
        return isinstance(got, list) and not (
            shown and got and isinstance(shown[0], dict) and not fits(shown[0], got[0]))
    return not isinstance(got, (dict, list))


def kind(line: str) -> tuple[str, ...]:
    text = line.strip()
    if re.fullmatch(r"(exit )?-?\d+", text):
        return ("number", text)
    if tool := TOOL_LINE.match(text):
        return ("error" if tool.group(2) else "message", tool.group(1))
    return ("text",)


def mismatch(shown: list[str], stdout: str, stderr: str) -> str | None:
    """What differs between the shown lines and a command's output, in shape; None when nothing does."""
    more = any(line.strip() == "..." for line in shown)
    shown = [line for line in shown if line.strip() and line.strip() != "..."]
    out = [line for line in stdout.splitlines() if line.strip()]
    err = [line for line in stderr.splitlines() if line.strip() and not WARM.match(line)]
    want = [o for o in map(as_object, shown) if o is not None]
    got = [o for o in map(as_object, out + err) if o is not None]
    left = list(got)
    for i, record in enumerate(want):
        match = next((j for j, g in enumerate(left) if fits(record, g)), None)
        if match is None:
            return f"no output object has the shape of shown object {i + 1}: {json.dumps(record)[:300]}"
        left.pop(match)
    if left and not more:
        return f"{len(left)} object(s) more than shown, e.g. {json.dumps(left[0])[:300]}"
    want_kinds = Counter(kind(line) for line in shown if as_object(line) is None)
    out_kinds = Counter(kind(line) for line in out if as_object(line) is None)
    all_kinds = out_kinds + Counter(kind(line) for line in err if as_object(line) is None)
    if missing := want_kinds - all_kinds:
        return f"shown but not printed: {dict(missing)}"
    if (extra := out_kinds - want_kinds) and not more:
        return f"printed on stdout but not shown: {dict(extra)}"
    return None


def may_fail(shown: list[str]) -> bool:
    return any(kind(line)[0] == "error" or "records failed" in line for line in shown)


# -- running --------------------------------------------------------------------------------------

CAT = re.compile(r"^cat ([\w.-]+)$")


def run(block: Block, env: dict[str, str], folder: Path) -> list[tuple[Command, subprocess.CompletedProcess]]:
    """Run a block's commands in `folder`, each in bash (which sees the one before's exit status as
    `$?`, as a reader's shell would), and return their results."""
    results: list[tuple[Command, subprocess.CompletedProcess]] = []
    for command in block.commands:
        cat = CAT.match(command.line.strip())
        if cat and not (folder / cat.group(1)).exists():
            (folder / cat.group(1)).write_text("".join(line + "\n" for line in command.shown))
        status = results[-1][1].returncode if results else 0
        done = subprocess.run(["bash", "-c", f"(exit {status}); {command.line}"], cwd=folder, env=env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT)
        results.append((command, done))
    return results


def check(block: Block, env: dict[str, str], folder: Path) -> list[str]:
    """Every way the block's output differs from the page, one line each."""
    problems = []
    for command, done in run(block, env, folder):
        where = f"{block.name}: $ {command.line}"
        if done.returncode != 0 and (block.lang == "sh" or not may_fail(command.shown)):
            problems.append(f"{where}\n  exit {done.returncode}: {done.stderr.strip()[-2000:]}")
        elif block.lang == "console" and (problem := mismatch(command.shown, done.stdout, done.stderr)):
            problems.append(f"{where}\n  {problem}\n  stdout: {done.stdout[:1500]}\n  stderr: {done.stderr[-1500:]}")
    return problems


def main(paths: list[str]) -> None:
    for path in paths:
        for block in blocks(Path(path).resolve()):
            print(f"--- {block.name}")
            with tempfile.TemporaryDirectory() as folder:
                for command, done in run(block, dict(os.environ), Path(folder)):
                    print(f"$ {command.line}")
                    sys.stdout.write(done.stdout + done.stderr)
                    problem = mismatch(command.shown, done.stdout, done.stderr) if block.lang == "console" else None
                    print(f"[exit {done.returncode}{'; ' + problem if problem else ''}]")


if __name__ == "__main__":
    main(sys.argv[1:])
