"""What every console script shares: one-line errors and warnings, the traceback switch."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from collections.abc import Iterator
from typing import NoReturn

# what a console script reports as one line rather than a traceback: bad arguments, files and
# values (SceneError and CheckpointError are ValueErrors; FileNotFoundError is an OSError)
USER_ERRORS = (ValueError, OSError)
METHOD_HELP = "flow: an ODE method or ancestral; diffusion: ddim or ddpm"  # every --method
RUN_HELP = "training run directory, a .ckpt or weights file, or shipped weights (planner)"
TRACEBACK_ENV = "GOALGEN_TRACEBACK"  # set it (=1) to get tracebacks instead of one-line errors


class OneLineParser(argparse.ArgumentParser):
    """Bad arguments: one line on stderr, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def one_line(error: BaseException | Warning | str) -> str:
    """The message of ``error`` on one line (its class name when it has none)."""
    return " ".join(str(error).split()) or error.__class__.__name__


def want_traceback() -> bool:
    """Whether the user asked for full tracebacks (``GOALGEN_TRACEBACK=1``)."""
    return bool(os.environ.get(TRACEBACK_ENV))


@contextlib.contextmanager
def warnings_as_lines(prog: str) -> Iterator[None]:
    """Print each warning raised inside as one ``<prog>: warning: ...`` line on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            yield
        finally:
            for w in caught:
                print(f"{prog}: warning: {one_line(w.message)}", file=sys.stderr)
