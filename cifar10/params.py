"""Typed, validated views of params.yaml: one frozen dataclass per stage section.

The file is read strictly and at a bounded cost, whatever it holds: at most 256 KiB of UTF-8, plain YAML
(no anchors, aliases, tags or merge keys), string keys that each appear once, at most 8 levels and
10,000 values. Every value is then checked: its type, its range (written beside each field below; every
float finite), the length of every list. Anything else raises ParamError with one line of at most
360 characters naming the key and the value, e.g. `train.epochs must be a positive integer, got -3`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import reprlib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cifar10.errors import ParamError

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
# The official archive of each data set: (url, md5). download refuses the other data set's md5 or URL.
OFFICIAL_ARCHIVES = {"cifar10": (OFFICIAL_URL, OFFICIAL_MD5), "cifar100": (CIFAR100_URL, CIFAR100_MD5)}

DATASETS = ("cifar10", "cifar100")
LABEL_KINDS = ("fine", "coarse")  # CIFAR-100's 100 classes or its 20 superclasses; CIFAR-10 has fine only

NORMALIZE_METHODS = ("global", "per_channel")
ACTIVATIONS = ("elu", "relu", "gelu", "swish")
NETWORKS = ("tutorial", "resnet")  # cifar10/model.py draws both
LR_SCHEDULES = ("step", "linear")
OPTIMIZERS = ("rmsprop", "adam", "sgd")
FILL_MODES = ("nearest", "reflect", "wrap", "constant")
MIXED_PRECISION = ("auto", "none", "bfloat16", "float16")
EXPORT_FORMATS = ("saved_model", "litert", "onnx")

# Ranges shared by several fields; each field's comment gives its own range.
MAX_EPOCHS = 100_000  # 3 months on a 2-core CPU at 75 s an epoch, 2 days on an H100; the recipe is 125
MAX_BATCH_SIZE = 65_536  # images per step, train and evaluate; more than the 50,000 images of the training set
MAX_BLOCKS = 5  # each block's 2x2 max pool halves the 32x32 image: a 6th block would pool a 1x1 map
MAX_WIDTH = 4096  # filters per conv layer
MAX_LR_BOUNDARIES = 64  # steps of the learning-rate schedule
# Learning rates above about 1 diverge with every optimizer here, and the train stage then stops with
# `training diverged ... lower train.lr_values` (tests provoke it with 1e6); this bound only stops absurd magnitudes.
MAX_LEARNING_RATE = 1e6

# Limits on the file itself. The committed params.yaml is 3 KB with 60 values, 4 levels deep (mapping,
# section, list, number); these bound the time and memory any file can cost before it is refused.
MAX_FILE_BYTES = 256 * 2**10  # 85 times the committed file; the slowest 256 KiB (blank lines) parse in 0.4 s
MAX_DEPTH = 8  # nodes from the top mapping down: a 20,000-deep `[[[...` stops here, far from RecursionError
MAX_NODES = 10_000  # scalars, lists and mappings together
MAX_NUMBER_CHARS = 64  # longest numeric literal: int() refuses 4300 digits; base-60 `1:2:3...` is quadratic
MAX_MESSAGE_CHARS = 360  # `error: ...` with a 40-character bad key and all 23 train keys known (about 320)

T = TypeVar("T")


class _ShortRepr(reprlib.Repr):
    """repr() cut to a few dozen characters: error messages show values, never megabytes of them."""

    def __init__(self, maxstring: int) -> None:
        super().__init__()
        self.maxstring = self.maxother = maxstring
        self.maxlong = 40
        self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = self.maxdeque = 8
        self.maxdict = 4
        self.maxlevel = 3

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 128:  # str() of a huge int is slow, and refused past 4300 digits
            return f"<{'-' if x < 0 else ''}{x.bit_length()}-bit integer>"
        return super().repr_int(x, level)


_shown = _ShortRepr(maxstring=60).repr
_shown_name = _ShortRepr(maxstring=40).repr  # a key: short enough to leave room for the list of known keys


def _name(key: Any) -> str:
    """Return a key as it appears in messages: itself if short and plain, else a shortened repr."""
    if isinstance(key, str) and re.fullmatch(r"[\w.\-]{1,40}", key, re.ASCII):
        return key
    return _shown_name(key)


def _refuse(message: str) -> ParamError:
    """Return the ParamError carrying `message` as one line of at most MAX_MESSAGE_CHARS characters."""
    line = " ".join(message.splitlines())
    if len(line) > MAX_MESSAGE_CHARS:
        line = line[: MAX_MESSAGE_CHARS - 3] + "..."
    return ParamError(line)


def _check(ok: bool, key: str, rule: str, value: Any) -> None:
    if not ok:
        raise _refuse(f"{key} {rule}, got {_shown(value)}")


# `user:password@` in a URL: never shown in a message (download.url may carry a token for a private mirror).
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*:)?//.*@")  # to the last @: a token may hold / or ?


def redact_credentials(url: str) -> str:
    """Return `url` with its `user:password@` part, if any, shown as `***@`: the only form a message may show."""
    return _USERINFO.sub(lambda m: f"{m['scheme'] or ''}//***@", url, count=1)


@dataclass(frozen=True)
class DownloadParams:
    url: str  # http(s)://, file:// or a local path; 1..4096 characters
    md5: str  # 32 hex digits; the download is refused if the file differs
    timeout: float  # (0, 86400] seconds without data before a connection counts as failed
    retries: int  # 0..100 extra attempts after a connection error or a 5xx answer
    deadline: float  # (0, 604800] seconds (7 days) for the whole download, every attempt and wait included
    max_bytes: int  # 1..2**36 (64 GiB): the largest body accepted, in bytes

    def __post_init__(self) -> None:
        shown = redact_credentials(self.url)
        _check(bool(self.url.strip()), "download.url", "must not be empty", shown)
        _check(len(self.url) <= 4096, "download.url", "must be at most 4096 characters", shown)
        md5 = self.md5.lower()
        _check(
            len(md5) == 32 and all(c in "0123456789abcdef" for c in md5),
            "download.md5",
            "must be 32 hexadecimal digits",
            self.md5,
        )
        _check(self.timeout > 0, "download.timeout", "must be a positive number of seconds", self.timeout)
        _check(self.timeout <= 86_400, "download.timeout", "must be at most 86400 seconds (a day)", self.timeout)
        _check(self.retries >= 0, "download.retries", "must be a non-negative integer", self.retries)
        _check(self.retries <= 100, "download.retries", "must be at most 100", self.retries)
        _check(self.deadline > 0, "download.deadline", "must be a positive number of seconds", self.deadline)
        _check(self.deadline <= 604_800, "download.deadline", "must be at most 604800 seconds (7 days)", self.deadline)
        _check(self.max_bytes > 0, "download.max_bytes", "must be a positive number of bytes", self.max_bytes)
        _check(self.max_bytes <= 2**36, "download.max_bytes", "must be at most 2**36 bytes (64 GiB)", self.max_bytes)


@dataclass(frozen=True)
class DatasetParams:
    name: str  # one of DATASETS: which archive layout download, normalize and evaluate expect
    labels: str  # one of LABEL_KINDS: fine (CIFAR-10's 10 or CIFAR-100's 100 classes) or coarse (CIFAR-100's 20)

    def __post_init__(self) -> None:
        _check(self.name in DATASETS, "dataset.name", f"must be one of {DATASETS}", self.name)
        _check(self.labels in LABEL_KINDS, "dataset.labels", f"must be one of {LABEL_KINDS}", self.labels)
        _check(
            self.name == "cifar100" or self.labels == "fine",
            "dataset.labels",
            "coarse needs dataset.name cifar100 (CIFAR-10 has only its 10 fine classes)",
            self.labels,
        )


def check_archive_matches_dataset(download: DownloadParams, dataset: DatasetParams) -> None:
    """Raise ParamError when download.url or download.md5 is the official archive of another data set than
    dataset.name, naming the URL and md5 to set instead."""
    url, md5 = OFFICIAL_ARCHIVES[dataset.name]
    for other, (other_url, other_md5) in OFFICIAL_ARCHIVES.items():
        if other == dataset.name:
            continue
        key = "md5" if download.md5.lower() == other_md5 else "url" if download.url == other_url else None
        if key:
            raise _refuse(
                f"download.{key} is the official {other} archive's, but dataset.name is {dataset.name}; "
                f"set -S download.url={url} -S download.md5={md5}"
            )


@dataclass(frozen=True)
class NormalizeParams:
    val_size: int  # 0..1,000,000 images held out (stratified) for validation; 0 = none (the split refuses
    # more than the archive's training images)
    method: str  # global: one mean/std over all pixels (the tutorial); per_channel: one per RGB channel
    eps: float  # [0, 1], added to std: (x - mean) / (std + eps); pixel std is about 64

    def __post_init__(self) -> None:
        _check(self.val_size >= 0, "normalize.val_size", "must be a non-negative integer", self.val_size)
        _check(self.val_size <= 1_000_000, "normalize.val_size", "must be at most 1000000", self.val_size)
        _check(self.method in NORMALIZE_METHODS, "normalize.method", f"must be one of {NORMALIZE_METHODS}", self.method)
        _check(self.eps >= 0, "normalize.eps", "must be a non-negative number", self.eps)
        _check(self.eps <= 1, "normalize.eps", "must be at most 1", self.eps)


@dataclass(frozen=True)
class TrainParams:
    epochs: int  # 1..MAX_EPOCHS (100,000)
    batch_size: int  # 1..MAX_BATCH_SIZE (65,536) images per step
    network: str  # tutorial (the Keras tutorial's CNN) | resnet (a small ResNet: the fast recipe's)
    widths: tuple[int, ...]  # filters of each conv block: 1..MAX_BLOCKS (5) blocks, each 1..MAX_WIDTH (4096)
    block_depth: int  # 1..16 conv layers per block
    dropout: tuple[float, ...]  # after each block, one rate per block, each in [0, 1)
    activation: str
    weight_decay: float  # [0, 1]: L2 factor on the conv kernels
    label_smoothing: float  # [0, 1): share of each label's probability spread evenly over all classes
    rotation_deg: float  # [0, 180]: random rotation in [-rotation_deg, +rotation_deg] degrees
    shift: float  # [0, 1): random shift, fraction of width and height
    flip: bool  # random horizontal flip
    fill_mode: str  # how rotation and shift fill pixels from outside the image
    whole_pixel_shift: bool  # shifts rounded to whole pixels: with fill_mode, pad-and-crop
    optimizer: str
    lr_schedule: str  # step: lr_values[i] between boundaries; linear: straight lines between them
    lr_boundaries: tuple[int, ...]  # 0..MAX_LR_BOUNDARIES (64) epochs, strictly increasing in 1..MAX_EPOCHS:
    # epochs completed after which the next value applies
    lr_values: tuple[float, ...]  # one more value than boundaries, each in (0, MAX_LEARNING_RATE (1e6)]; the
    # linear schedule's last one (where it ends) in [0, 1e6]
    lr_decay: float  # [0, 1]: time decay per step: lr / (1 + lr_decay * step), as Keras 2's `decay`
    deterministic: bool  # op determinism: identical metrics on a rerun on CPU (slower)
    mixed_precision: str  # auto (bfloat16 where the hardware has it, else none) | none | bfloat16 | float16 (GPUs)

    def __post_init__(self) -> None:
        _check(self.epochs > 0, "train.epochs", "must be a positive integer", self.epochs)
        _check(self.epochs <= MAX_EPOCHS, "train.epochs", f"must be at most {MAX_EPOCHS}", self.epochs)
        _check(self.batch_size > 0, "train.batch_size", "must be a positive integer", self.batch_size)
        _check(
            self.batch_size <= MAX_BATCH_SIZE, "train.batch_size", f"must be at most {MAX_BATCH_SIZE}", self.batch_size
        )
        _check(
            len(self.widths) > 0 and all(w > 0 for w in self.widths),
            "train.widths",
            "must be a non-empty list of positive integers",
            list(self.widths),
        )
        _check(
            len(self.widths) <= MAX_BLOCKS,
            "train.widths",
            f"must have at most {MAX_BLOCKS} blocks (each halves the 32x32 image)",
            list(self.widths),
        )
        _check(
            all(w <= MAX_WIDTH for w in self.widths), "train.widths", f"must be at most {MAX_WIDTH}", list(self.widths)
        )
        _check(self.block_depth > 0, "train.block_depth", "must be a positive integer", self.block_depth)
        _check(self.block_depth <= 16, "train.block_depth", "must be at most 16", self.block_depth)
        _check(
            len(self.dropout) == len(self.widths),
            "train.dropout",
            f"must have one rate per block ({len(self.widths)})",
            list(self.dropout),
        )
        _check(all(0 <= d < 1 for d in self.dropout), "train.dropout", "rates must be in [0, 1)", list(self.dropout))
        _check(self.network in NETWORKS, "train.network", f"must be one of {NETWORKS}", self.network)
        _check(
            self.network != "resnet" or len(self.widths) >= 2,
            "train.widths",
            "must have at least 2 blocks for train.network resnet (the first is its full-resolution stem)",
            list(self.widths),
        )
        _check(self.activation in ACTIVATIONS, "train.activation", f"must be one of {ACTIVATIONS}", self.activation)
        _check(self.weight_decay >= 0, "train.weight_decay", "must be a non-negative number", self.weight_decay)
        _check(self.weight_decay <= 1, "train.weight_decay", "must be at most 1", self.weight_decay)
        _check(
            0 <= self.label_smoothing < 1, "train.label_smoothing", "must be in [0, 1)", self.label_smoothing
        )
        _check(0 <= self.rotation_deg <= 180, "train.rotation_deg", "must be in [0, 180]", self.rotation_deg)
        _check(0 <= self.shift < 1, "train.shift", "must be in [0, 1)", self.shift)
        _check(self.fill_mode in FILL_MODES, "train.fill_mode", f"must be one of {FILL_MODES}", self.fill_mode)
        _check(self.optimizer in OPTIMIZERS, "train.optimizer", f"must be one of {OPTIMIZERS}", self.optimizer)
        _check(
            self.lr_schedule in LR_SCHEDULES, "train.lr_schedule", f"must be one of {LR_SCHEDULES}", self.lr_schedule
        )
        _check(
            len(self.lr_boundaries) <= MAX_LR_BOUNDARIES,
            "train.lr_boundaries",
            f"must have at most {MAX_LR_BOUNDARIES} epochs",
            list(self.lr_boundaries),
        )
        _check(
            len(self.lr_values) == len(self.lr_boundaries) + 1,
            "train.lr_values",
            f"must have one more value than train.lr_boundaries ({len(self.lr_boundaries)})",
            list(self.lr_values),
        )
        _check(
            all(0 < b <= MAX_EPOCHS for b in self.lr_boundaries)
            and all(a < b for a, b in zip(self.lr_boundaries, self.lr_boundaries[1:])),
            "train.lr_boundaries",
            f"must be positive and strictly increasing epochs, at most {MAX_EPOCHS}",
            list(self.lr_boundaries),
        )
        # The linear schedule's last value is where it ends (at the last epoch): 0 is the usual end of one cycle.
        positive = self.lr_values[:-1] if self.lr_schedule == "linear" else self.lr_values
        _check(all(v > 0 for v in positive), "train.lr_values", "must be positive", list(self.lr_values))
        _check(self.lr_values[-1] >= 0, "train.lr_values", "must not be negative", list(self.lr_values))
        _check(max(self.lr_values) > 0, "train.lr_values", "must hold a rate above 0", list(self.lr_values))
        _check(
            self.lr_schedule != "linear" or all(b < self.epochs for b in self.lr_boundaries),
            "train.lr_boundaries",
            f"must be below train.epochs ({self.epochs}) for the linear schedule, which ends at the last epoch",
            list(self.lr_boundaries),
        )
        _check(
            all(v <= MAX_LEARNING_RATE for v in self.lr_values),
            "train.lr_values",
            f"must be at most {MAX_LEARNING_RATE:g}",
            list(self.lr_values),
        )
        _check(self.lr_decay >= 0, "train.lr_decay", "must be a non-negative number", self.lr_decay)
        _check(self.lr_decay <= 1, "train.lr_decay", "must be at most 1", self.lr_decay)
        _check(
            self.mixed_precision in MIXED_PRECISION,
            "train.mixed_precision",
            f"must be one of {MIXED_PRECISION}",
            self.mixed_precision,
        )


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int  # 1..MAX_BATCH_SIZE (65,536) images per inference step; no effect on the result
    flip_tta: bool  # test-time augmentation: average the probabilities of each image and its mirror image

    def __post_init__(self) -> None:
        _check(self.batch_size > 0, "evaluate.batch_size", "must be a positive integer", self.batch_size)
        _check(
            self.batch_size <= MAX_BATCH_SIZE,
            "evaluate.batch_size",
            f"must be at most {MAX_BATCH_SIZE}",
            self.batch_size,
        )


@dataclass(frozen=True)
class GateParams:
    min_test_accuracy: float  # [0, 1]: fail below this test accuracy; 0 turns the floor off
    baseline_rev: str  # a git revision whose metrics/evaluate.json sets the bar; "" turns the comparison off
    max_drop: float  # [0, 1]: how far test accuracy may fall below the baseline's (0.01 = one point)

    def __post_init__(self) -> None:
        for key, value in (("gate.min_test_accuracy", self.min_test_accuracy), ("gate.max_drop", self.max_drop)):
            _check(0 <= value <= 1, key, "must be in [0, 1]", value)
        # A revision is passed to `git show REV:path`: no option (-...), no path part (:), no control characters.
        _check(len(self.baseline_rev) <= 256, "gate.baseline_rev", "must be at most 256 characters", self.baseline_rev)
        _check(
            re.fullmatch(r"(?:[\w./~^@{}+\-]*)", self.baseline_rev, re.ASCII) is not None
            and not self.baseline_rev.startswith("-"),
            "gate.baseline_rev",
            "must be a git revision (letters, digits and . / ~ ^ @ { } + - _, not starting with -)",
            self.baseline_rev,
        )


@dataclass(frozen=True)
class ExportParams:
    formats: tuple[str, ...]  # each of EXPORT_FORMATS at most once; the .keras model is always written by train

    def __post_init__(self) -> None:
        _check(
            all(f in EXPORT_FORMATS for f in self.formats) and len(set(self.formats)) == len(self.formats),
            "export.formats",
            f"must list each of {EXPORT_FORMATS} at most once",
            list(self.formats),
        )


MAX_DEVICES = 64  # GPUs named in resources.devices
STRATEGIES = ("one", "mirrored", "multi_worker")


@dataclass(frozen=True)
class ResourceParams:
    """Where train and evaluate run, not what they compute: no stage declares this section as a dependency,
    so moving a run to another GPU never makes DVC retrain."""

    devices: tuple[int, ...]  # GPU indices (as nvidia-smi numbers them), each 0..1023 once; () = every GPU
    strategy: str  # one of STRATEGIES: one device; data-parallel over this machine's devices, or several machines'

    def __post_init__(self) -> None:
        _check(self.strategy in STRATEGIES, "resources.strategy", f"must be one of {STRATEGIES}", self.strategy)
        _check(
            len(self.devices) <= MAX_DEVICES
            and len(set(self.devices)) == len(self.devices)
            and all(0 <= d <= 1023 for d in self.devices),
            "resources.devices",
            f"must list up to {MAX_DEVICES} GPU indices, each 0..1023 at most once",
            list(self.devices),
        )


SECTIONS: dict[str, type] = {
    "dataset": DatasetParams,
    "download": DownloadParams,
    "normalize": NormalizeParams,
    "train": TrainParams,
    "evaluate": EvaluateParams,
    "gate": GateParams,
    "export": ExportParams,
    "resources": ResourceParams,
}


class _Refused(Exception):
    """Raised inside the YAML loader: `reason` refuses the file at 1-based `line`."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(reason)
        self.line = line
        self.reason = reason


