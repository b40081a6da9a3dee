"""User mistakes, answered in one line: ``asym-trl <command>: error: <what and how to fix it>``, exit code 2.

Every ``asym-trl`` sub-command's ``main`` is wrapped in :func:`one_line_errors`: a :class:`UsageError` (a recipe key,
a path, a name the user gave) becomes that one line on stderr, with no traceback; ``ASYM_TRL_DEBUG=1`` shows the
traceback instead.  Argument parsers built on :class:`OneLineParser` answer bad flags the same way (and print
docstrings as plain text: no bold, emphasis or double-backtick markup in ``--help``).  Anything else
(a bug, a crash in user code) still propagates with its traceback.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from collections.abc import Callable

__all__ = ["DEBUG_VARIABLE", "USAGE_EXIT_CODE", "OneLineParser", "UsageError", "one_line_errors"]

USAGE_EXIT_CODE = 2  # as argparse: the command line or the recipe is wrong
DEBUG_VARIABLE = "ASYM_TRL_DEBUG"  # set to 1 to see the traceback of a user mistake


class UsageError(ValueError):
    """A mistake in what the user asked for (recipe, flag, path, name): the message says what and how to fix it."""


def debugging() -> bool:
    return os.environ.get(DEBUG_VARIABLE, "").lower() not in ("", "0", "false", "no")


def one_line(command: str, message: str) -> int:
    """Print ``asym-trl <command>: error: <message>`` (newlines folded) to stderr; the exit code to return."""
    print(f"asym-trl {command}: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    return USAGE_EXIT_CODE


def one_line_errors(command: str) -> Callable:
    """Decorate a sub-command's ``main(argv) -> int``: a :class:`UsageError` becomes one line and exit code 2."""

    def decorate(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def wrapped(*args, **kwargs) -> int:
            try:
                return main(*args, **kwargs)
            except UsageError as e:
                if debugging():
                    raise
                return one_line(command, str(e))

        return wrapped

    return decorate


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (``<prog>: error: ...``, exit 2), without the usage block, and
    whose help is plain text (descriptions are often docstrings)."""

    def format_help(self) -> str:
        text = re.sub(r"\*\*|``", "", super().format_help())  # **bold**, ``code``
        return re.sub(r"(?<![\w*])\*(\S[^*\n]*?)\*(?![\w*])", r"\1", text)  # *emphasis*

    def error(self, message: str):
        self.exit(USAGE_EXIT_CODE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
