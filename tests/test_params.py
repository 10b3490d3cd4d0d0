"""params.yaml loads into typed sections; bad values stop a stage with one line naming key and value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cifar10.errors import ParamError
from cifar10.params import (
    OFFICIAL_MD5,
    OFFICIAL_URL,
    SECTIONS,
    DownloadParams,
    EvaluateParams,
    NormalizeParams,
    ResourceParams,
    TrainParams,
    load_section,
    load_seed,
    parse_section,
    read_params_file,
    redact_credentials,
)
from tests.conftest import ROOT, stage_env


def committed_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_committed_params_are_the_tutorial_recipe():
    raw = read_params_file(ROOT / "params.yaml")  # also refuses unknown sections
    assert load_seed(raw) == 42
    download = load_section(raw, "download")
    assert (download.url, download.md5) == (OFFICIAL_URL, OFFICIAL_MD5)
    normalize = load_section(raw, "normalize")
    assert (normalize.val_size, normalize.method, normalize.eps) == (5000, "global", 1e-7)
    train = load_section(raw, "train")
    assert (train.epochs, train.batch_size, train.widths, train.dropout) == (125, 64, (32, 64, 128), (0.2, 0.3, 0.4))
    assert (train.optimizer, train.lr_boundaries, train.lr_values, train.lr_decay) == (
        "rmsprop",
        (75, 100),
        (1e-3, 5e-4, 3e-4),
        1e-6,
    )
    assert (train.rotation_deg, train.shift, train.flip, train.activation) == (15.0, 0.1, True, "elu")
    # The fast recipe's options are off: the tutorial's network, loss, shifts and schedule (recipes/ turns them on).
    assert (train.network, train.label_smoothing, train.whole_pixel_shift, train.lr_schedule) == (
        "tutorial",
        0.0,
        False,
        "step",
    )
    assert train.mixed_precision == "auto"  # float32 unless the hardware runs bfloat16 natively
    assert load_section(raw, "evaluate") == EvaluateParams(batch_size=500, flip_tta=False)
    assert load_section(raw, "resources") == ResourceParams(devices=(), strategy="one")  # every GPU there is


LR_REFUSED = "train.lr_values must be positive, got "
DEVICES_REFUSED = "resources.devices must list up to 64 GPU indices, each 0..1023 at most once, got "


@pytest.mark.parametrize(
    ("section", "cls", "raw", "message"),
    [
        ("train", TrainParams, {"epochs": -3}, "train.epochs must be a positive integer, got -3"),
        ("train", TrainParams, {"epochs": 0}, "train.epochs must be a positive integer, got 0"),
        ("train", TrainParams, {"epochs": "ten"}, "train.epochs must be an integer, got 'ten'"),
        ("train", TrainParams, {"epochs": 2.5}, "train.epochs must be an integer, got 2.5"),
        ("train", TrainParams, {"epochs": True}, "train.epochs must be an integer, got True"),
        (
            "train",
            TrainParams,
            {"epoch": 3},
            "train.epoch is not a known key (known: epochs, batch_size, network, widths, block_depth, dropout, "
            "activation, weight_decay, label_smoothing, rotation_deg, shift, flip, fill_mode, whole_pixel_shift, "
            "optimizer, lr_schedule, lr_boundaries, lr_values, lr_decay, deterministic, mixed_precision)",
        ),
        ("train", TrainParams, {"batch_size": 0}, "train.batch_size must be a positive integer, got 0"),
        (
            "train",
            TrainParams,
            {"dropout": [0.2, 0.3, 1.0]},
            "train.dropout rates must be in [0, 1), got [0.2, 0.3, 1.0]",
        ),
        ("train", TrainParams, {"dropout": [0.2]}, "train.dropout must have one rate per block (3), got [0.2]"),
        (
            "train",
            TrainParams,
            {"lr_values": [1e-3]},
            "train.lr_values must have one more value than train.lr_boundaries (2), got [0.001]",
        ),
        (
            "train",
            TrainParams,
            {"lr_boundaries": [100, 75]},
            "train.lr_boundaries must be positive and strictly increasing epochs, at most 100000, got [100, 75]",
        ),
        ("train", TrainParams, {"widths": "32"}, "train.widths must be a list of int, got '32'"),
        (
            "train",
            TrainParams,
            {"activation": "tanhh"},
            "train.activation must be one of ('elu', 'relu', 'gelu', 'swish'), got 'tanhh'",
        ),
        ("train", TrainParams, {"network": "vgg"}, "train.network must be one of ('tutorial', 'resnet'), got 'vgg'"),
        ("train", TrainParams, {"widths": []}, "train.widths must be a non-empty list of positive integers, got []"),
        ("train", TrainParams, {"mixed_precision": False}, "train.mixed_precision must be a string, got False"),
        (
            "train",
            TrainParams,
            {"mixed_precision": "fp16"},
            "train.mixed_precision must be one of ('auto', 'none', 'bfloat16', 'float16'), got 'fp16'",
        ),
        (
            "train",
            TrainParams,
            {"fill_mode": "edge"},
            "train.fill_mode must be one of ('nearest', 'reflect', 'wrap', 'constant'), got 'edge'",
        ),
        (
            "train",
            TrainParams,
            {"optimizer": "adamw"},
            "train.optimizer must be one of ('rmsprop', 'adam', 'sgd'), got 'adamw'",
        ),
        (
            "train",
            TrainParams,
            {"lr_schedule": "cosine"},
            "train.lr_schedule must be one of ('step', 'linear'), got 'cosine'",
        ),
        (
            "train",
            TrainParams,
            {"network": "resnet", "widths": [64], "dropout": [0.0], "block_depth": 1},
            "train.widths must have at least 2 blocks for train.network resnet (the first is its full-resolution "
            "stem), got [64]",
        ),
        (
            "train",
            TrainParams,
            {"lr_boundaries": [10, 10], "lr_values": [0.1, 0.01, 0.001]},  # equal epochs: not strictly increasing
            "train.lr_boundaries must be positive and strictly increasing epochs, at most 100000, got [10, 10]",
        ),
        # Every rate positive; a linear schedule's last one may be 0 (it decays to it), no other.
        ("train", TrainParams, {"lr_boundaries": [10], "lr_values": [0.4, 0.0]}, LR_REFUSED + "[0.4, 0.0]"),
        (
            "train",
            TrainParams,
            {"lr_schedule": "linear", "lr_boundaries": [10], "lr_values": [0.0, 0.0]},
            LR_REFUSED + "[0.0, 0.0]",
        ),
        ("train", TrainParams, {"deterministic": "yes"}, "train.deterministic must be true or false, got 'yes'"),
        ("normalize", NormalizeParams, {"val_size": -1}, "normalize.val_size must be a non-negative integer, got -1"),
        (
            "normalize",
            NormalizeParams,
            {"method": "minmax"},
            "normalize.method must be one of ('global', 'per_channel'), got 'minmax'",
        ),
        ("download", DownloadParams, {"url": "  "}, "download.url must not be empty, got '  '"),
        (
            "download",
            DownloadParams,
            {"url": "x", "md5": "abc"},
            "download.md5 must be 32 hexadecimal digits, got 'abc'",
        ),
        (
            "download",
            DownloadParams,
            {"url": "x", "md5": "X" * 32},
            "download.md5 must be 32 hexadecimal digits, got 'XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX'",
        ),
        ("evaluate", EvaluateParams, {"batch_size": -5}, "evaluate.batch_size must be a positive integer, got -5"),
        ("resources", ResourceParams, {"devices": 0}, "resources.devices must be a list of int, got 0"),
        ("resources", ResourceParams, {"devices": [0, 0]}, DEVICES_REFUSED + "[0, 0]"),
        ("resources", ResourceParams, {"devices": [-1]}, DEVICES_REFUSED + "[-1]"),
        ("resources", ResourceParams, {"devices": [1024]}, DEVICES_REFUSED + "[1024]"),
        ("resources", ResourceParams, {"devices": list(range(65))}, DEVICES_REFUSED + "[0, 1, 2, 3, 4, 5, 6, 7, ...]"),
        ("resources", ResourceParams, {"devices": ["0"]}, "resources.devices[0] must be an integer, got '0'"),
        (
            "resources",
            ResourceParams,
            {"strategy": "multi"},
            "resources.strategy must be one of ('one', 'mirrored', 'multi_worker'), got 'multi'",
        ),
    ],
)
def test_bad_values_name_the_key_and_the_value(section, cls, raw, message):
    with pytest.raises(ParamError) as info:
        parse_section(cls, section, {**committed_params()[section], **raw})
    assert str(info.value) == message  # whole: the key, the rule and the value given


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([1, 2], "params.yaml section 'normalize' must be a mapping, got [1, 2]"),
        ({"method": "global", 1: 2}, "normalize keys must be strings, got 1"),
    ],
)
def test_parse_section_refuses_what_is_not_a_mapping_of_names(raw, message):
    # The loader refuses these first, in its own words; parse_section checks again for any other caller.
    with pytest.raises(ParamError) as info:
        parse_section(NormalizeParams, "normalize", raw)
    assert str(info.value) == message


def test_numbers_written_without_a_dot_are_accepted_as_floats():
    # YAML 1.1 reads `1e-3` as a string; users write it that way all the time.
    raw = {**committed_params()["train"], "lr_values": ["1e-3", 5e-4, "3e-4"], "weight_decay": 0}
    params = parse_section(TrainParams, "train", raw)
    assert params.lr_values == (1e-3, 5e-4, 3e-4)
    assert params.weight_decay == 0.0


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_every_missing_key_is_named(section):
    # The defaults live in params.yaml alone: deleting `train.epochs` must not silently train 125 epochs.
    for key in committed_params()[section]:
        raw = {k: v for k, v in committed_params()[section].items() if k != key}
        with pytest.raises(ParamError, match=rf"^{section}\.{key} is missing from params.yaml$"):
            parse_section(SECTIONS[section], section, raw)


def test_missing_section_and_unknown_section_are_refused(tmp_path: Path):
    raw = committed_params()
    del raw["train"]
    with pytest.raises(ParamError, match="params.yaml has no 'train' section"):
        load_section(raw, "train")
    raw = committed_params()
    raw["trian"] = {}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamError, match="trian is not a known params.yaml section"):
        read_params_file(tmp_path / "params.yaml")


def test_unreadable_params_file(tmp_path: Path):
    bad = tmp_path / "params.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ParamError, match="is not valid YAML"):
        read_params_file(bad)
    with pytest.raises(ParamError, match="not found"):
        read_params_file(tmp_path / "missing.yaml")


def test_stage_exits_nonzero_with_one_line_and_writes_nothing(tmp_path: Path, archive):
    path, md5 = archive
    params = committed_params()
    params["download"].update({"url": str(path), "md5": md5, "retries": -1})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "data" / "raw" / "cifar-10-python.tar.gz"
    result = subprocess.run(
        [sys.executable, "-m", "stages.download", str(out)],
        cwd=tmp_path,
        env=stage_env(import_root=True),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "error: download.retries must be a non-negative integer, got -1"
    assert not out.exists()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:tok@mirror.org/c.tar.gz", "https://***@mirror.org/c.tar.gz"),
        ("//user:tok@mirror.org/c.tar.gz", "//***@mirror.org/c.tar.gz"),  # no scheme: none is made up
        ("https://u:a/b?c@d@mirror.org/x", "https://***@mirror.org/x"),  # to the last @: a token may hold / ? @
        ("https://mirror.org/c.tar.gz", "https://mirror.org/c.tar.gz"),
        ("/data/c@home.tar.gz", "/data/c@home.tar.gz"),  # a path: no // before the @
    ],
)
def test_credentials_in_a_url_are_never_shown(url: str, shown: str):
    assert redact_credentials(url) == shown