_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _ParamsLoader(yaml.SafeLoader):
    """A SafeLoader for the plain YAML of params.yaml, whose cost is bounded by the file's size.

    Anchors and aliases are refused outright: params.yaml never needs them (DVC's `-S` writes plain
    values), and an alias is the one way a few KB of YAML becomes gigabytes of values (the billion
    laughs). Explicit tags (`!!float`, `!!binary`, `!custom`) are refused too: plain values need none,
    and they are the only way to reach constructors that fail with a Python error on bad text.
    Nesting, the number of nodes and the length of numbers are bounded; duplicate keys, non-string keys
    and merge keys (`<<`) are refused, naming the key and its line.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._nodes = 0
        self._path: list[str] = []  # dotted names of the nodes being composed, outermost first
        self._mapping_paths: dict[int, str] = {}  # id(MappingNode) -> its dotted name, for messages

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent) or event.anchor is not None:
            sign = "*" if isinstance(event, yaml.AliasEvent) else "&"
            raise _Refused(line, f"YAML anchors and aliases are not accepted, found {sign}{_name(event.anchor)}")
        if event.tag is not None:
            tag = event.tag.replace("tag:yaml.org,2002:", "!!")  # as written: `!!float`
            raise _Refused(line, f"YAML tags are not accepted, found {_shown(tag)}; write the plain value")
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise _Refused(line, f"more than {MAX_NODES} values; params.yaml holds a few dozen")
        if len(self._path) >= MAX_DEPTH:
            raise _Refused(line, f"values nested more than {MAX_DEPTH} deep")
        base = self._path[-1] if self._path else ""
        if isinstance(parent, yaml.SequenceNode):
            path = f"{base}[{index}]"
        elif isinstance(index, yaml.ScalarNode):  # the value of a mapping's key
            path = f"{base}.{_name(index.value)}" if base else _name(index.value)
        else:  # the top node, or a key
            path = base
        self._path.append(path)
        node = super().compose_node(parent, index)
        self._path.pop()
        if isinstance(node, yaml.MappingNode):
            self._mapping_paths[id(node)] = path
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        where = self._mapping_paths.get(id(node), "")
        first_lines: dict[str, int] = {}
        for key_node, _ in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == _MERGE_TAG:
                raise _Refused(line, "YAML merge keys (<<) are not accepted")
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _STR_TAG:
                if isinstance(key_node, yaml.ScalarNode):  # `1:`, `true:`, `null:` read as int, bool, null
                    shown = f"{_shown(key_node.value)} ({key_node.tag.rsplit(':', 1)[-1]})"
                else:  # `? [a, b]`
                    shown = f"a {key_node.id}"
                inside = f" in {where}" if where else ""
                raise _Refused(line, f"keys must be strings, got {shown}{inside}")
            key = key_node.value
            if key in first_lines:
                name = f"{where}.{_name(key)}" if where else _name(key)
                raise _Refused(line, f"duplicate key {name} (first at line {first_lines[key]})")
            first_lines[key] = line
        return super().construct_mapping(node, deep=deep)


def _bounded_scalar(construct: Any, kind: str) -> Any:
    """Return `construct` wrapped for _ParamsLoader: a literal longer than MAX_NUMBER_CHARS, or text Python cannot
    build (`0b_` resolves as an int, `2001-13-45` as a date), is refused in one line instead of a traceback."""

    def construct_bounded(loader: _ParamsLoader, node: yaml.ScalarNode) -> Any:
        line = node.start_mark.line + 1
        if len(node.value) > MAX_NUMBER_CHARS:
            raise _Refused(line, f"a {len(node.value)}-character {kind} is longer than any param")
        try:
            return construct(loader, node)
        except ValueError:
            raise _Refused(line, f"{_shown(node.value)} is not a valid {kind}") from None

    return construct_bounded


for _tag, _kind in (("int", "integer"), ("float", "number"), ("timestamp", "date")):
    _ParamsLoader.add_constructor(
        f"tag:yaml.org,2002:{_tag}",
        _bounded_scalar(_ParamsLoader.yaml_constructors[f"tag:yaml.org,2002:{_tag}"], _kind),
    )


def _clip(text: str, limit: int) -> str:
    """Return `text` on one line, cut to at most `limit` characters."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Return what PyYAML found wrong, with its line and column, as one short line."""
    if isinstance(exc, yaml.reader.ReaderError):  # a control character
        return f"{exc.reason}: character #x{exc.character:04x} at position {exc.position}"
    if not isinstance(exc, yaml.MarkedYAMLError):
        return _clip(str(exc), 160)
    text = ""
    if exc.context:  # "while parsing a flow sequence"
        text = _clip(exc.context, 60) + (f" (line {exc.context_mark.line + 1})" if exc.context_mark else "") + ": "
    text += _clip(exc.problem or "unreadable", 120)
    if exc.problem_mark is not None:
        text += f" at line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1}"
    return text


