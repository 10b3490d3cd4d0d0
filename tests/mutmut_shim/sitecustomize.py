"""Loaded only in subprocesses of tests while `make mutation` collects which tests reach which functions.

mutmut records a test's reach in its own process; a stage or a hostile-input reader run in a subprocess
would otherwise count as reaching nothing, and its mutants would never meet the tests that can kill them.
Here the subprocess writes the library functions it entered to one file per process, which the test
process adds to mutmut's record after the test (`tests/conftest.py`).
"""

import atexit
import os
from pathlib import Path

_out = os.environ.get("CIFAR10_MUTMUT_HITS")
if _out:
    import mutmut.mutation.trampoline as _trampoline

    _hits: set[str] = set()

    def _record(name: str, caller: str | None = None) -> None:
        _hits.add(name)

    _trampoline.record_trampoline_hit = _record
    atexit.register(lambda: (Path(_out) / f"{os.getpid()}.txt").write_text("\n".join(sorted(_hits))))
