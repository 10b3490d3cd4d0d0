"""One-line errors for bad input, and the wrapper that turns them into an exit status."""

from __future__ import annotations

import sys
from collections.abc import Callable


class StageError(Exception):
    """Bad input or a failed check: the stage stops with this one-line message and exit status 1."""


class ParamError(StageError):
    """A value in params.yaml is unknown, of the wrong type or out of range."""


class DataError(StageError):
    """An archive, array or statistics file is not what the pipeline expects."""


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(); a StageError prints `error: <message>` on stderr and exits 1.

    Anything else is a bug and keeps its traceback.
    """
    try:
        main()
    except StageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
