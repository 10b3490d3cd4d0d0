"""Typed, validated views of params.yaml: one frozen dataclass per stage section.

An unknown key, a missing key, a wrong type or an out-of-range value raises ParamError
with one line naming the key and the value, e.g. `train.epochs must be a positive integer, got -3`.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cifar10.errors import ParamError

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"

NORMALIZE_METHODS = ("global", "per_channel")
ACTIVATIONS = ("elu", "relu", "gelu", "swish")
OPTIMIZERS = ("rmsprop", "adam", "sgd")
FILL_MODES = ("nearest", "reflect", "wrap", "constant")
MIXED_PRECISION = ("none", "bfloat16", "float16")


@dataclass(frozen=True)
class DownloadParams:
    url: str  # http(s)://, file:// or a local path
    md5: str  # 32 hex digits; the download is refused if the file differs
    timeout: float  # seconds without data before a connection counts as failed
    retries: int  # extra attempts after a connection error or a 5xx answer
    deadline: float  # seconds for the whole download, every attempt and wait included
    max_bytes: int  # the largest body accepted, in bytes

    def __post_init__(self) -> None:
        _check(bool(self.url.strip()), "download.url", "must not be empty", self.url)
        md5 = self.md5.lower()
        _check(
            len(md5) == 32 and all(c in "0123456789abcdef" for c in md5),
            "download.md5",
            "must be 32 hexadecimal digits",
            self.md5,
        )
        _check(self.timeout > 0, "download.timeout", "must be a positive number of seconds", self.timeout)
        _check(self.retries >= 0, "download.retries", "must be a non-negative integer", self.retries)
        _check(self.deadline > 0, "download.deadline", "must be a positive number of seconds", self.deadline)
        _check(self.max_bytes > 0, "download.max_bytes", "must be a positive number of bytes", self.max_bytes)


@dataclass(frozen=True)
class NormalizeParams:
    val_size: int  # images held out (stratified) from the 50,000 for validation; 0 = none
    method: str  # global: one mean/std over all pixels (the tutorial); per_channel: one per RGB channel
    eps: float  # added to std: (x - mean) / (std + eps)

    def __post_init__(self) -> None:
        _check(self.val_size >= 0, "normalize.val_size", "must be a non-negative integer", self.val_size)
        _check(self.method in NORMALIZE_METHODS, "normalize.method", f"must be one of {NORMALIZE_METHODS}", self.method)
        _check(self.eps >= 0, "normalize.eps", "must be a non-negative number", self.eps)


@dataclass(frozen=True)
class TrainParams:
    epochs: int
    batch_size: int  # images per step
    widths: tuple[int, ...]  # filters of each conv block
    block_depth: int  # conv layers per block
    dropout: tuple[float, ...]  # after each block
    activation: str
    weight_decay: float  # L2 factor on the conv kernels
    rotation_deg: float  # random rotation in [-rotation_deg, +rotation_deg] degrees
    shift: float  # random shift, fraction of width and height
    flip: bool  # random horizontal flip
    fill_mode: str  # how rotation and shift fill pixels from outside the image
    optimizer: str
    lr_boundaries: tuple[int, ...]  # epochs completed after which the next value applies
    lr_values: tuple[float, ...]  # one more value than boundaries
    lr_decay: float  # time decay per step: lr / (1 + lr_decay * step), as Keras 2's `decay`
    deterministic: bool  # op determinism: identical metrics on a rerun on CPU (slower)
    mixed_precision: str  # none | bfloat16 (CPUs with AVX-512 BF16/AMX, Ampere+ GPUs) | float16 (GPUs)

    def __post_init__(self) -> None:
        _check(self.epochs > 0, "train.epochs", "must be a positive integer", self.epochs)
        _check(self.batch_size > 0, "train.batch_size", "must be a positive integer", self.batch_size)
        _check(
            len(self.widths) > 0 and all(w > 0 for w in self.widths),
            "train.widths",
            "must be a non-empty list of positive integers",
            list(self.widths),
        )
        _check(self.block_depth > 0, "train.block_depth", "must be a positive integer", self.block_depth)
        _check(
            len(self.dropout) == len(self.widths),
            "train.dropout",
            f"must have one rate per block ({len(self.widths)})",
            list(self.dropout),
        )
        _check(all(0 <= d < 1 for d in self.dropout), "train.dropout", "rates must be in [0, 1)", list(self.dropout))
        _check(self.activation in ACTIVATIONS, "train.activation", f"must be one of {ACTIVATIONS}", self.activation)
        _check(self.weight_decay >= 0, "train.weight_decay", "must be a non-negative number", self.weight_decay)
        _check(0 <= self.rotation_deg <= 180, "train.rotation_deg", "must be in [0, 180]", self.rotation_deg)
        _check(0 <= self.shift < 1, "train.shift", "must be in [0, 1)", self.shift)
        _check(self.fill_mode in FILL_MODES, "train.fill_mode", f"must be one of {FILL_MODES}", self.fill_mode)
        _check(self.optimizer in OPTIMIZERS, "train.optimizer", f"must be one of {OPTIMIZERS}", self.optimizer)
        _check(
            len(self.lr_values) == len(self.lr_boundaries) + 1,
            "train.lr_values",
            f"must have one more value than train.lr_boundaries ({len(self.lr_boundaries)})",
            list(self.lr_values),
        )
        _check(
            all(b > 0 for b in self.lr_boundaries)
            and all(a < b for a, b in zip(self.lr_boundaries, self.lr_boundaries[1:])),
            "train.lr_boundaries",
            "must be positive and strictly increasing epochs",
            list(self.lr_boundaries),
        )
        _check(all(v > 0 for v in self.lr_values), "train.lr_values", "must be positive", list(self.lr_values))
        _check(self.lr_decay >= 0, "train.lr_decay", "must be a non-negative number", self.lr_decay)
        _check(
            self.mixed_precision in MIXED_PRECISION,
            "train.mixed_precision",
            f"must be one of {MIXED_PRECISION}",
            self.mixed_precision,
        )


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int  # images per inference step; no effect on the result

    def __post_init__(self) -> None:
        _check(self.batch_size > 0, "evaluate.batch_size", "must be a positive integer", self.batch_size)


SECTIONS: dict[str, type] = {
    "download": DownloadParams,
    "normalize": NormalizeParams,
    "train": TrainParams,
    "evaluate": EvaluateParams,
}

T = TypeVar("T")


def _check(ok: bool, key: str, rule: str, value: Any) -> None:
    if not ok:
        raise ParamError(f"{key} {rule}, got {value!r}")


def _coerce(key: str, annotation: Any, value: Any) -> Any:
    """Return `value` as the annotated type, or raise ParamError naming `key`."""
    origin = typing.get_origin(annotation)
    if origin is tuple:
        item_type = typing.get_args(annotation)[0]
        if not isinstance(value, list | tuple):
            raise ParamError(f"{key} must be a list of {item_type.__name__}, got {value!r}")
        return tuple(_coerce(f"{key}[{i}]", item_type, v) for i, v in enumerate(value))
    if annotation is bool:
        if not isinstance(value, bool):
            raise ParamError(f"{key} must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamError(f"{key} must be an integer, got {value!r}")
        return value
    if annotation is float:
        # YAML reads `1e-3` (no dot) as a string: accept it if it parses as a number.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ParamError(f"{key} must be a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ParamError(f"{key} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {annotation!r} for {key}")  # a bug in this module


def parse_section(cls: type[T], section: str, raw: Any) -> T:
    """Build the dataclass `cls` from the mapping `raw` found under `section` in params.yaml."""
    if not isinstance(raw, dict):
        raise ParamError(f"params.yaml section '{section}' must be a mapping, got {raw!r}")
    fields = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ParamError(f"{section}.{unknown[0]} is not a known key (known: {', '.join(fields)})")
    hints = typing.get_type_hints(cls)
    values = {}
    for name in fields:
        if name not in raw:  # the defaults live in params.yaml alone
            raise ParamError(f"{section}.{name} is missing from params.yaml")
        values[name] = _coerce(f"{section}.{name}", hints[name], raw[name])
    return cls(**values)


def read_params_file(path: Path) -> dict[str, Any]:
    """Return params.yaml as a mapping, or raise ParamError if it is missing or not a mapping."""
    try:
        with path.open() as f:
            raw = yaml.safe_load(f)
    except FileNotFoundError:
        raise ParamError(f"{path} not found") from None
    except yaml.YAMLError as exc:
        raise ParamError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(raw, dict):
        raise ParamError(f"{path} must be a mapping of sections, got {type(raw).__name__}")
    # Every stage refuses a misspelt section (`trian:`), not only the stage that would read it.
    unknown = sorted(set(raw) - set(SECTIONS) - {"seed"})
    if unknown:
        raise ParamError(f"{unknown[0]} is not a known params.yaml section (known: seed, {', '.join(SECTIONS)})")
    return raw


def load_seed(raw: dict[str, Any]) -> int:
    """Return the top-level seed that drives every random choice of the pipeline."""
    if "seed" not in raw:
        raise ParamError("seed is missing from params.yaml")
    seed = _coerce("seed", int, raw["seed"])
    _check(0 <= seed < 2**31, "seed", "must be an integer in [0, 2**31)", seed)
    return seed


def load_section(raw: dict[str, Any], section: str) -> Any:
    """Return the typed params of one stage section of params.yaml."""
    if section not in raw:
        raise ParamError(f"params.yaml has no '{section}' section")
    return parse_section(SECTIONS[section], section, raw[section])


def as_dict(params: Any) -> dict[str, Any]:
    """Return a dataclass of params as plain JSON-ready values (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(params).items()}


def load_section_from(path: Path, section: str, **overrides: Any) -> Any:
    """Return one section of the params file at `path` with some values replaced, all checked as usual.

    For benchmarks and tests, which start from the committed recipe and change a few values.
    """
    raw = read_params_file(path)
    if section not in raw or not isinstance(raw[section], dict):
        raise ParamError(f"params.yaml has no '{section}' section")
    return parse_section(SECTIONS[section], section, {**raw[section], **overrides})
