"""The opening every stage script shares: its paths from the stage's `cmd` in dvc.yaml, then params.yaml."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cifar10.params import load_section, load_seed, read_params_file


def start_stage(
    description: str,
    paths: dict[str, str],
    section: str | tuple[str, ...] | None,
    seeded: bool,
    argv: list[str] | None = None,
) -> tuple[argparse.Namespace, Any, int | None]:
    """Parse the stage's path arguments (name -> help) and return (paths, its params section, the seed or None).

    `section` None reads no section; a tuple of names returns a tuple of those sections, in that order (a stage
    that also reads `dataset`); `seeded` False reads no seed, so a stage touches exactly the params that
    dvc.yaml declares for it. Every stage still validates the whole file's section names.
    """
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    for name, help_text in paths.items():
        parser.add_argument(name, type=Path, help=help_text)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    raw = read_params_file(args.params)
    if isinstance(section, tuple):
        params: Any = tuple(load_section(raw, name) for name in section)
    else:
        params = load_section(raw, section) if section else None
    return args, params, load_seed(raw) if seeded else None
