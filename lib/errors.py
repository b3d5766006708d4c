"""Domain errors. The library raises these; the command-line edge turns them into one line."""


def first_line(exc: BaseException) -> str:
    """An exception's first non-blank line (its type's name if it has none): a one-line message's tail."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0].strip() if lines else type(exc).__name__


class LmpipeError(Exception):
    """Base for every error lmpipe reports to a person."""

    exit_code = 1


class UsageError(LmpipeError):
    """The command line asks for something that cannot be done (exit code 2)."""

    exit_code = 2


class ModelNotFound(UsageError):
    """A --model value names nothing lmpipe can load."""


class RecordError(LmpipeError):
    """One record cannot be processed; it becomes an error record and the stream goes on."""
