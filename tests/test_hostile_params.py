"""Hostile params.yaml: whatever a file holds, a stage stops with one short `error:` line, in bounded time and memory.

Each input is built here: non-finite and out-of-range numbers for every numeric field, duplicate and
non-string keys, aliases, deep nesting, huge files, bad bytes. The costly ones run through the real
download stage under an address-space limit and a deadline (`run_limited`), so a regression fails the test
instead of filling the machine. Property-based tests (hypothesis) mutate the committed file: every change of
a value's type, every deleted key and every unknown key is refused; the committed file is accepted.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import time
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cifar10.errors import ParamError
from cifar10.params import SECTIONS, DownloadParams, load_section, load_seed, parse_section, read_params_file
from tests.conftest import ROOT, run_limited

COMMITTED = (ROOT / "params.yaml").read_text()
MAX_LINE = 367  # the longest `error: ...` line a user may see (cifar10.params.MAX_MESSAGE_CHARS + "error: ")
MEMORY_MB = 512  # address space for a stage fed a hostile file; a refusing stage runs in under 100 MB
TIMEOUT_S = 30  # before the fix, the shared-reference tree took 116 s


def committed() -> dict:
    return yaml.safe_load(COMMITTED)


def load_everything(path: Path) -> None:
    """Read the params file at `path` as all stages together do: the seed and every section."""
    raw = read_params_file(path)
    load_seed(raw)
    for section in SECTIONS:
        load_section(raw, section)


def refusal(tmp_path: Path, content: str | bytes) -> str:
    """Return the one-line message that refuses `content` as params.yaml."""
    path = tmp_path / "params.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ParamError) as info:
        load_everything(path)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and len(f"error: {message}") <= MAX_LINE, message
    return message


def with_values(changes: dict) -> str:
    """The committed params as YAML with `changes` ({"section.key" or "seed": value}) applied."""
    params = committed()
    for dotted, value in changes.items():
        section, _, key = dotted.rpartition(".")
        (params[section] if section else params)[key] = value
    return yaml.safe_dump(params, sort_keys=False)


def with_raw_line(section: str, key: str, yaml_text: str, text: str = COMMITTED) -> str:
    """params.yaml `text` with the line of `section.key` replaced by `key: yaml_text`."""
    lines = text.splitlines()
    start = lines.index(f"{section}:")
    index = next(i for i in range(start, len(lines)) if lines[i].startswith(f"  {key}:"))
    lines[index] = f"  {key}: {yaml_text}"
    return "\n".join(lines) + "\n"


def with_line_after(start: str, new_line: str, text: str = COMMITTED) -> str:
    """params.yaml `text` with `new_line` inserted after the first line that starts with `start`."""
    lines = text.splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith(start))
    return "\n".join([*lines[: index + 1], new_line, *lines[index + 1 :]]) + "\n"


# What the stage tests start from: if a regression let the params through, the stage would find no archive
# at this path and stop, instead of going to the internet.
OFFLINE = with_raw_line("download", "url", "/nonexistent/cifar-10-python.tar.gz")


def line_of(text: str, start: str) -> int:
    """Return the 1-based number of the first line of `text` that starts with `start`."""
    return next(n for n, line in enumerate(text.splitlines(), start=1) if line.startswith(start))


def run_download_stage(tmp_path: Path, content: str | bytes) -> str:
    """Run the real download stage on `content` as its params file, limited; return its one stderr line."""
    params_file = tmp_path / "params.yaml"
    params_file.write_bytes(content if isinstance(content, bytes) else content.encode())
    out = tmp_path / "out.tar.gz"
    started = time.monotonic()
    result = run_limited(
        [sys.executable, "-m", "stages.download", str(out), "--params", str(params_file)],
        cwd=ROOT,
        memory_mb=MEMORY_MB,
        timeout_s=TIMEOUT_S,
    )
    elapsed = time.monotonic() - started
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 1, (result.returncode, stderr[-3000:])  # not a signal, not a traceback's exit
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    assert len(lines[0]) <= MAX_LINE, lines[0][:500]
    assert elapsed < TIMEOUT_S / 2, elapsed  # a stage start is under a second; the deadline only catches a hang
    assert not out.exists()
    return lines[0]


# --- The attacks that cost time or memory, through the real stage ----------------------------------------------


def alias_bomb(levels: int = 10, fanout: int = 9) -> str:
    """A flow list of 2 KB whose last element stands for fanout**levels integers (the billion laughs)."""
    parts = ["&a0 [" + ", ".join(["32"] * fanout) + "]"]
    parts += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * fanout) + "]" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


@pytest.mark.parametrize(("section", "key"), [("train", "widths"), ("download", "url")])
def test_alias_bomb_is_refused_at_its_first_anchor(tmp_path: Path, section: str, key: str):
    text = with_raw_line(section, key, alias_bomb(), OFFLINE)
    assert len(text) < len(OFFLINE) + 2500
    assert run_download_stage(tmp_path, text) == (
        f"error: {tmp_path / 'params.yaml'}:{line_of(text, f'  {key}: ')}: "
        "YAML anchors and aliases are not accepted, found &a0"
    )


def shared_reference_tree(levels: int = 8) -> str:
    """label_names-style: ten class names, then mappings whose entries each refer to the level below."""
    names = "[airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck]"
    lines = [f"    names0: &n0 {names}"]
    lines += [
        f"    names{i}: &n{i} {{" + ", ".join(f"c{j}: *n{i - 1}" for j in range(10)) + "}" for i in range(1, levels)
    ]
    return "\n".join(lines)


def test_shared_reference_tree_is_refused_without_formatting_it(tmp_path: Path):
    # Before: `download.url must be a string, got {...}` formatted 10**8 names: 116 s and 6 GB.
    text = with_raw_line("download", "url", "\n" + shared_reference_tree(), OFFLINE)
    line = run_download_stage(tmp_path, text)
    assert line.endswith("YAML anchors and aliases are not accepted, found &n0")


@pytest.mark.parametrize(
    "deep", ["[" * 20_000 + "]" * 20_000, "{a: " * 20_000 + "1" + "}" * 20_000, "\n    " + "- " * 20_000 + "1"]
)
def test_20000_deep_nesting_is_refused_without_recursion_error(tmp_path: Path, deep: str):
    line = run_download_stage(tmp_path, with_raw_line("train", "widths", deep, OFFLINE))
    assert line.endswith("values nested more than 8 deep")


def test_50_mb_file_is_refused_before_parsing(tmp_path: Path):
    padding = "# " + "x" * 98 + "\n"  # a valid params.yaml, then 50 MB of comments
    line = run_download_stage(tmp_path, OFFLINE + padding * (50 * 2**20 // len(padding)))
    assert line == f"error: {tmp_path / 'params.yaml'} is larger than 256 KiB; params.yaml holds a few dozen values"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (with_raw_line("download", "deadline", ".nan", OFFLINE), "download.deadline must be a finite number, got nan"),
        (with_raw_line("download", "timeout", ".inf", OFFLINE), "download.timeout must be a finite number, got inf"),
        (
            with_raw_line("download", "retries", "100000000000000000000", OFFLINE),
            "download.retries must be at most 100",
        ),
        (with_line_after("download:", "  retries: 1", OFFLINE), "duplicate key download.retries"),
        (OFFLINE + "1: x\n", "keys must be strings, got '1' (int)"),
        (OFFLINE.encode() + b"# caf\xe9\n", "is not UTF-8 text: byte 0xe9 at line"),
        (
            with_raw_line("download", "retries", "1" * 5000, OFFLINE),
            "a 5000-character integer is longer than any param",
        ),
        (with_raw_line("download", "timeout", "2001-13-45", OFFLINE), "'2001-13-45' is not a valid date"),
    ],
    ids=["deadline-nan", "timeout-inf", "retries-1e20", "duplicate", "int-key", "latin-1", "5000-digits", "bad-date"],
)
def test_small_hostile_files_stop_the_stage_with_one_line(tmp_path: Path, content: str | bytes, message: str):
    assert message in run_download_stage(tmp_path, content)


# --- Numbers: finite, and within each field's documented range --------------------------------------------------

FLOAT_FIELDS = [
    f"{section}.{field.name}"
    for section, cls in SECTIONS.items()
    for field in dataclasses.fields(cls)
    if typing.get_type_hints(cls)[field.name] is float
]


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, "Infinity", "nan", "1e999"])
@pytest.mark.parametrize("key", FLOAT_FIELDS)
def test_non_finite_numbers_are_refused(tmp_path: Path, key: str, value):
    message = refusal(tmp_path, with_values({key: value}))
    assert message.startswith(f"{key} must be a finite number, got ")


@pytest.mark.parametrize("value", [math.inf, math.nan, "-inf"])
@pytest.mark.parametrize(("key", "index"), [("train.dropout", 1), ("train.lr_values", 0)])
def test_non_finite_numbers_inside_lists_are_refused(tmp_path: Path, key: str, index: int, value):
    values = list(committed()["train"][key.split(".")[1]])
    values[index] = value
    assert refusal(tmp_path, with_values({key: values})).startswith(f"{key}[{index}] must be a finite number, got ")


@pytest.mark.parametrize("key", ["seed", "train.epochs", "download.max_bytes", "evaluate.batch_size"])
def test_non_finite_numbers_for_integers_are_refused(tmp_path: Path, key: str):
    assert refusal(tmp_path, with_values({key: math.inf})) == f"{key} must be an integer, got inf"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (2**128 - 1, "340282366920938463463374607431768211455"),  # 128 bits: still written out
        (2**128, "<129-bit integer>"),
        (2**200, "<201-bit integer>"),
        (-(2**200), "<-201-bit integer>"),
    ],
    ids=["128_bits", "129_bits", "201_bits", "minus_201_bits"],
)
def test_huge_integers_are_named_by_their_size_past_128_bits(tmp_path: Path, value: int, shown: str):
    # str() of a 10,000-digit integer raises (and a 4,000-digit one fills the line): past 128 bits, its size.
    message = refusal(tmp_path, with_values({"train.epochs": value}))
    assert message.endswith(f", got {shown}"), message


def case_id(changes: dict) -> str:
    return ",".join(f"{key}={value!r}"[:40] for key, value in changes.items())


# The documented ranges (cifar10/params.py, params.yaml), written out again here as the oracle: each edge is
# accepted, and the value just beyond it is refused with a message naming the key and the value.
EDGES_ACCEPTED = [
    {"resources.devices": [0, 1023]},
    {"resources.devices": list(range(64))},
    {"seed": 0},
    {"seed": 2**31 - 1},
    {"download.timeout": 1e-3},
    {"download.timeout": 86_400},
    {"download.retries": 0},
    {"download.retries": 100},
    {"download.deadline": 0.5},
    {"download.deadline": 604_800},
    {"download.max_bytes": 1},
    {"download.max_bytes": 2**36},
    {"download.url": "x" * 4096},
    {"gate.baseline_rev": "v" * 256},
    {"normalize.val_size": 0},
    {"normalize.val_size": 1_000_000},
    {"normalize.eps": 0},
    {"normalize.eps": 1},
    {"train.epochs": 1},
    {"train.epochs": 100_000},
    {"train.batch_size": 1},
    {"train.batch_size": 65_536},
    {"train.widths": [1, 1, 1]},
    {"train.widths": [4096] * 5, "train.dropout": [0.0] * 5},
    {"train.block_depth": 1},
    {"train.block_depth": 16},
    {"train.dropout": [0, 0.5, 0.999]},
    {"train.weight_decay": 0},
    {"train.weight_decay": 1},
    {"train.label_smoothing": 0},
    {"train.label_smoothing": 0.999},
    {"train.rotation_deg": 0},
    {"train.rotation_deg": 180},
    {"train.shift": 0},
    {"train.shift": 0.999},
    {"train.lr_boundaries": [], "train.lr_values": [1e6]},
    {"train.lr_boundaries": list(range(1, 65)), "train.lr_values": [1e-3] * 65},
    {"train.lr_boundaries": [99_999, 100_000], "train.lr_values": [1e-12, 1e6, 1e6]},
    {"train.lr_decay": 0},
    {"train.lr_decay": 1},
    # The linear schedule: its last value (where it ends) may be 0, its boundaries stop before the last epoch.
    {"train.lr_schedule": "linear", "train.lr_boundaries": [1, 124], "train.lr_values": [1e-3, 5e-4, 0]},
    {"evaluate.batch_size": 1},
    {"evaluate.batch_size": 65_536},
    {"gate.min_test_accuracy": 0, "gate.max_drop": 0},
    {"gate.min_test_accuracy": 1, "gate.max_drop": 1, "gate.baseline_rev": "v1.0~2^{commit}"},
    {"gate.baseline_rev": "exp-a1b2c", "export.formats": ["litert", "saved_model"]},
]


@pytest.mark.parametrize("changes", EDGES_ACCEPTED, ids=case_id)
def test_the_edges_of_every_range_are_accepted(tmp_path: Path, changes: dict):
    path = tmp_path / "params.yaml"
    path.write_text(with_values(changes))
    load_everything(path)


OUT_OF_RANGE = [
    ({"seed": -1}, "seed must be an integer in [0, 2**31), got -1"),
    ({"seed": 2**31}, "seed must be an integer in [0, 2**31), got 2147483648"),
    ({"download.timeout": 0}, "download.timeout must be a positive number of seconds, got 0.0"),
    ({"download.timeout": 86_400.5}, "download.timeout must be at most 86400 seconds (a day), got 86400.5"),
    ({"download.timeout": 1e20}, "download.timeout must be at most 86400 seconds (a day), got 1e+20"),
    ({"download.retries": -1}, "download.retries must be a non-negative integer, got -1"),
    ({"download.retries": 101}, "download.retries must be at most 100, got 101"),
    ({"download.deadline": -5}, "download.deadline must be a positive number of seconds, got -5.0"),
    ({"download.deadline": 0}, "download.deadline must be a positive number of seconds, got 0.0"),
    ({"download.deadline": 604_801}, "download.deadline must be at most 604800 seconds (7 days), got 604801.0"),
    ({"download.max_bytes": 0}, "download.max_bytes must be a positive number of bytes, got 0"),
    ({"download.max_bytes": 2**36 + 1}, "download.max_bytes must be at most 2**36 bytes (64 GiB), got 68719476737"),
    ({"download.url": "x" * 4097}, "download.url must be at most 4096 characters, got 'xxxxxxxx"),
    ({"normalize.val_size": -1}, "normalize.val_size must be a non-negative integer, got -1"),
    ({"normalize.val_size": 1_000_001}, "normalize.val_size must be at most 1000000, got 1000001"),
    ({"normalize.eps": -1e-9}, "normalize.eps must be a non-negative number, got -1e-09"),
    ({"normalize.eps": 1.5}, "normalize.eps must be at most 1, got 1.5"),
    ({"train.epochs": 0}, "train.epochs must be a positive integer, got 0"),
    ({"train.epochs": 100_001}, "train.epochs must be at most 100000, got 100001"),
    ({"train.epochs": 10**20}, "train.epochs must be at most 100000, got 100000000000000000000"),
    ({"train.batch_size": 0}, "train.batch_size must be a positive integer, got 0"),
    ({"train.batch_size": 65_537}, "train.batch_size must be at most 65536, got 65537"),
    ({"train.batch_size": 10**20}, "train.batch_size must be at most 65536, got 100000000000000000000"),
    ({"train.widths": [0, 64, 128]}, "train.widths must be a non-empty list of positive integers, got [0, 64, 128]"),
    ({"train.widths": [], "train.dropout": []}, "train.widths must be a non-empty list of positive integers, got []"),
    ({"train.widths": [32, 64, 4097]}, "train.widths must be at most 4096, got [32, 64, 4097]"),
    (
        {"train.widths": [32] * 6, "train.dropout": [0.1] * 6},
        "train.widths must have at most 5 blocks (each halves the 32x32 image), got [32, 32, 32, 32, 32, 32]",
    ),
    ({"train.block_depth": 0}, "train.block_depth must be a positive integer, got 0"),
    ({"train.block_depth": 17}, "train.block_depth must be at most 16, got 17"),
    ({"train.dropout": [-0.1, 0.3, 0.4]}, "train.dropout rates must be in [0, 1), got [-0.1, 0.3, 0.4]"),
    ({"train.dropout": [0.2, 0.3, 1.0]}, "train.dropout rates must be in [0, 1), got [0.2, 0.3, 1.0]"),
    ({"train.weight_decay": -1e-4}, "train.weight_decay must be a non-negative number, got -0.0001"),
    ({"train.weight_decay": 1.5}, "train.weight_decay must be at most 1, got 1.5"),
    ({"train.rotation_deg": -1}, "train.rotation_deg must be in [0, 180], got -1.0"),
    ({"train.rotation_deg": 180.5}, "train.rotation_deg must be in [0, 180], got 180.5"),
    ({"train.shift": -0.1}, "train.shift must be in [0, 1), got -0.1"),
    ({"train.shift": 1.0}, "train.shift must be in [0, 1), got 1.0"),
    ({"train.label_smoothing": -0.1}, "train.label_smoothing must be in [0, 1), got -0.1"),
    ({"train.label_smoothing": 1}, "train.label_smoothing must be in [0, 1), got 1.0"),
    (
        {"train.lr_schedule": "linear", "train.lr_boundaries": [75, 125]},
        "train.lr_boundaries must be below train.epochs (125) for the linear schedule",
    ),
    (
        {"train.lr_schedule": "linear", "train.lr_values": [1e-3, 5e-4, -1e-4]},
        "train.lr_values must not be negative, got [0.001, 0.0005, -0.0001]",
    ),
    (
        {"train.lr_schedule": "linear", "train.lr_boundaries": [], "train.lr_values": [0]},
        "train.lr_values must hold a rate above 0, got [0.0]",
    ),
    ({"train.lr_boundaries": [0, 100]}, "train.lr_boundaries must be positive and strictly increasing epochs"),
    ({"train.lr_boundaries": [75, 100_001]}, "train.lr_boundaries must be positive and strictly increasing epochs"),
    (
        {"train.lr_boundaries": list(range(1, 66)), "train.lr_values": [1e-3] * 66},
        "train.lr_boundaries must have at most 64 epochs, got [1, 2, 3, 4, 5, 6, 7, 8, ...]",
    ),
    ({"train.lr_values": [0, 5e-4, 3e-4]}, "train.lr_values must be positive, got [0.0, 0.0005, 0.0003]"),
    ({"train.lr_values": [1e-3, 5e-4, 2e6]}, "train.lr_values must be at most 1e+06, got [0.001, 0.0005, 2000000.0]"),
    ({"train.lr_decay": -1e-6}, "train.lr_decay must be a non-negative number, got -1e-06"),
    ({"train.lr_decay": 1.5}, "train.lr_decay must be at most 1, got 1.5"),
    ({"evaluate.batch_size": 0}, "evaluate.batch_size must be a positive integer, got 0"),
    ({"evaluate.batch_size": 65_537}, "evaluate.batch_size must be at most 65536, got 65537"),
    ({"evaluate.batch_size": 10**20}, "evaluate.batch_size must be at most 65536, got 100000000000000000000"),
    ({"gate.min_test_accuracy": -0.1}, "gate.min_test_accuracy must be in [0, 1], got -0.1"),
    ({"gate.min_test_accuracy": 1.01}, "gate.min_test_accuracy must be in [0, 1], got 1.01"),
    ({"gate.max_drop": -0.01}, "gate.max_drop must be in [0, 1], got -0.01"),
    ({"gate.max_drop": 2}, "gate.max_drop must be in [0, 1], got 2.0"),
    # A revision goes to `git cat-file REV:path`: never an option, never a second path.
    ({"gate.baseline_rev": "--output=/tmp/x"}, "gate.baseline_rev must be a git revision"),
    ({"gate.baseline_rev": "main:other/file.json"}, "gate.baseline_rev must be a git revision"),
    ({"gate.baseline_rev": "main\nx"}, "gate.baseline_rev must be a git revision"),
    ({"gate.baseline_rev": "v" * 257}, "gate.baseline_rev must be at most 256 characters, got 'vvvvvvvvvvvvvvvv"),
    (
        {"gate.baseline_rev": "-main"},  # only characters a revision may hold, but read by git as an option
        "gate.baseline_rev must be a git revision (letters, digits and . / ~ ^ @ { } + - _, not starting with -), "
        "got '-main'",
    ),
    ({"gate.baseline_rev": "m\u00e4in"}, "gate.baseline_rev must be a git revision"),  # letters of ASCII only
    (
        {"export.formats": ["tfjs"]},
        "export.formats must list each of ('saved_model', 'litert', 'onnx') at most once, got ['tfjs']",
    ),
    ({"export.formats": ["onnx", "onnx"]}, "export.formats must list each of ('saved_model', 'litert', 'onnx') at"),
    ({"resources.devices": [-1]}, "resources.devices must list up to 64 GPU indices, each 0..1023 at most once"),
    ({"resources.devices": [1024]}, "resources.devices must list up to 64 GPU indices, each 0..1023 at most once"),
    ({"resources.devices": list(range(65))}, "resources.devices must list up to 64 GPU indices"),
]


@pytest.mark.parametrize(("changes", "message"), OUT_OF_RANGE, ids=[case_id(changes) for changes, _ in OUT_OF_RANGE])
def test_values_beyond_every_range_are_refused(tmp_path: Path, changes: dict, message: str):
    assert refusal(tmp_path, with_values(changes)).startswith(message)


def test_every_numeric_field_has_a_range_test():
    numeric = {"seed"} | {
        f"{section}.{field.name}"
        for section, cls in SECTIONS.items()
        for field in dataclasses.fields(cls)
        if typing.get_type_hints(cls)[field.name] in (int, float, tuple[int, ...], tuple[float, ...])
    }
    below_and_above = [changes for changes, _ in OUT_OF_RANGE]
    for key in numeric:
        assert sum(key in changes for changes in below_and_above) >= 2, key
        assert any(key in changes for changes in EDGES_ACCEPTED), key


# --- Keys: unique, strings, known -----------------------------------------------------------------------------


def test_duplicate_key_inside_a_section_is_refused(tmp_path: Path):
    text = with_line_after("  epochs:", "  epochs: 3")
    line = line_of(text, "  epochs: 3")
    assert refusal(tmp_path, text) == (
        f"{tmp_path / 'params.yaml'}:{line}: duplicate key train.epochs (first at line {line - 1})"
    )
    quoted = with_line_after("  epochs:", '  "epochs": 3')  # the same key, quoted
    assert "duplicate key train.epochs" in refusal(tmp_path, quoted)


def test_duplicate_section_is_refused(tmp_path: Path):
    text = COMMITTED + "\nevaluate:\n  batch_size: 7\n"
    assert "duplicate key evaluate (first at line " in refusal(tmp_path, text)
    assert "duplicate key seed (first at line " in refusal(tmp_path, COMMITTED + "seed: 1\n")


def test_duplicate_key_at_any_depth_is_named_by_its_path(tmp_path: Path):
    text = with_raw_line("train", "widths", "[32, {a: 1, a: 2}]")
    line = line_of(text, "  widths:")
    assert refusal(tmp_path, text).endswith(f":{line}: duplicate key train.widths[1].a (first at line {line})")


@pytest.mark.parametrize(
    ("entry", "shown"),
    [
        ("1: x", "'1' (int)"),
        ("true: x", "'true' (bool)"),
        ("null: x", "'null' (null)"),
        ("~: x", "'~' (null)"),
        ("1.5: x", "'1.5' (float)"),
        ("2001-01-01: x", "'2001-01-01' (timestamp)"),
        ("? [a, b]\n: x", "a sequence"),
        ("? {a: b}\n: x", "a mapping"),
    ],
)
@pytest.mark.parametrize("where", ["top", "train"])
def test_keys_that_are_not_strings_are_refused(tmp_path: Path, entry: str, shown: str, where: str):
    if where == "top":  # beside string keys: sorting the unknown sections once raised TypeError
        text = COMMITTED + entry + "\n"
    else:
        text = with_line_after("train:", "\n".join(f"  {s}" for s in entry.splitlines()))
    message = refusal(tmp_path, text)
    assert f"keys must be strings, got {shown}" in message
    assert message.endswith(" in train") == (where == "train")


def test_unknown_keys_with_long_or_odd_names_are_shown_shortened(tmp_path: Path):
    message = refusal(tmp_path, with_line_after("train:", "  " + "k" * 1000 + ": 1"))
    assert message.startswith("train.'kkkkkkkkkkkkkkkkk...kkkkkkkkkkkkkkkkkk' is not a known key (known: epochs,")
    assert message.endswith(", deterministic, mixed_precision)")  # the name is cut, the known keys are not
    message = refusal(tmp_path, COMMITTED + '"tr\\nain\\u2028": 1\n')
    assert message.startswith("'tr\\nain\\u2028' is not a known params.yaml section")


# --- YAML beyond plain values ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("seed: &s 42\n", ":1: YAML anchors and aliases are not accepted, found &s"),
        (with_line_after("  epochs:", "  <<: {epochs: 3}"), ": YAML merge keys (<<)"),
        (
            with_raw_line("train", "lr_values", "!!python/tuple [1]"),
            "YAML tags are not accepted, found '!!python/tuple'",
        ),
        (with_raw_line("normalize", "eps", "!!float 1e-7"), "YAML tags are not accepted, found '!!float'"),
        (with_raw_line("normalize", "eps", "!custom 1"), "YAML tags are not accepted, found '!custom'"),
        (with_raw_line("train", "epochs", "0b_"), "'0b_' is not a valid integer"),
        (with_raw_line("train", "epochs", "1" + ":59" * 50_000), "a 150001-character integer"),
        (with_raw_line("train", "epochs", "0x" + "f" * 10_000), "a 10002-character integer"),
        (with_raw_line("normalize", "eps", "1" * 100 + ".5"), "a 102-character number is longer than any param"),
        (
            COMMITTED + "---\nseed: 1\n",
            f"not valid YAML: expected a single document in the stream (line {line_of(COMMITTED, 'seed:')}): but found",
        ),
        (
            "train: [unclosed\n",
            "is not valid YAML: while parsing a flow sequence (line 1): expected ',' or ']', but got '<stream end>' "
            "at line 2, column 1",
        ),
        ("seed: 1\x00\n", "not valid YAML: special characters are not allowed: character #x0000 at position 7"),
        ("", "must be a mapping of sections, got NoneType"),
        ("[1, 2]\n", "must be a mapping of sections, got list"),
        ("{" * 300 + "}" * 300, "values nested more than 8 deep"),
        ("a: [" + "1, " * 20_000 + "]\n", "more than 10000 values; params.yaml holds a few dozen"),
    ],
    ids=[
        "anchor",
        "merge-key",
        "python-tag",
        "float-tag",
        "custom-tag",
        "0b_",
        "base-60-quadratic",
        "hex-huge",
        "long-float",
        "two-documents",
        "unclosed",
        "nul",
        "empty",
        "list",
        "deep-flow-mapping",
        "20000-values",
    ],
)
def test_yaml_beyond_plain_values_is_refused_in_one_line(tmp_path: Path, content: str, message: str):
    assert message in refusal(tmp_path, content)


def key_line(section: str, key: str) -> int:
    """Return the 1-based line of `section.key` in the committed params.yaml."""
    lines = COMMITTED.splitlines()
    start = lines.index(f"{section}:")
    return next(i for i in range(start, len(lines)) if lines[i].startswith(f"  {key}:")) + 1


@pytest.mark.parametrize(
    ("content", "line", "message"),
    [
        ("seed: &s 42\n", 1, "YAML anchors and aliases are not accepted, found &s"),
        ("seed: 1\nother: *s\n", 2, "YAML anchors and aliases are not accepted, found *s"),
        (
            with_line_after("  epochs:", "  <<: {epochs: 3}"),
            line_of(COMMITTED, "  epochs:") + 1,
            "YAML merge keys (<<) are not accepted",
        ),
        (
            with_raw_line("train", "lr_values", "!!python/tuple [1]"),
            key_line("train", "lr_values"),
            "YAML tags are not accepted, found '!!python/tuple'; write the plain value",
        ),
        (with_raw_line("train", "epochs", "0b_"), key_line("train", "epochs"), "'0b_' is not a valid integer"),
        (
            with_raw_line("normalize", "eps", "1" * 100 + ".5"),
            key_line("normalize", "eps"),
            "a 102-character number is longer than any param",
        ),
        ("seed: 1\nx: " + "{" * 300 + "}" * 300, 2, "values nested more than 8 deep"),
        ("seed: 1\na: [" + "1, " * 20_000 + "]\n", 2, "more than 10000 values; params.yaml holds a few dozen"),
    ],
    ids=["anchor", "alias", "merge-key", "python-tag", "0b_", "long-float", "deep", "20000-values"],
)
def test_yaml_refusals_name_their_line(tmp_path: Path, content: str, line: int, message: str):
    # The whole message: the file, the line the user must edit (1-based), and what is wrong there.
    assert refusal(tmp_path, content) == f"{tmp_path / 'params.yaml'}:{line}: {message}"


@pytest.mark.parametrize(
    ("content", "line"),
    [
        (
            COMMITTED.encode() + b"# caf\xe9\n",
            f"byte 0xe9 at line {COMMITTED.count(chr(10)) + 1} (invalid continuation byte",
        ),
        ("seed: 42\n".encode("utf-16"), "byte 0xff at line 1 (invalid start byte"),
        (b"seed: 42\n\x80\n", "byte 0x80 at line 2 (invalid start byte"),
    ],
    ids=["latin-1", "utf-16", "stray-byte"],
)
def test_non_utf8_bytes_are_refused_with_their_line(tmp_path: Path, content: bytes, line: str):
    assert refusal(tmp_path, content) == f"{tmp_path / 'params.yaml'} is not UTF-8 text: {line})"


def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + COMMITTED.encode())
    load_everything(path)


def test_a_folder_is_refused_in_one_line(tmp_path: Path):
    with pytest.raises(ParamError, match=r"cannot be read: Is a directory$"):
        read_params_file(tmp_path)


def test_huge_values_are_shown_shortened(tmp_path: Path):
    message = refusal(tmp_path, with_values({"download.url": ["x" * 1000] * 100}))
    assert message.startswith("download.url must be a string, got ['xxxxxxxxxxxxxxxxxxxxxxxxx")
    message = refusal(tmp_path, with_values({"train.epochs": "x" * 200_000}))
    assert message.startswith("train.epochs must be an integer, got 'xxxxxxxx") and message.endswith("xxx'")


# --- Properties: every mutation of the committed file is refused; the file itself is accepted ------------------


def test_the_committed_file_and_its_plain_dump_are_accepted(tmp_path: Path):
    load_everything(ROOT / "params.yaml")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(committed(), sort_keys=False))
    load_everything(path)


def test_every_key_deleted_and_an_unknown_key_in_every_section_are_refused(tmp_path: Path):
    # The same mutations as the property below, but each one for sure, so no key goes untested in a short run.
    path = tmp_path / "params.yaml"
    for section in [None, *SECTIONS]:
        for key in committed()[section] if section else committed():
            params = committed()
            del (params[section] if section else params)[key]
            path.write_text(yaml.safe_dump(params))
            dotted = f"{section}.{key}" if section else key
            wanted = f"params.yaml has no '{key}' section" if key in SECTIONS else f"{dotted} is missing from params"
            with pytest.raises(ParamError, match=f"^{re.escape(wanted)}"):
                load_everything(path)
        params = committed()
        (params[section] if section else params)["learning_rate"] = 0.1
        path.write_text(yaml.safe_dump(params))
        wanted = f"{section}.learning_rate is not a known key" if section else "learning_rate is not a known params"
        with pytest.raises(ParamError, match=f"^{re.escape(wanted)}"):
            load_everything(path)


# (section or None for the top level, key, the annotation the loader wants)
FIELDS = [(None, "seed", int)] + [(None, name, dict) for name in SECTIONS]
FIELDS += [
    (section, field.name, typing.get_type_hints(cls)[field.name])
    for section, cls in SECTIONS.items()
    for field in dataclasses.fields(cls)
]


def parses_as_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


SCALARS = {
    "null": st.none(),
    "bool": st.booleans(),
    "int": st.integers(-(10**30), 10**30),  # longer literals are refused before their key is known
    "float": st.floats(),  # nan and infinities included
    "str": st.text(max_size=20),
}
ANY_SCALAR = st.one_of(*SCALARS.values())
ANY_VALUE = st.one_of(  # at most two levels: deeper ones are refused for their depth before their key is known
    ANY_SCALAR,
    st.lists(ANY_SCALAR | st.lists(ANY_SCALAR, max_size=2), max_size=3),
    st.dictionaries(st.text(max_size=8), ANY_SCALAR | st.lists(ANY_SCALAR, max_size=2), max_size=3),
)


def values_of_another_type(annotation: typing.Any) -> st.SearchStrategy:
    """Values whose YAML type the loader does not take for `annotation`.

    An int is a number where a float is wanted, and so is a string such as "1e-3" (YAML 1.1 reads
    `1e-3` as a string): both are the same type for a float field, so neither is drawn for one.
    """
    if typing.get_origin(annotation) is tuple:  # a scalar or a mapping, or a list of items of another type
        items = values_of_another_type(typing.get_args(annotation)[0])
        return st.one_of(
            *SCALARS.values(),
            st.dictionaries(st.text(max_size=8), items, max_size=3),
            st.lists(items, min_size=1, max_size=3),
        )
    same = {int: {"int"}, float: {"int", "float"}, bool: {"bool"}, str: {"str"}, dict: set()}[annotation]
    kinds = [strategy for kind, strategy in SCALARS.items() if kind not in same]
    if annotation is float:
        kinds = [k.filter(lambda v: not (isinstance(v, str) and parses_as_float(v))) for k in kinds]
    kinds.append(st.lists(ANY_VALUE, max_size=3))
    if annotation is not dict:
        kinds.append(st.dictionaries(st.text(max_size=8), ANY_VALUE, max_size=3))
    return st.one_of(*kinds)


@st.composite
def mutations(draw: st.DrawFn) -> tuple[dict, str, str]:
    """Return (the committed params with one mutation, the dotted key it touched, what it did)."""
    params = committed()
    section, key, annotation = draw(st.sampled_from(FIELDS))
    target = params[section] if section else params
    dotted = f"{section}.{key}" if section else key
    action = draw(st.sampled_from(["retype", "delete", "add"]))
    if action == "retype":
        target[key] = draw(values_of_another_type(annotation))
    elif action == "delete":
        del target[key]
    else:
        new_key = draw(st.text(min_size=1, max_size=12).filter(lambda k: k not in target))
        target[new_key] = draw(ANY_VALUE)
    return params, dotted, action


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutation=mutations())
def test_every_mutation_of_the_committed_file_is_refused(tmp_path_factory: pytest.TempPathFactory, mutation):
    params, dotted, action = mutation
    path = tmp_path_factory.getbasetemp() / "mutated-params.yaml"
    path.write_text(yaml.dump(params, Dumper=yaml.CSafeDumper, sort_keys=False))  # libyaml: 5 times faster
    with pytest.raises(ParamError) as info:
        load_everything(path)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and len(message) <= MAX_LINE - len("error: "), message
    if action == "add":
        assert "is not a known" in message, message
    elif action == "delete":
        wanted = f"params.yaml has no '{dotted}' section" if dotted in SECTIONS else f"{dotted} is missing from params"
        assert message.startswith(wanted), message
    elif dotted in SECTIONS:
        assert message.startswith(f"params.yaml section '{dotted}' must be a mapping, got "), message
    else:
        assert message.startswith(dotted), message


YAMLISH = st.text(alphabet=st.sampled_from(list("[]{}:,-?&*!|>'\"#%@`~.\\ \t\nab1_=<")), max_size=60)


@settings(max_examples=300, deadline=None)
@given(content=YAMLISH.map(str.encode) | st.binary(max_size=40))
def test_any_text_is_read_or_refused_in_one_line(tmp_path_factory: pytest.TempPathFactory, content: bytes):
    # No traceback for any YAML that parses or fails to parse: ParamError is the only way out.
    path = tmp_path_factory.getbasetemp() / "fuzzed-params.yaml"
    path.write_bytes(content)
    try:
        load_everything(path)
    except ParamError as exc:
        assert len(str(exc).splitlines()) == 1 and len(str(exc)) <= MAX_LINE - len("error: "), str(exc)


def test_a_url_with_credentials_is_shown_without_them_in_a_params_error():
    raw = {**committed()["download"], "url": "https://user:s3cret-token@mirror.example.org/" + "x" * 5000}
    with pytest.raises(ParamError) as info:
        parse_section(DownloadParams, "download", raw)
    assert "s3cret-token" not in str(info.value) and "https://***@mirror.example" in str(info.value)


# --- The one line itself --------------------------------------------------------------------------------------


def test_parts_of_a_message_are_clipped_exactly_at_their_limits():
    from cifar10.params import _clip

    assert _clip("a" * 10, 10) == "a" * 10  # at the limit: whole
    assert _clip("a" * 11, 10) == "aaaaaaa..."  # one over: cut to the limit, dots included


def test_what_yaml_found_wrong_is_one_short_line_with_its_place():
    from yaml.error import Mark, MarkedYAMLError, YAMLError

    from cifar10.params import _yaml_problem

    def mark(line: int, column: int) -> Mark:
        return Mark("params.yaml", 0, line, column, None, None)

    assert _yaml_problem(YAMLError("x" * 161)) == "x" * 157 + "..."  # 160 characters at most
    assert _yaml_problem(YAMLError("x" * 160)) == "x" * 160
    full = MarkedYAMLError("c" * 61, mark(2, 0), "p" * 121, mark(4, 1))
    assert _yaml_problem(full) == "c" * 57 + "... (line 3): " + "p" * 117 + "... at line 5, column 2"
    exact = MarkedYAMLError("c" * 60, None, "p" * 120, None)  # no marks: no places
    assert _yaml_problem(exact) == "c" * 60 + ": " + "p" * 120
    assert _yaml_problem(MarkedYAMLError(None, None, None, None)) == "unreadable"
