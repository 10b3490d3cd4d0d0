"""Facts of the data sets that every part of the pipeline shares: CIFAR-10's class names, the image shape,
and the rule every class name read from a file (an archive's meta, stats.json, a model) must follow."""

from __future__ import annotations

import re
import reprlib
from typing import Any

from cifar10.errors import DataError

CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SHAPE = (32, 32, 3)  # height, width, RGB

MAX_CLASSES = 1000  # class names a file may list; CIFAR-100 has 100
MAX_CLASS_NAME_CHARS = 64  # the longest CIFAR-100 name, large_man-made_outdoor_things, has 29
# Letters and digits (any script), then also space and _ - . , ' ( ) & +: enough for every CIFAR name, and
# nothing that a CSV, a DVC plot or matplotlib (whose `$` starts a formula) would read as markup.
_CLASS_NAME = re.compile(r"\w[\w .,'()&+\-]*")

_short = reprlib.Repr()
_short.maxstring = _short.maxother = 60
_short.maxlist = 4


def class_names_problem(names: Any, count: int | None = None) -> str | None:
    """Return why `names` is not a usable list of class names (`count` of them if given), or None if it is.

    Usable: a list or tuple of 2..MAX_CLASSES distinct str, each 1..MAX_CLASS_NAME_CHARS characters matching
    _CLASS_NAME. The reason is one short line that never shows more than a few dozen characters of the value.
    """
    if not isinstance(names, list | tuple):
        return f"must be a list of class names, got {type(names).__name__}"
    wanted = f"{count}" if count is not None else f"2..{MAX_CLASSES}"
    if (count is not None and len(names) != count) or not 2 <= len(names) <= MAX_CLASSES:
        return f"must list {wanted} class names, got {len(names)}"
    for name in names:
        if type(name) is not str:
            return f"class names must be strings, got {type(name).__name__} {_short.repr(name)}"
        if len(name) > MAX_CLASS_NAME_CHARS:
            return f"class names must be at most {MAX_CLASS_NAME_CHARS} characters, got one of {len(name):,}"
        if not _CLASS_NAME.fullmatch(name):
            return (
                "class names must be letters or digits, then also space and _ - . , ' ( ) & +, "
                f"got {_short.repr(name)}"
            )
    if len(set(names)) != len(names):
        repeated = next(n for n in names if names.count(n) > 1)
        return f"class names must be distinct, got {_short.repr(repeated)} twice"
    return None


def checked_class_names(names: Any, what: str, count: int | None = None) -> tuple[str, ...]:
    """Return `names` as a tuple after class_names_problem; DataError "<what> <reason>" if they are not usable."""
    problem = class_names_problem(names, count)
    if problem:
        raise DataError(f"{what} {problem}")
    return tuple(names)
