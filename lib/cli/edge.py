"""The command-line edge shared by every tool: one-line errors, exit codes, pipes and Ctrl-C.

Set LMPIPE_DEBUG=1 to get the traceback instead of the one-line message. The exit codes are
lmpipe.records.pipe's.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import NoReturn

import click

from ..errors import LmpipeError
from ..records.pipe import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, debugging, say
from ..records.runner import _Interrupted


def _quiet_stdout() -> None:
    # Downstream closed the pipe: point stdout at /dev/null so Python's final flush cannot fail.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


def guarded(tool: str, body: Callable[[], int]) -> NoReturn:
    """Run a tool's body and exit with its code; every failure becomes one line on stderr."""
    try:
        code = body()
    except BrokenPipeError:
        _quiet_stdout()
        code = EXIT_OK
    except _Interrupted as exc:
        s = exc.summary
        say(tool, f"interrupted: wrote {s.written} records, {s.failed} failed or unfinished")
        code = EXIT_INTERRUPTED
    except KeyboardInterrupt:
        say(tool, "interrupted")
        code = EXIT_INTERRUPTED
    except LmpipeError as exc:
        if debugging():
            raise
        say(tool, f"error: {exc}")
        code = exc.exit_code
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException:
        raise
    except Exception as exc:  # a bug: still one line, with a way to see more
        if debugging():
            raise
        say(tool, f"internal error: {type(exc).__name__}: {exc} (LMPIPE_DEBUG=1 shows the traceback)")
        code = EXIT_FAILED
    sys.exit(code)
