"""Shared entry-point plumbing: one-line user errors, no tracebacks, exit status 2."""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from typing import Callable, NoReturn, Sequence

from toynet.errors import ToyNetError

USAGE_ERROR = 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one ``error:`` line instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"error: {message} (see {self.prog} --help)\n")


def run_main(body: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run an entry point's body; a ToyNetError becomes ``error: <message>`` and exit 2.

    Anything else is a bug in this project and keeps its traceback.
    """
    try:
        return body(argv)
    except ToyNetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def exit_process(main: Callable[[], int]) -> NoReturn:
    """Run a command line's ``main()`` as the whole process; exit with its status.

    Python's exit would end with garbage collections over every object the command
    built (0.3–0.6 s after importing torch or Ray Tune). By then everything is written,
    so those objects are frozen out of them; atexit handlers, reference counts and the
    std streams close things as before. Only for a process that ends here: ``main()``
    itself stays usable in one that goes on (the tests).
    """
    status = main()
    gc.freeze()
    sys.exit(status)


def setup_logging(verbose: bool = False) -> None:
    """Plain, single-line log records on stderr for command-line use."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
