"""CIFAR-100: the dataset params, its archive layout (fine or coarse labels, names from the meta member), and
one run of normalize, train and evaluate on a synthetic CIFAR-100 archive, then cifar10-predict on its model."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from cifar10.archive import layout_of, load_test, load_train
from cifar10.dataset import CLASS_NAMES
from cifar10.errors import DataError, ParamError
from cifar10.normalized import read_class_names, read_normalized, write_normalized
from cifar10.params import (
    CIFAR100_MD5,
    CIFAR100_URL,
    OFFICIAL_MD5,
    OFFICIAL_URL,
    DatasetParams,
    check_archive_matches_dataset,
    parse_section,
)
from cifar10.preprocessing import split_and_normalize
from tests.conftest import (
    CIFAR100_TEST,
    CIFAR100_TRAIN,
    COARSE_NAMES,
    FINE_NAMES,
    ROOT,
    TINY_TRAIN,
    download_params,
    normalize_params,
    run,
)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"name": "cifar1000", "labels": "fine"},
            "dataset.name must be one of ('cifar10', 'cifar100'), got 'cifar1000'",
        ),
        ({"name": "cifar100", "labels": "both"}, "dataset.labels must be one of ('fine', 'coarse'), got 'both'"),
        (
            {"name": "cifar10", "labels": "coarse"},
            "dataset.labels coarse needs dataset.name cifar100 (CIFAR-10 has only its 10 fine classes), got 'coarse'",
        ),
        ({"name": 100, "labels": "fine"}, "dataset.name must be a string, got 100"),
        ({"name": "cifar100"}, "dataset.labels is missing from params.yaml"),
        ({"name": "cifar100", "labels": "fine", "url": "x"}, "dataset.url is not a known key (known: name, labels)"),
    ],
)
def test_dataset_params_are_strict(raw, message):
    with pytest.raises(ParamError) as info:
        parse_section(DatasetParams, "dataset", raw)
    assert str(info.value) == message


def test_the_official_archive_of_the_other_data_set_is_refused_naming_the_right_one():
    cifar100 = DatasetParams("cifar100", "fine")
    with pytest.raises(ParamError) as info:
        check_archive_matches_dataset(download_params(), cifar100)  # the committed CIFAR-10 url and md5
    assert str(info.value) == (
        "download.md5 is the official cifar10 archive's, but dataset.name is cifar100; set "
        f"-S download.url={CIFAR100_URL} -S download.md5={CIFAR100_MD5}"
    )
    with pytest.raises(ParamError, match=f"^download.url is the official cifar100 archive's, .*{OFFICIAL_MD5}$"):
        check_archive_matches_dataset(download_params(url=CIFAR100_URL), DatasetParams("cifar10", "fine"))
    with pytest.raises(ParamError, match="^download.md5 is the official cifar100 archive's"):
        check_archive_matches_dataset(download_params(md5=CIFAR100_MD5.upper()), DatasetParams("cifar10", "fine"))
    # The documented -S set, the default, and a mirror with its own md5 all pass.
    check_archive_matches_dataset(download_params(url=CIFAR100_URL, md5=CIFAR100_MD5), cifar100)
    check_archive_matches_dataset(download_params(url=OFFICIAL_URL, md5=OFFICIAL_MD5), DatasetParams("cifar10", "fine"))
    check_archive_matches_dataset(download_params(url="/mnt/c100.tar.gz", md5="0" * 32), cifar100)


def test_the_download_stage_refuses_the_mismatch_in_one_line_before_downloading(tmp_path: Path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["dataset"] = {"name": "cifar100", "labels": "coarse"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "raw" / "archive.tar.gz"
    result = run(
        [sys.executable, "-m", "stages.download", str(out), "--params", str(tmp_path / "params.yaml")],
        ROOT,
        check=False,
    )
    assert result.returncode == 1 and not out.parent.exists()
    assert result.stderr.splitlines() == [
        "error: download.md5 is the official cifar10 archive's, but dataset.name is cifar100; set "
        f"-S download.url={CIFAR100_URL} -S download.md5={CIFAR100_MD5}"
    ]


@pytest.mark.parametrize(("labels", "names"), [("fine", FINE_NAMES), ("coarse", COARSE_NAMES)])
def test_cifar100_fine_and_coarse_labels_and_the_meta_files_names(archive100, tmp_path: Path, labels, names):
    layout = layout_of("cifar100", labels)
    train, test = load_train(archive100[0], layout), load_test(archive100[0], layout)
    assert train.class_names == test.class_names == tuple(names)
    assert train.images.shape == (CIFAR100_TRAIN, 32, 32, 3) and test.images.shape == (CIFAR100_TEST, 32, 32, 3)
    assert np.bincount(train.labels, minlength=len(names)).tolist() == [CIFAR100_TRAIN // len(names)] * len(names)
    fine = load_train(archive100[0], layout_of("cifar100", "fine")).labels
    assert np.array_equal(train.labels, fine if labels == "fine" else fine // 5)  # the same images, in order
    # normalize's core and its format: the names travel in stats.json and are read back checked.
    arrays, stats = split_and_normalize(train.images, train.labels, normalize_params(val_size=40), seed=1)
    write_normalized(tmp_path / "n", arrays, stats, "global", train.class_names)
    back, _ = read_normalized(tmp_path / "n")
    assert read_class_names(tmp_path / "n") == tuple(names)
    assert int(back["y_train"].max()) == len(names) - 1


def test_class_names_in_stats_json_are_checked(tmp_path: Path, archive100):
    train = load_train(archive100[0], layout_of("cifar100", "coarse"))
    arrays, stats = split_and_normalize(train.images, train.labels, normalize_params(val_size=0), seed=1)
    write_normalized(tmp_path, arrays, stats, "global", train.class_names[:10])  # labels reach 19
    with pytest.raises(DataError, match=r"y_train.npy has labels outside 0..9$"):
        read_normalized(tmp_path)
    raw = json.loads((tmp_path / "stats.json").read_text())
    for names, message in (
        (None, "has no class_names (written before CIFAR-100 support); run the normalize stage again"),
        (["a", 3], "class_names class names must be strings, got int 3"),
        (["a"] * 20, "class_names class names must be distinct, got 'a' twice"),
    ):
        edited = {k: v for k, v in raw.items() if k != "class_names"} | ({"class_names": names} if names else {})
        (tmp_path / "stats.json").write_text(json.dumps(edited))
        with pytest.raises(DataError) as info:
            read_class_names(tmp_path)
        assert str(info.value).endswith(message)


@pytest.fixture(scope="module")
def cifar100_run(archive100, tmp_path_factory) -> Path:
    """normalize, train (1 epoch, tiny widths) and evaluate on the synthetic CIFAR-100 archive, fine labels, each
    stage run as dvc.yaml runs it."""
    folder = tmp_path_factory.mktemp("cifar100_run")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["dataset"] = {"name": "cifar100", "labels": "fine"}
    params["normalize"]["val_size"] = 100
    params["train"].update(TINY_TRAIN)
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    for stage, *paths in (
        ("normalize", archive100[0], "data"),
        ("train", "data", "models", "dvclive", "train.json", "checkpoints"),
        ("evaluate", "models/model.keras", archive100[0], "evaluate.json", "predictions.csv", "per_class.csv", "plots"),
    ):
        command = [sys.executable, "-m", f"stages.{stage}", *map(str, paths), "--params", "params.yaml"]
        run(command, folder, import_root=True)
    return folder


@pytest.mark.integration
def test_train_and_evaluate_on_cifar100_give_100_outputs_and_the_archives_names(cifar100_run: Path):
    from cifar10.classifier import class_names_of, load_classifier

    model = load_classifier(cifar100_run / "models/model.keras")
    assert model.output_shape == (None, 100) and class_names_of(model) == tuple(FINE_NAMES)
    assert json.loads((cifar100_run / "models/meta.json").read_text())["class_names"] == FINE_NAMES
    with (cifar100_run / "per_class.csv").open() as f:
        assert [r["class"] for r in csv.DictReader(f)] == FINE_NAMES
    with (cifar100_run / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == CIFAR100_TEST and {r["actual"] for r in rows} == set(FINE_NAMES)
    from PIL import Image

    with Image.open(cifar100_run / "plots/confusion.png") as confusion:
        assert confusion.width > 1200  # grown for 100 classes (10 classes: about 700 px)
    with Image.open(cifar100_run / "plots/mistakes.png") as mistakes:
        assert mistakes.height < 21 * 1.3 * 100 + 200  # at most 20 rows of mistakes


@pytest.mark.integration
def test_predict_reads_the_names_from_the_model_and_the_matching_test_labels(cifar100_run, archive100, capsys):
    from cifar10.predict import main as predict_main

    model = str(cifar100_run / "models/model.keras")
    args = ["--model", model, "--archive", str(archive100[0]), "--test-samples", "4", "--json"]
    assert predict_main([*args, "--top", "100"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 4 and all(len(r["top"]) == 100 and r["true"] in FINE_NAMES for r in records)
    assert {t["class"] for t in records[0]["top"]} == set(FINE_NAMES)
    assert predict_main([*args, "--top", "101"]) == 1
    assert capsys.readouterr().err.strip() == "error: --top 101 is more than the model's 100 classes"


@pytest.mark.integration
def test_a_coarse_model_gets_coarse_truths_and_an_old_cifar10_model_keeps_its_names(
    archive100, archive, tmp_path, capsys
):
    from cifar10.framework import keras
    from cifar10.model import build_inference_model, build_seed_cnn
    from cifar10.normalized import Stats
    from cifar10.predict import main as predict_main
    from tests.conftest import train_params

    params = train_params(widths=(4,), dropout=(0.1,), block_depth=1)
    coarse = build_inference_model(build_seed_cnn(params, 0, num_classes=20), Stats((120.0,), (64.0,), 0), COARSE_NAMES)
    coarse.save(tmp_path / "coarse.keras")
    on_cifar100 = ["--model", str(tmp_path / "coarse.keras"), "--archive", str(archive100[0]), "--test-samples", "3"]
    assert predict_main([*on_cifar100, "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    fine = load_test(archive100[0], layout_of("cifar100", "fine")).labels[:3]
    assert [r["true"] for r in records] == [COARSE_NAMES[c // 5] for c in fine]
    # The same model on a CIFAR-10 archive: no labels of its classes there, said in one line.
    on_cifar10 = ["--model", str(tmp_path / "coarse.keras"), "--archive", str(archive[0]), "--test-samples", "3"]
    assert predict_main(on_cifar10) == 1
    assert capsys.readouterr().err.strip().startswith(f"error: {archive[0]}: its test labels name 10 classes, none")
    # A model saved before ClassNames existed: 10 outputs and no names inside are CIFAR-10's.
    core = build_seed_cnn(params, 0)
    keras.Model(core.inputs, core.outputs).save(tmp_path / "old.keras")
    old = ["--model", str(tmp_path / "old.keras"), "--archive", str(archive[0]), "--test-samples", "2", "--json"]
    assert predict_main(old) == 0
    assert all(json.loads(line)["true"] in CLASS_NAMES for line in capsys.readouterr().out.splitlines())