def _read_text(path: Path) -> str:
    """Return the text of the params file at `path`, at most MAX_FILE_BYTES of UTF-8."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)  # never more, whatever the file is (a 50 MB log, /dev/zero)
    except FileNotFoundError:
        raise _refuse(f"{path} not found") from None
    except OSError as exc:
        raise _refuse(f"{path} cannot be read: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise _refuse(f"{path} is larger than {MAX_FILE_BYTES // 2**10} KiB; params.yaml holds a few dozen values")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise _refuse(f"{path} is not UTF-8 text: byte 0x{data[exc.start]:02x} at line {line} ({exc.reason})") from None


def _coerce(key: str, annotation: Any, value: Any) -> Any:
    """Return `value` as the annotated type, or raise ParamError naming `key`; floats come back finite."""
    origin = typing.get_origin(annotation)
    if origin is tuple:
        item_type = typing.get_args(annotation)[0]
        if not isinstance(value, list | tuple):
            raise _refuse(f"{key} must be a list of {item_type.__name__}, got {_shown(value)}")
        return tuple(_coerce(f"{key}[{i}]", item_type, v) for i, v in enumerate(value))
    if annotation is bool:
        if not isinstance(value, bool):
            raise _refuse(f"{key} must be true or false, got {_shown(value)}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _refuse(f"{key} must be an integer, got {_shown(value)}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string: accept it if it is a number
            try:
                number = float(value)
            except ValueError:
                raise _refuse(f"{key} must be a number, got {_shown(value)}") from None
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise _refuse(f"{key} must be a number, got {_shown(value)}")
        else:
            try:
                number = float(value)
            except OverflowError:  # an int beyond the largest float
                number = math.inf
        if not math.isfinite(number):  # `.inf`, `.nan`, "Infinity", 1e999
            raise _refuse(f"{key} must be a finite number, got {_shown(value)}")
        return number
    if annotation is str:
        if not isinstance(value, str):
            raise _refuse(f"{key} must be a string, got {_shown(value)}")
        return value
    raise TypeError(f"unsupported annotation {annotation!r} for {key}")  # a bug in this module


def parse_section(cls: type[T], section: str, raw: Any) -> T:
    """Build the dataclass `cls` from the mapping `raw` found under `section` in params.yaml."""
    if not isinstance(raw, dict):
        raise _refuse(f"params.yaml section '{section}' must be a mapping, got {_shown(raw)}")
    fields = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    not_strings = [k for k in raw if not isinstance(k, str)]
    if not_strings:
        raise _refuse(f"{section} keys must be strings, got {_shown(not_strings[0])}")
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise _refuse(f"{section}.{_name(unknown[0])} is not a known key (known: {', '.join(fields)})")
    hints = typing.get_type_hints(cls)
    values = {}
    for name in fields:
        if name not in raw:  # the defaults live in params.yaml alone
            raise _refuse(f"{section}.{name} is missing from params.yaml")
        values[name] = _coerce(f"{section}.{name}", hints[name], raw[name])
    return cls(**values)


def read_params_file(path: Path) -> dict[str, Any]:
    """Return params.yaml as a mapping of sections, or raise ParamError with one line saying why it is not one.

    Section values are checked later, by load_section and load_seed; the file itself is refused if it is
    missing, too large, not UTF-8, not YAML, or YAML beyond what params.yaml needs (see _ParamsLoader).
    """
    text = _read_text(path)
    try:
        raw = yaml.load(text, Loader=_ParamsLoader)
    except _Refused as exc:
        raise _refuse(f"{path}:{exc.line}: {exc.reason}") from None
    except yaml.YAMLError as exc:
        raise _refuse(f"{path} is not valid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(raw, dict):
        raise _refuse(f"{path} must be a mapping of sections, got {type(raw).__name__}")
    # Every stage refuses a misspelt section (`trian:`), not only the stage that would read it.
    unknown = sorted(set(raw) - set(SECTIONS) - {"seed"})
    if unknown:
        raise _refuse(f"{_name(unknown[0])} is not a known params.yaml section (known: seed, {', '.join(SECTIONS)})")
    return raw


def load_seed(raw: dict[str, Any]) -> int:
    """Return the top-level seed that drives every random choice of the pipeline, an integer in [0, 2**31)."""
    if "seed" not in raw:
        raise _refuse("seed is missing from params.yaml")
    seed = _coerce("seed", int, raw["seed"])
    _check(0 <= seed < 2**31, "seed", "must be an integer in [0, 2**31)", seed)
    return seed


def load_section(raw: dict[str, Any], section: str) -> Any:
    """Return the typed params of one stage section of params.yaml."""
    if section not in raw:
        raise _refuse(f"params.yaml has no '{section}' section")
    return parse_section(SECTIONS[section], section, raw[section])


def as_dict(params: Any) -> dict[str, Any]:
    """Return a dataclass of params as a dict for json.dumps (which writes its tuples as lists)."""
    return dataclasses.asdict(params)


def load_section_from(path: Path, section: str, **overrides: Any) -> Any:
    """Return one section of the params file at `path` with some values replaced, all checked as usual.

    For benchmarks and tests, which start from the committed recipe and change a few values.
    """
    raw = read_params_file(path)
    if section not in raw or not isinstance(raw[section], dict):
        raise _refuse(f"params.yaml has no '{section}' section")
    return parse_section(SECTIONS[section], section, {**raw[section], **overrides})
